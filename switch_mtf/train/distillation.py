"""Distilling a Switch teacher into a dense student (paper §4.2, Tables 6-8).

The student is the gin model (e.g. ``models/small/dense``) built by Mesh TF's
``make_bitransformer`` with ``bitransformer_cls = DistillingBitransformer``:
an ordinary Bitransformer whose training loss, when a teacher is set, mixes
the hard-label cross entropy with the cross entropy against the teacher's
(temperature-softened) probabilities::

  loss = (1 - soft_weight) * hard + temperature**2 * soft_weight * soft

(the paper's best: soft_weight 0.25, temperature 1).  The teacher runs in the
same graph under the ``teacher/`` variable scope, in evaluation mode (argmax
routing, evaluation capacity, no dropout), with its variables made
untrainable and its logits outside the gradient; the student's variables keep
their plain names, so a distilled checkpoint is an ordinary dense checkpoint
(``switch-mtf eval`` with the dense gin model reads it).

Why not Mesh TF's ``StudentTeacher`` (model_type ``bi_student_teacher``): it
renames the student's variables to ``student/...`` and configures both
models by gin scopes, which Mesh TF's own ``decoder/`` defaults do not reach
under ``teacher/decoder``.  Here the teacher is built once from its own
operative config (``prepare``) and kept as a Python object; its layers
captured their hyperparameters when they were built.

``prepare`` also writes the run's first checkpoint: the teacher's weights
under ``teacher/`` and, by default, every student variable that the teacher
has under the same name (everything but the feed-forward layers that are
Switch layers in the teacher: the paper's "non-expert weights").
"""
import os

import gin
import mesh_tensorflow as mtf
from mesh_tensorflow.transformer import transformer
import tensorflow.compat.v1 as tf
from tensorflow_estimator.python.estimator import estimator_lib as tf_estimator

from switch_mtf.moe import accounting
from switch_mtf import config
from switch_mtf.moe import models
from switch_mtf.train import upcycling
from switch_mtf.errors import ConfigError

TEACHER_SCOPE = "teacher"
_TEACHER = {}   # "model": the teacher Bitransformer of this process


def set_teacher(model):
  """The teacher of every DistillingBitransformer built from now on (None:
  no distillation, the student trains on the hard labels only)."""
  _TEACHER["model"] = model


def soft_cross_entropy(student_logits, teacher_logits, targets, vocab_dim,
                       temperature, z_loss, denominator):
  """Cross entropy of the student against the teacher's softened
  probabilities, summed over non-padding targets and divided like the hard
  loss (``denominator``: the student's ``loss_denominator``)."""
  soft_targets = mtf.stop_gradient(
      mtf.softmax(teacher_logits / temperature, vocab_dim))
  loss = mtf.layers.softmax_cross_entropy_with_logits(
      student_logits / temperature, soft_targets, vocab_dim, z_loss=z_loss)
  weights = mtf.cast(mtf.greater(targets, 0), loss.dtype)
  return mtf.reduce_sum(loss * weights) / denominator


def mix(hard_loss, soft_loss, soft_weight, temperature):
  """Hinton et al.'s mix; the T^2 keeps the soft gradients' scale."""
  return ((1.0 - soft_weight) * hard_loss
          + temperature ** 2 * soft_weight * soft_loss)


@gin.configurable
class DistillingBitransformer(transformer.Bitransformer):
  """A Bitransformer (the student) trained against a teacher's probabilities.

  Outside training, or without a teacher (``set_teacher``), it is exactly
  its parent class.
  """

  def __init__(self, encoder, decoder, shared_embedding=True,
               soft_weight=0.25, temperature=1.0):
    super(DistillingBitransformer, self).__init__(
        encoder, decoder, shared_embedding=shared_embedding)
    if not 0.0 <= soft_weight <= 1.0:
      raise ConfigError("DistillingBitransformer.soft_weight=%r must be in "
                        "[0, 1] (paper: 0.25)" % (soft_weight,))
    if not temperature > 0:
      raise ConfigError("DistillingBitransformer.temperature=%r must be > 0"
                        % (temperature,))
    self.soft_weight = soft_weight
    self.temperature = temperature
    self.teacher = _TEACHER.get("model")

  def call_simple(self, inputs, targets, compute_loss,
                  mode=tf_estimator.ModeKeys.TRAIN, **kwargs):
    logits, hard_loss = super(DistillingBitransformer, self).call_simple(
        inputs, targets, compute_loss, mode=mode, **kwargs)
    if (not compute_loss or mode != tf_estimator.ModeKeys.TRAIN
        or self.teacher is None):
      return logits, hard_loss
    graph = inputs.mesh.graph
    with tf.variable_scope(TEACHER_SCOPE):
      teacher_logits, _ = self.teacher.call_simple(
          inputs, targets, compute_loss=False,
          mode=tf_estimator.ModeKeys.EVAL, **kwargs)
    graph.make_variables_untrainable(
        [v for v in graph.trainable_variables
         if v.name.startswith(TEACHER_SCOPE + "/")])
    if teacher_logits.shape != logits.shape:
      raise ConfigError("the teacher's logits %s do not match the student's "
                        "%s: use the same vocabulary and lengths"
                        % (teacher_logits.shape, logits.shape))
    soft = soft_cross_entropy(
        logits, teacher_logits, targets, self.decoder.output_vocab_dim,
        self.temperature, self.decoder.z_loss,
        self.decoder.loss_denominator(targets,
                                      kwargs.get("num_microbatches", 1)))
    return logits, mix(hard_loss, soft, self.soft_weight, self.temperature)


