"""Importing this module registers every task of switch_mtf, as seqio's
task modules do (``--module_import=switch_mtf.tasks.all`` for
``t5_mesh_transformer``, or your own code); importing it again is harmless
(a task of the same name is replaced).

- ``switch_mtf_embedded_span_corruption``, ``switch_mtf_embedded_closed_book_qa``:
  the embedded corpus, byte vocabulary (no file, no network).
- ``c4_span_corruption``, ``glue_*``, ``super_glue_*`` (and their
  ``_proportional`` mixtures), ``squad_v1_1``: TFDS data with T5's
  SentencePiece vocabulary from ``$SWITCH_MTF_VOCABULARY`` (default T5's
  ``gs://t5-data/vocabs/cc_all.32000/sentencepiece.model``), prepared in
  ``$TFDS_DATA_DIR`` (TFDS's own variable; default ``~/tensorflow_datasets``).
  Nothing is read at import: an unreadable vocabulary is one line at the
  task's first use.

The local-file tasks (``tasks/local.py``) need files bound in gin, which
is parsed after module imports: ``switch-mtf`` registers them itself.
"""
import os

from switch_mtf.tasks import embedded
from switch_mtf.tasks import text_to_text
from switch_mtf.tasks import vocabularies

VOCABULARY = os.environ.get("SWITCH_MTF_VOCABULARY",
                            vocabularies.T5_VOCABULARY)

embedded.register()
embedded.register_closed_book_qa()
text_to_text.register_all(vocabularies.lazy_sentencepiece(VOCABULARY),
                          tfds_data_dir=os.environ.get("TFDS_DATA_DIR"))
