"""The embedded offline corpus (``corpus.py``) as a seqio pre-training task.

T5's span corruption (noise density 0.15, mean span 3, one sentinel per
span) over the generated encyclopedia, with seqio's byte vocabulary and 100
sentinels, so it needs no network and no vocabulary file.  (A SentencePiece
vocabulary trained on the corpus is the tasks issue's.)
"""
import functools

import seqio
from t5.data import postprocessors as t5_postprocessors
from t5.data import preprocessors as t5_preprocessors
from t5.evaluation import metrics as t5_metrics
import tensorflow.compat.v1 as tf

from switch_mtf import corpus

SPAN_CORRUPTION = "switch_mtf_embedded_span_corruption"
CLOSED_BOOK_QA = "switch_mtf_embedded_closed_book_qa"


def register(name=SPAN_CORRUPTION, vocabulary=None, seed=0):
  """Registers the task (once) and returns it."""
  if name in seqio.TaskRegistry.names():
    return seqio.get_mixture_or_task(name)
  vocabulary = vocabulary or seqio.ByteVocabulary(extra_ids=100)
  documents = corpus.generate(seed=seed)

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"text": documents[split]})

  return seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(dataset_fn,
                                      splits=("train", "validation")),
      preprocessors=[
          functools.partial(t5_preprocessors.rekey,
                            key_map={"inputs": None, "targets": "text"}),
          seqio.preprocessors.tokenize,
          seqio.CacheDatasetPlaceholder(),
          t5_preprocessors.span_corruption,
          seqio.preprocessors.append_eos_after_trim,
      ],
      output_features={
          "inputs": seqio.Feature(vocabulary, add_eos=True, required=False),
          "targets": seqio.Feature(vocabulary, add_eos=True),
      },
      metric_fns=[])


def register_closed_book_qa(name=CLOSED_BOOK_QA, vocabulary=None, seed=0):
  """A fine-tuning task on the same corpus: questions whose answers are only
  in the pre-training articles ("question: Where was X born?" -> town);
  metrics: SQuAD's exact match and F1 (t5's ``squad``, with its answer
  normalization) of the decoded answer."""
  if name in seqio.TaskRegistry.names():
    return seqio.get_mixture_or_task(name)
  vocabulary = vocabulary or seqio.ByteVocabulary(extra_ids=100)
  pairs = corpus.closed_book_qa(seed=seed)

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    questions, answers = zip(*pairs[split])
    return tf.data.Dataset.from_tensor_slices(
        {"inputs": ["question: " + q for q in questions],
         "targets": list(answers), "answers": [[a] for a in answers]})

  return seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(dataset_fn,
                                      splits=("train", "validation")),
      preprocessors=[seqio.preprocessors.tokenize,
                     seqio.CacheDatasetPlaceholder(),
                     seqio.preprocessors.append_eos_after_trim],
      output_features={
          "inputs": seqio.Feature(vocabulary, add_eos=True),
          "targets": seqio.Feature(vocabulary, add_eos=True),
      },
      postprocess_fn=t5_postprocessors.qa, metric_fns=[t5_metrics.squad])
