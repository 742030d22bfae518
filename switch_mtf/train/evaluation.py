"""Deterministic evaluation: fixed validation examples, scored in process.

The paper's metric is the negative log perplexity of held-out text.  Two
things make a number trustworthy enough to compare models by:

- **The same examples for every model and every evaluation.**  A task's
  preprocessing may be random (T5's span corruption draws its noise spans
  per example); seqio draws it anew each time a dataset is built without a
  seed.  ``fixed_examples`` builds the split once with a seed (default 0),
  padded to the model's lengths, and keeps it as NumPy arrays: every model
  of a comparison and every checkpoint of a run is scored on exactly these
  tokens.
- **No state but the checkpoint.**  ``Scorer`` builds the gin model's
  scoring graph once (eval mode: argmax routing, eval capacity, no dropout)
  on the layout's mesh and restores checkpoints into it; scoring a
  checkpoint twice gives the same number to the last digit.  Building the
  graph once also makes an evaluation cost seconds (restore and forward
  passes) instead of an Estimator's graph construction per call.

The score of an example is Mesh TF's (``utils.tpu_estimator_model_fn`` in
score mode): the sum over its non-padding target tokens of the
log-likelihood; the negative log perplexity is the sum over examples
divided by the number of target tokens.
"""
import dataclasses
import typing

import mesh_tensorflow as mtf
from mesh_tensorflow.transformer import dataset as transformer_dataset
from mesh_tensorflow.transformer import transformer
import numpy as np
import seqio
import tensorflow.compat.v1 as tf

from switch_mtf.train import model_dir
from switch_mtf.train import pipelines
from switch_mtf.train import session_config
from switch_mtf.moe import models
from switch_mtf.errors import ConfigError

EVAL_SEED = 0


@dataclasses.dataclass(frozen=True)
class Examples:
  """Padded examples: {feature: int32 [num_examples, length]}."""
  features: typing.Dict[str, np.ndarray]

  @property
  def num_examples(self):
    return len(self.features["targets"])

  @property
  def target_tokens(self):
    return int(np.count_nonzero(self.features["targets"]))

  def batches(self, batch_size):
    """Batches of ``batch_size``; the last is filled with all-padding rows
    (their targets are 0, so they add nothing to any score)."""
    total = self.num_examples
    for start in range(0, total, batch_size):
      batch = {}
      for key, value in self.features.items():
        chunk = value[start:start + batch_size]
        if len(chunk) < batch_size:
          chunk = np.concatenate([chunk, np.zeros(
              (batch_size - len(chunk),) + chunk.shape[1:], chunk.dtype)])
        batch[key] = chunk
      yield batch, min(batch_size, total - start)


# Examples built in this process, keyed by the registered task object (a
# re-registered name is a new object), the split, the lengths and the seed.
_BUILT = []


def fixed_examples(task_name, split, lengths, seed=EVAL_SEED):
  """The examples of ``split`` of a task or mixture (all its sub-tasks that
  have the split), preprocessed once with ``seed`` and padded to
  ``lengths``; the same arrays for the same arguments."""
  try:
    task = seqio.get_mixture_or_task(task_name)
  except ValueError:
    raise ConfigError("unknown task or mixture %r: register it (e.g. "
                      "--module_import=...)" % task_name) from None
  key = (split, tuple(sorted(lengths.items())), seed)
  for known, known_key, examples in _BUILT:
    if known is task and known_key == key:
      return examples
  subtasks = [t for t in seqio.get_subtasks(task) if split in t.splits]
  if not subtasks:
    raise ConfigError("task %r has no %r split (it has %s)" % (
        task_name, split, ", ".join(sorted(
            {s for t in seqio.get_subtasks(task) for s in t.splits}))))
  columns = {}
  for subtask in subtasks:
    keys = tuple(k for k in ("inputs", "targets")
                 if k in subtask.output_features)

    def build(subtask=subtask, keys=keys):
      dataset = pipelines.build(subtask.name, lambda: subtask.get_dataset(
          lengths, split=split, shuffle=False, num_epochs=1, seed=seed))
      return transformer_dataset.pack_or_pad(
          dataset, lengths, pack=False, feature_keys=keys,
          ensure_eos=set(k for k in keys
                         if subtask.output_features[k].add_eos))
    for example in _numpy_examples(build):
      for k in keys:
        columns.setdefault(k, []).append(example[k].astype(np.int32))
  if not columns.get("targets"):
    raise ConfigError("the %r split of task %r has no examples: check its "
                      "data source" % (split, task_name))
  examples = Examples({k: np.stack(v) for k, v in columns.items()})
  _BUILT.append((task, key, examples))
  return examples


