"""switch_mtf's seqio tasks (registered by functions that take the
vocabulary and the TFDS data dir; nothing is registered at import).

- ``text_to_text``: C4 span corruption, GLUE, SuperGLUE, SQuAD from TFDS.
- ``vocabularies``: T5's SentencePiece vocabulary at a path, or one trained
  offline from the embedded corpus.
"""
