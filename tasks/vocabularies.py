"""Vocabularies for switch_mtf's tasks.

- Real runs: T5's SentencePiece vocabulary (32k pieces + 100 sentinels),
  read from a configurable path; the public bucket path is the default.
- Offline: a SentencePiece vocabulary trained from the embedded corpus (with
  the same 100 sentinels), built once and cached on disk.
"""
import io
import os
import tempfile

import seqio
import tensorflow.compat.v1 as tf

from switch_mtf.tasks import corpus
from switch_mtf.errors import ConfigError

T5_VOCABULARY = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
EXTRA_IDS = 100


def sentencepiece(path=T5_VOCABULARY, extra_ids=EXTRA_IDS):
  """A SentencePiece vocabulary at ``path``; one clear error if unreadable.

  The model file is read here (seqio would read it lazily, at the first
  encode, deep inside a data pipeline).
  """
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      model = f.read()
  except (tf.errors.OpError, OSError) as e:
    raise ConfigError(
        "cannot read the SentencePiece vocabulary %s (%s): copy T5's (gsutil "
        "cp %s .) and pass --vocabulary=/path/to/sentencepiece.model, or use "
        "--vocabulary=embedded offline" % (
            path, str(e).splitlines()[0][:120], T5_VOCABULARY)) from None
  if not model:
    raise ConfigError("the SentencePiece vocabulary %s is empty" % path)
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  try:
    spm.SentencePieceProcessor(model_proto=model)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(
        "%s is not a SentencePiece model (%s): pass the .model file T5's "
        "vocabulary comes in (%s), or --vocabulary=embedded offline" % (
            path, str(e).splitlines()[0][:80] if str(e) else
            type(e).__name__, T5_VOCABULARY)) from None
  return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


class _CheckedSentencePiece(seqio.SentencePieceVocabulary):
  """seqio's SentencePiece vocabulary, read at its first use (as seqio
  does), but an unreadable file is one ConfigError (``sentencepiece``)."""

  def _model_context(self):
    if not self._model:
      sentencepiece(self._sentencepiece_model_file, self._extra_ids)
    return super()._model_context()


def lazy_sentencepiece(path=T5_VOCABULARY, extra_ids=EXTRA_IDS):
  """A SentencePiece vocabulary at ``path`` read at its first use (a task
  module can register with it without touching the file or the network)."""
  return _CheckedSentencePiece(path, extra_ids=extra_ids)


def _default_cache_dir():
  return os.path.join(os.environ.get("XDG_CACHE_HOME",
                                     os.path.expanduser("~/.cache")),
                      "switch_mtf")


def trained_sentencepiece(texts, name, vocab_size=2000, cache_dir=None,
                          extra_ids=EXTRA_IDS):
  """A unigram SentencePiece model trained on ``texts`` (an iterable of
  strings; pad 0, eos 1, unk 2, no bos, like T5's) plus T5's sentinels,
  cached as ``<cache_dir>/<name>.model``: ``name`` must identify the texts
  (a later call with the same name reuses the model)."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  cache_dir = cache_dir or _default_cache_dir()
  path = os.path.join(cache_dir, "%s.model" % name)
  if not os.path.exists(path):
    os.makedirs(cache_dir, exist_ok=True)
    model = io.BytesIO()
    try:
      spm.SentencePieceTrainer.train(
          sentence_iterator=iter(texts), model_writer=model,
          vocab_size=vocab_size, model_type="unigram", pad_id=0, eos_id=1,
          unk_id=2, bos_id=-1, character_coverage=1.0, num_threads=1,
          minloglevel=2, hard_vocab_limit=False)
    except RuntimeError as e:
      raise ConfigError("cannot train a SentencePiece vocabulary on this "
                        "text (%s): give more text or use --vocabulary=bytes"
                        % str(e).splitlines()[0][:120]) from None
    # Written whole, then renamed: a killed build never leaves half a model.
    handle, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
    with os.fdopen(handle, "wb") as f:
      f.write(model.getvalue())
    os.replace(tmp, path)
  return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


def embedded_sentencepiece(vocab_size=2000, seed=0, cache_dir=None,
                           extra_ids=EXTRA_IDS):
  """A SentencePiece model trained on the embedded corpus's train articles,
  cached as ``embedded_spm_v2_<seed>_<vocab_size>.model``."""
  return trained_sentencepiece(
      corpus.generate(seed=seed)["train"],
      # v2: the corpus of issue 14 (three articles per entity).
      "embedded_spm_v2_%d_%d" % (seed, vocab_size), vocab_size=vocab_size,
      cache_dir=cache_dir, extra_ids=extra_ids)


def byte_vocabulary():
  """UTF-8 bytes plus T5's 100 sentinels: no file, no network."""
  return seqio.ByteVocabulary(extra_ids=EXTRA_IDS)


def from_flag(value, cache_dir=None, training_texts=None):
  """``--vocabulary``: "embedded", "bytes", "trained" (a SentencePiece
  model trained on ``training_texts()`` -> (name, texts): the local
  corpus's training files), or a SentencePiece model path."""
  if value in (None, "", "embedded"):
    return embedded_sentencepiece(cache_dir=cache_dir)
  if value == "bytes":
    return byte_vocabulary()
  if value == "trained":
    if training_texts is None:
      raise ConfigError("--vocabulary=trained trains on the local task's "
                        "files: use it with --task=local_span_corruption "
                        "or local_text_to_text")
    name, texts = training_texts()
    return trained_sentencepiece(texts, name, cache_dir=cache_dir)
  return sentencepiece(value)
