"""pipelines.build: a seqio pipeline built without autograph gives the
batches autograph's build gives (the embedded training data, T5's GLUE and
SQuAD preprocessors under mock data), and a map function that needs
autograph (Python control flow on a tensor) is built with it."""
import numpy as np
import pytest
import seqio
from t5.models import mesh_transformer
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow.python.autograph.core import ag_ctx  # pylint: disable=g-direct-tensorflow-import

from switch_mtf.tasks import embedded
from switch_mtf.tasks import text_to_text
from switch_mtf.tasks import vocabularies
from switch_mtf.train import pipelines
from switch_mtf.train import training


def _arrays(dataset, count):
  # tfds.as_numpy reads a dataset eagerly or, when an earlier test of the
  # process turned eager execution off, through a session.
  return list(tfds.as_numpy(dataset.take(count)))


def _assert_same(ours, theirs):
  assert len(ours) == len(theirs) > 0
  for a, b in zip(ours, theirs):
    assert sorted(a) == sorted(b)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_plain_map_function_is_traced_without_autograph():
  statuses = []

  def double(x):
    statuses.append(ag_ctx.control_status_ctx().status)
    return x * 2

  dataset = pipelines.build(
      "plain_probe", lambda: tf.data.Dataset.range(4).map(double))
  assert _arrays(dataset, 10) == [0, 2, 4, 6]
  assert statuses == [ag_ctx.Status.DISABLED]
  assert "plain_probe" not in pipelines._NEED_AUTOGRAPH


def test_tensor_control_flow_is_built_with_autograph():
  def scale(x):
    if x > 1:          # a Python `if` on a tensor: autograph makes it a cond
      return x * 10
    return x

  dataset = pipelines.build(
      "needs_autograph_probe", lambda: tf.data.Dataset.range(4).map(scale))
  assert _arrays(dataset, 10) == [0, 1, 20, 30]
  assert "needs_autograph_probe" in pipelines._NEED_AUTOGRAPH


def test_other_errors_are_raised_at_once():
  calls = []

  def broken():
    calls.append(1)
    raise ValueError("no such file")

  with pytest.raises(ValueError, match="no such file"):
    pipelines.build("broken_probe", broken)
  assert len(calls) == 1 and "broken_probe" not in pipelines._NEED_AUTOGRAPH


def test_seqio_preprocessor_seeds_survive_the_retry():
  before = seqio.utils._NEXT_MAP_SEED

  def build():
    # As Task.get_dataset does: seeds for its preprocessors.
    with seqio.utils.map_seed_manager(100):
      return tf.data.Dataset.range(3).map(
          lambda x: x * 10 if x > 1 else x)   # needs autograph

  dataset = pipelines.build("seeded_probe", build)
  assert _arrays(dataset, 10) == [0, 1, 20]
  assert "seeded_probe" in pipelines._NEED_AUTOGRAPH
  assert seqio.utils._NEXT_MAP_SEED == before


def _embedded_batches(lengths, count):
  name = embedded.SPAN_CORRUPTION
  ours = _arrays(training.train_dataset(name, lengths, 4, seed=3), count)
  assert name not in pipelines._NEED_AUTOGRAPH
  theirs = mesh_transformer.mesh_train_dataset_fn(
      mixture_or_task_name=name, sequence_length=lengths,
      dataset_split="train", seed=3)
  theirs = _arrays(theirs.repeat().batch(4, drop_remainder=True), count)
  return ours, theirs


def test_embedded_training_batches_are_those_autograph_builds():
  embedded.register()
  _assert_same(*_embedded_batches({"inputs": 128, "targets": 32}, 12))


def test_the_same_in_a_graph_as_the_cli_builds_them():
  embedded.register()
  with tf.Graph().as_default():
    ours, theirs = _embedded_batches({"inputs": 64, "targets": 16}, 6)
  _assert_same(ours, theirs)


@pytest.mark.parametrize("name", ["glue_cola", "glue_stsb", "glue_mnli",
                                  "super_glue_record", "super_glue_multirc",
                                  "super_glue_copa", "squad_v1_1",
                                  "c4_span_corruption"])
def test_t5_preprocessors_give_what_autograph_gives(name):
  text_to_text.register_all(vocabularies.byte_vocabulary())
  task = seqio.get_mixture_or_task(name)
  lengths = {"inputs": 64, "targets": 16}

  def build():
    return task.get_dataset(lengths, split="train", shuffle=False,
                            try_in_mem_cache=False, seed=7)

  with tfds.testing.mock_data(num_examples=4):
    ours = _arrays(pipelines.build(name, build), 4)
    assert name not in pipelines._NEED_AUTOGRAPH   # really built without
    theirs = _arrays(build(), 4)
  _assert_same(ours, theirs)