def _variables(vocab_size, lengths, batch_size):
  """{name: shape} of the gin model's variables (no graph)."""
  report = accounting.count("bitransformer", vocab_size, lengths, batch_size)
  return {v.name: [d.size for d in v.dims] for v in report.variables}


def student_initial_values(reader, student, teacher):
  """{student variable: teacher value} for every student variable the
  teacher has under the same name (Switch layers have other names, so
  their dense counterparts in the student keep their initializer).

  Raises ConfigError if such a variable's shapes differ.
  """
  values = {}
  for name, shape in sorted(student.items()):
    if name not in teacher:
      continue
    if list(teacher[name]) != list(shape):
      raise ConfigError(
          "the student's %s is %s but the teacher's is %s: the student must "
          "match the teacher outside the expert layers (d_model, heads, "
          "d_kv, layers, vocabulary; see gin/models/small/dense.gin)"
          % (name, list(shape), list(teacher[name])))
    values[name] = reader.get_tensor(name)
  return values


def prepare(teacher_model_dir, model_dir, vocab_size, lengths, batch_size,
            student_gin, initialize_student=True):
  """Builds the teacher, then re-parses the student's gin with
  ``bitransformer_cls = DistillingBitransformer``; on a new run, writes the
  first checkpoint (returns its prefix; None when resuming).

  Args:
    teacher_model_dir: a trained model's directory (its latest checkpoint
      and operative_config.gin).
    model_dir: the student's directory.
    vocab_size, lengths, batch_size: of the run.
    student_gin: (gin files, gin params) of the student.
    initialize_student: copy the teacher's non-expert weights into the
      student (the paper); else the student starts from its initializer.
  """
  checkpoint = tf.train.latest_checkpoint(teacher_model_dir)
  operative = os.path.join(teacher_model_dir, "operative_config.gin")
  if checkpoint is None or not os.path.exists(operative):
    raise ConfigError("--teacher_model_dir=%s has no checkpoint and "
                      "operative_config.gin: train the teacher first"
                      % teacher_model_dir)
  files, params = student_gin
  student = _variables(vocab_size, lengths, batch_size)
  # The teacher runs on the student's mesh (literal values only: a TPU
  # run's mesh_shape is a gin reference the teacher's config also has).
  mesh = ["utils.run.%s = %r" % (k, v) for k, v in (
      (k, config.query("utils.run." + k))
      for k in ("mesh_shape", "layout_rules", "mesh_devices"))
          if isinstance(v, (str, list, tuple))]
  mesh_shape, layout = config.mesh_and_layout()
  config.parse([operative], mesh)
  set_teacher(None)   # the teacher itself is an ordinary model
  teacher = _variables(vocab_size, lengths, batch_size)
  set_teacher(models.build_model("bitransformer", vocab_size, layout,
                                 mesh_shape))
  config.parse(files, list(params) + [
      "transformer.make_bitransformer.bitransformer_cls = "
      "@distillation.DistillingBitransformer"])
  reader = tf.train.load_checkpoint(checkpoint)
  initial = student_initial_values(reader, student, teacher)
  if tf.train.latest_checkpoint(model_dir) is not None:
    return None   # resuming: the run's own checkpoints hold both models
  values = {TEACHER_SCOPE + "/" + name: reader.get_tensor(name)
            for name in teacher}
  if initialize_student:
    values.update(initial)
  return upcycling.write_checkpoint(
      values, os.path.join(model_dir, "distill_init", "model.ckpt-0"))
