"""The embedded offline corpus (``corpus.py``) as a seqio pre-training task.

T5's span corruption (noise density 0.15, mean span 3, one sentinel per
span) over the generated encyclopedia, with seqio's byte vocabulary and 100
sentinels, so it needs no network and no vocabulary file.  (A SentencePiece
vocabulary trained on the corpus is the tasks issue's.)
"""
import functools

import seqio
from t5.data import preprocessors as t5_preprocessors
import tensorflow.compat.v1 as tf

from switch_mtf import corpus

SPAN_CORRUPTION = "switch_mtf_embedded_span_corruption"


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