def _numpy_examples(build):
  """The examples of the dataset ``build()`` makes (in a graph of its own
  when eager execution is off, as Mesh TF code leaves it)."""
  if tf.executing_eagerly():
    return list(build().as_numpy_iterator())
  out = []
  with tf.Graph().as_default():
    nxt = tf.data.make_one_shot_iterator(build()).get_next()
    with tf.Session() as session:
      while True:
        try:
          out.append(session.run(nxt))
        except tf.errors.OutOfRangeError:
          return out


class Scorer(object):
  """The gin model's scoring graph, built once, for any checkpoint.

  Uses the gin configuration parsed when it is constructed (model, layout,
  activation dtype); placement meshes (CPU and GPU devices) only.
  """

  def __init__(self, vocab_size, lengths, batch_size, mesh_shape, layout,
               mesh_devices=None, model_type="bitransformer",
               activation_dtype=tf.float32, master=""):
    self.batch_size = batch_size
    self._graph = tf.Graph()
    with self._graph.as_default():
      mesh_shape = mtf.convert_to_shape(mesh_shape)
      layout_rules = mtf.convert_to_layout_rules(layout)
      mtf_graph = mtf.Graph()
      mesh = mtf.Mesh(mtf_graph, "my_mesh")
      batch_dim = mtf.Dimension("batch", batch_size)
      self._placeholders = {}
      features = {}
      for key in ("inputs", "targets"):
        if model_type == "lm" and key == "inputs":
          continue
        shape = mtf.Shape([batch_dim, mtf.Dimension("length", lengths[key])])
        placeholder = tf.placeholder(tf.int32, shape.to_integer_list, key)
        self._placeholders[key] = placeholder
        features[key] = mtf.import_fully_replicated(mesh, placeholder, shape,
                                                    name=key)
      model = models.build_model(model_type, vocab_size, layout_rules,
                                 mesh_shape)
      targets = features["targets"]
      if isinstance(model, transformer.Unitransformer):
        inputs = transformer.autoregressive_inputs(targets)
      else:
        inputs = features["inputs"]
      logits, _ = model.call_simple(
          inputs=inputs, targets=targets, compute_loss=False, mode="score",
          variable_dtype=mtf.VariableDType(tf.float32, tf.float32,
                                           activation_dtype))
      logits = mtf.cast(logits, tf.float32)
      length_dim, vocab_dim = logits.shape.dims[-2:]
      cross_entropy = mtf.layers.softmax_cross_entropy_with_logits(
          logits, targets, vocab_dim)
      cross_entropy *= mtf.cast(mtf.greater(targets, 0), tf.float32)
      scores = -mtf.reduce_sum(cross_entropy, reduced_dim=length_dim)
      devices = mesh_devices or [""] * mesh_shape.size
      mesh_impl = mtf.placement_mesh_impl.PlacementMeshImpl(
          mesh_shape, layout_rules, devices)
      lowering = mtf.Lowering(mtf_graph, {mesh: mesh_impl}, autostack=False)
      self._scores = lowering.export_to_tf_tensor(scores)
      self._masters = {v.name: v.get_master()
                       for v in mtf_graph.all_variables}
      self._copy_to_slices = lowering.copy_masters_to_slices()
      self._saver = tf.train.Saver(self._masters, sharded=False)
      init = tf.global_variables_initializer()
      # On a cluster, this session's variables stay its own (workers
      # outlive it and serve later runs).
      self._session = tf.Session(master, graph=self._graph, config=(
          session_config.for_cpu(tf.ConfigProto(isolate_session_state=True)
                                 if master else None)))
      self._session.run(init)
    self._restored = None

  def check(self, checkpoint):
    """One ConfigError if ``checkpoint`` lacks a variable of the model or
    holds it with another shape."""
    model_dir.check_fits(checkpoint, {name: v.shape.as_list()
                                      for name, v in self._masters.items()})

  def restore(self, checkpoint):
    if self._restored != checkpoint:
      self.check(checkpoint)
      self._saver.restore(self._session, checkpoint)
      self._session.run(self._copy_to_slices)
      self._restored = checkpoint

  def scores(self, checkpoint, examples):
    """Log-likelihood of each example's targets under ``checkpoint``."""
    self.restore(checkpoint)
    out = []
    for batch, real in examples.batches(self.batch_size):
      feed = {p: batch[k] for k, p in self._placeholders.items()}
      out.append(self._session.run(self._scores, feed)[:real])
    return np.concatenate(out)

  def neg_log_perplexity(self, checkpoint, examples):
    """Mean log-likelihood per target token (nats)."""
    return float(np.sum(self.scores(checkpoint, examples), dtype=np.float64)
                 / max(examples.target_tokens, 1))

  def close(self):
    self._session.close()
