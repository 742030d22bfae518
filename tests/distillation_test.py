"""Distillation (switch_mtf/train/distillation.py, `switch-mtf distill`): the
student starts from exactly the teacher's non-expert weights, the loss is the
hard/soft mix, and the mode runs end to end on a 2-device CPU mesh."""
import os

import mesh_tensorflow as mtf
from mesh_tensorflow.transformer import transformer
import numpy as np
import pytest
import seqio
import tensorflow.compat.v1 as tf

import helpers
from switch_mtf.moe import accounting
from switch_mtf import config
from switch_mtf.train import distillation
from switch_mtf.train import mesh_program
from switch_mtf.moe import models
from switch_mtf.train import upcycling
from switch_mtf.errors import ConfigError

VOCAB = seqio.ByteVocabulary(extra_ids=100).vocab_size
LENGTHS = {"inputs": 64, "targets": 16}
SMALL = "utils.run.sequence_length = {'inputs': 64, 'targets': 16}"
SWITCH_FFNS = {"%s/block_001/layer_%03d/DenseReluDense/%s/kernel"
               % (stack, layer, kernel)
               for stack, layer in (("encoder", 1), ("decoder", 2))
               for kernel in ("wi_0", "wi_1", "wo")}


def _variables(preset, params=()):
  config.parse([preset], [SMALL] + list(params))
  report = accounting.count("bitransformer", VOCAB, LENGTHS, 8)
  return {v.name: [d.size for d in v.dims] for v in report.variables}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  """A Switch teacher directory: random switch_8 weights at step 3 and an
  operative config naming the preset."""
  rng = np.random.RandomState(0)
  arrays = {name: rng.normal(scale=0.5, size=shape).astype(np.float32)
            for name, shape in _variables("models/small/switch_8").items()}
  model_dir = str(tmp_path_factory.mktemp("teacher"))
  upcycling.write_checkpoint(arrays, os.path.join(model_dir, "model.ckpt-3"))
  with open(os.path.join(model_dir, "operative_config.gin"), "w") as f:
    f.write("include 'models/small/switch_8.gin'\n%s\n" % SMALL)
  return model_dir, arrays


def test_student_gets_exactly_the_non_expert_variables(teacher):
  model_dir, arrays = teacher
  student = _variables("models/small/dense")
  teacher_vars = _variables("models/small/switch_8")
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  values = distillation.student_initial_values(reader, student,
                                               teacher_vars)
  # Everything but the dense FFNs where the teacher has Switch layers.
  assert set(student) - set(values) == SWITCH_FFNS
  assert not any("SwitchFFN" in name for name in values)
  assert "encoder/block_000/layer_001/DenseReluDense/wo/kernel" in values
  assert "shared/embedding" in values
  for name, value in values.items():
    np.testing.assert_array_equal(value, arrays[name])


def test_a_student_that_differs_outside_the_experts_is_one_error(teacher):
  model_dir, _ = teacher
  student = _variables("models/small/dense", ["d_ff = 256"])
  teacher_vars = _variables("models/small/switch_8")
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  with pytest.raises(ConfigError, match=r"student.s decoder/block_000/"
                     r"layer_002/DenseReluDense/wi_0/kernel is \[128, 256\] "
                     r"but the teacher's is \[128, 320\]"):
    distillation.student_initial_values(reader, student, teacher_vars)


def _softmax(x, t):
  e = np.exp((x - x.max(-1, keepdims=True)) / t)
  return e / e.sum(-1, keepdims=True)


def test_soft_loss_and_mix_equal_a_hand_computation():
  rng = np.random.RandomState(1)
  student = rng.normal(size=(2, 3, 5)).astype(np.float32)
  teacher = rng.normal(size=(2, 3, 5)).astype(np.float32)
  targets = np.array([[3, 1, 0], [2, 0, 0]], np.int32)   # 0: padding
  t, z, denominator, hard = 2.0, 1e-3, 6.0, 1.7
  dims = [mtf.Dimension("batch", 2), mtf.Dimension("length", 3),
          mtf.Dimension("vocab", 5)]
  with mesh_program.MeshProgram() as p:
    s = p.import_array(student, dims)
    tl = p.import_array(teacher, dims)
    y = p.import_array(targets, dims[:2])
    soft = distillation.soft_cross_entropy(s, tl, y, dims[2], t, z,
                                           denominator)
    loss = distillation.mix(hard, soft, 0.25, t)
    out = p.run({"soft": soft, "loss": loss})
  logits = student / t
  log_z = np.log(np.exp(logits).sum(-1))
  per_token = (-(_softmax(teacher, t) * (logits - log_z[..., None])).sum(-1)
               + z * log_z ** 2)
  expected = (per_token * (targets > 0)).sum() / denominator
  np.testing.assert_allclose(out["soft"], expected, rtol=1e-5)
  np.testing.assert_allclose(out["loss"], 0.75 * hard + 0.25 * t * t
                             * expected, rtol=1e-5)


