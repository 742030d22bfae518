"""Sparse upcycling (switch_mtf/train/upcycling.py, `switch-mtf upcycle`): experts
start as copies of the dense feed-forward layer, the router is new, the rest
is copied; mismatched models are one clear error."""
import os

import numpy as np
import pytest
import seqio
import tensorflow.compat.v1 as tf

import helpers
from switch_mtf.moe import accounting
from switch_mtf.moe import variable_names as var_names
from switch_mtf import config
from switch_mtf.train import upcycling
from switch_mtf.errors import ConfigError

VOCAB = seqio.ByteVocabulary(extra_ids=100).vocab_size
LENGTHS = {"inputs": 64, "targets": 16}
SMALL = "--gin_param=utils.run.sequence_length = {'inputs': 64, 'targets': 16}"


def _variables(preset, params=()):
  config.parse([preset], list(params))
  report = accounting.count("bitransformer", VOCAB, LENGTHS, 8)
  return [(v.name, [d.size for d in v.dims]) for v in report.variables]


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
  """A dense small-preset checkpoint with random weights (step 7)."""
  rng = np.random.RandomState(0)
  arrays = {name: rng.normal(size=shape).astype(np.float32)
            for name, shape in _variables("models/small/dense")}
  model_dir = str(tmp_path_factory.mktemp("dense"))
  upcycling.write_checkpoint(arrays, os.path.join(model_dir, "model.ckpt-7"))
  return model_dir, arrays


def test_upcycled_experts_equal_the_dense_ffn(dense, tmp_path):
  model_dir, arrays = dense
  switch = _variables("models/small/switch_8")
  path = upcycling.upcycle(model_dir, str(tmp_path / "up" / "model.ckpt-0"),
                           VOCAB, LENGTHS, 8)
  reader = tf.train.load_checkpoint(path)
  saved = reader.get_variable_to_shape_map()
  experts = 0
  for name, shape in switch:
    if "/router/" in name:
      assert name not in saved       # a new router
      continue
    value = reader.get_tensor(name)
    assert list(value.shape) == shape
    source = var_names.dense_counterpart(name)
    if source:
      experts += 1
      for expert in value:           # every expert is the dense FFN
        np.testing.assert_array_equal(expert, arrays[source])
    else:
      np.testing.assert_array_equal(value, arrays[name])
  assert experts == 2 * 3             # 2 Switch layers x (wi_0, wi_1, wo)
  assert len(saved) == len(switch) - 2


def test_a_model_that_differs_outside_the_experts_is_one_error(dense,
                                                               tmp_path):
  model_dir, _ = dense
  config.parse(["models/small/switch_8"], ["d_ff = 256"])
  with pytest.raises(ConfigError, match=r"cannot upcycle.* \[128, 256\] is "
                     r"\[128, 320\] in the dense checkpoint"):
    upcycling.upcycle(model_dir, str(tmp_path / "x" / "model.ckpt-0"), VOCAB,
                      LENGTHS, 8)


def test_upcycle_mode_trains_from_the_upcycled_weights(dense, tmp_path):
  dense_dir, arrays = dense
  model_dir = str(tmp_path / "upcycled_model")
  result = helpers.cli(
      "upcycle", "--gin_file=models/small/switch_8", SMALL,
      "--gin_file=layouts/cpu_ep_2", "--dense_model_dir", dense_dir,
      "--model_dir", model_dir, "--steps", "2",
      "--save_checkpoints_steps", "1", "--log_every", "1")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "upcycled %s" % dense_dir in result.stdout
  assert "step 2/2" in result.stdout
  # The run's step-0 checkpoint holds the upcycled weights.
  start = tf.train.load_checkpoint(os.path.join(model_dir, "model.ckpt-0"))
  np.testing.assert_array_equal(start.get_tensor("shared/embedding"),
                                arrays["shared/embedding"])
  name = "encoder/block_001/layer_001/SwitchFFN/wo/kernel"
  np.testing.assert_array_equal(
      start.get_tensor(name)[5], arrays[var_names.dense_counterpart(name)])
  assert os.path.exists(os.path.join(model_dir, "model.ckpt-2.index"))
