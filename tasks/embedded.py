"""The embedded offline corpus (``tasks/corpus.py``) as seqio tasks.

- ``switch_mtf_embedded_span_corruption``: T5's span corruption (noise
  density 0.15, mean span 3, one sentinel per span) over the generated
  encyclopedia.
- ``switch_mtf_embedded_closed_book_qa``: questions whose answers are only in
  the pre-training articles, SQuAD's exact match and F1.

By default with seqio's byte vocabulary and 100 sentinels, so they need no
network and no vocabulary file (``vocabularies.embedded_sentencepiece`` is
the SentencePiece alternative).  Registering again replaces the task, e.g.
with another vocabulary.
"""
import seqio
from t5.data import postprocessors as t5_postprocessors
from t5.evaluation import metrics as t5_metrics
import tensorflow.compat.v1 as tf

from switch_mtf.tasks import corpus
from switch_mtf.tasks import text_to_text
from switch_mtf.tasks import vocabularies

SPAN_CORRUPTION = "switch_mtf_embedded_span_corruption"
CLOSED_BOOK_QA = "switch_mtf_embedded_closed_book_qa"


def _source(make_features):
  """A train/validation FunctionDataSource of in-memory examples."""
  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices(make_features(split))
  return seqio.FunctionDataSource(dataset_fn, splits=("train", "validation"))


def register(name=SPAN_CORRUPTION, vocabulary=None, seed=0, **corpus_options):
  """Registers the pre-training task and returns it (``corpus_options``:
  ``corpus.generate``'s size and hold-out arguments)."""
  documents = corpus.generate(seed=seed, **corpus_options)
  return text_to_text.add_task(
      name, source=_source(lambda split: {"text": documents[split]}),
      preprocessors=text_to_text.span_corruption_preprocessors(),
      output_features=text_to_text.features(
          vocabulary or vocabularies.byte_vocabulary()),
      metric_fns=[])


def register_closed_book_qa(name=CLOSED_BOOK_QA, vocabulary=None, seed=0,
                            **corpus_options):
  """Registers the fine-tuning task ("question: Where was X born?" -> town;
  metrics: t5's ``squad``, with its answer normalization) and returns it."""
  pairs = corpus.closed_book_qa(seed=seed, **corpus_options)

  def features(split):
    questions, answers = zip(*pairs[split])
    return {"inputs": ["question: " + q for q in questions],
            "targets": list(answers), "answers": [[a] for a in answers]}

  return text_to_text.add_task(
      name, source=_source(features),
      preprocessors=text_to_text.text_to_text_preprocessors(),
      output_features=text_to_text.features(
          vocabulary or vocabularies.byte_vocabulary()),
      postprocess_fn=t5_postprocessors.qa, metric_fns=[t5_metrics.squad])