def _model_losses(soft_weight):
  """(distillation loss, plain student loss, hand mix) of one batch through
  the small dense student and a small Switch teacher, same weights."""
  config.parse(["models/small/switch_8"], [SMALL])
  distillation.set_teacher(models.build_model("bitransformer", VOCAB))
  config.parse(["models/small/dense"], [SMALL, (
      "transformer.make_bitransformer.bitransformer_cls = "
      "@distillation.DistillingBitransformer"),
      "DistillingBitransformer.soft_weight = %s" % soft_weight])
  student = models.build_model("bitransformer", VOCAB)
  distillation.set_teacher(None)
  assert isinstance(student, distillation.DistillingBitransformer)
  rng = np.random.RandomState(2)
  batch = mtf.Dimension("batch", 4)
  dims = {k: [batch, mtf.Dimension("length", n)] for k, n in LENGTHS.items()}
  train = tf.estimator.ModeKeys.TRAIN
  with mesh_program.MeshProgram() as p:
    inputs = p.import_array(rng.randint(2, VOCAB, (4, 64)).astype(np.int32),
                            dims["inputs"])
    targets = p.import_array(np.pad(rng.randint(2, VOCAB, (4, 12)),
                                    [(0, 0), (0, 4)]).astype(np.int32),
                             dims["targets"])
    kwargs = dict(variable_dtype=mesh_program.FLOAT32)
    _, loss = student.call_simple(inputs, targets, True, mode=train,
                                  **kwargs)
    logits, hard = transformer.Bitransformer.call_simple(
        student, inputs, targets, True, mode=train, **kwargs)
    with tf.variable_scope("teacher"):
      teacher_logits, _ = student.teacher.call_simple(
          inputs, targets, False, mode=tf.estimator.ModeKeys.EVAL, **kwargs)
    soft = distillation.soft_cross_entropy(
        logits, teacher_logits, targets, student.decoder.output_vocab_dim,
        1.0, student.decoder.z_loss,
        student.decoder.loss_denominator(targets, 1))
    trainable = [v.name for v in p.graph.trainable_variables]
    out = p.run({"loss": loss, "hard": hard, "soft": soft})
  assert not any(n.startswith("teacher/") for n in trainable)
  assert "shared/embedding" in trainable
  return out


def test_all_weight_on_the_hard_labels_is_the_ordinary_loss():
  out = _model_losses(0.0)
  assert out["loss"] == out["hard"]
  assert out["soft"] > 0


def test_the_model_loss_is_the_mix_of_hard_and_teacher_losses():
  out = _model_losses(0.25)
  np.testing.assert_allclose(out["loss"],
                             0.75 * out["hard"] + 0.25 * out["soft"],
                             rtol=1e-5)
  assert abs(out["loss"] - out["hard"]) > 1e-3


def test_distill_mode_end_to_end(teacher, tmp_path):
  teacher_dir, arrays = teacher
  model_dir = str(tmp_path / "student")
  result = helpers.cli("distill", "--gin_file=models/small/dense",
                       "--gin_file=layouts/cpu_ep_2", "--gin_param=" + SMALL,
                       "--teacher_model_dir", teacher_dir,
                       "--model_dir", model_dir, "--steps", "2",
                       "--save_checkpoints_steps", "1",
                       "--log_every", "1")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "distilling %s" % teacher_dir in result.stdout
  assert "step 2/2" in result.stdout
  start = tf.train.load_checkpoint(os.path.join(model_dir, "model.ckpt-0"))
  np.testing.assert_array_equal(start.get_tensor("shared/embedding"),
                                arrays["shared/embedding"])
  expert = "encoder/block_001/layer_001/SwitchFFN/wo/kernel"
  end = tf.train.load_checkpoint(os.path.join(model_dir, "model.ckpt-2"))
  for reader in (start, end):   # the teacher is carried, never trained
    np.testing.assert_array_equal(reader.get_tensor("teacher/" + expert),
                                  arrays[expert])
  assert not np.array_equal(end.get_tensor("shared/embedding"),
                            arrays["shared/embedding"])
  # The student is an ordinary dense model for evaluation.
  result = helpers.cli("eval", "--gin_file=models/small/dense",
                       "--gin_file=layouts/cpu_1", "--gin_param=" + SMALL,
                       "--model_dir", model_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "step 2: validation neg_log_perplexity" in result.stdout


def test_distill_without_a_trained_teacher_is_one_line(tmp_path):
  result = helpers.cli("distill", "--gin_file=models/small/dense",
                       "--gin_file=layouts/cpu_1", "--teacher_model_dir",
                       str(tmp_path), "--model_dir", str(tmp_path / "s"),
                       "--steps", "1")
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      "switch-mtf: error: --teacher_model_dir=%s has no checkpoint and "
      "operative_config.gin: train the teacher first" % tmp_path)
  assert not os.path.exists(tmp_path / "s")
