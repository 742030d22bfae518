"""TensorFlow checkpoints written and read a piece at a time.

``tf.train.Saver`` needs every variable in memory at once; a converted
Switch-C (1.6T parameters) does not fit.  ``CheckpointWriter`` saves pieces
with the ``SaveV2`` op, each piece a whole tensor or one slice along the
first axis (one expert of an ``[experts, ...]`` kernel), in batches of
about ``batch_bytes`` (256 MB); ``close`` merges the batches into one
checkpoint with ``MergeV2Checkpoints``, which renames their data files
instead of copying them.  Any TensorFlow restore (the Estimator's
``init_checkpoint``, ``tf.train.load_checkpoint``) reads sliced tensors as
whole ones.  ``CheckpointReader.read_slice`` reads one first-axis slice
back with ``RestoreV2``.
"""
import os

import numpy as np
import tensorflow as tf


def run_op(op_fn, arrays=()):
  """Runs ``op_fn(*tensors)`` with ``arrays`` as its tensor inputs.

  Eagerly when the process allows it; else (Mesh TF code turns eager
  execution off) in a private graph with the arrays fed to placeholders:
  as graph constants they would be copied into the graph proto and again
  into the session, six times a batch's size in memory (measured) and slow.
  """
  if tf.executing_eagerly():
    return op_fn(*[tf.convert_to_tensor(a) for a in arrays])
  with tf.Graph().as_default():
    feeds = [tf.compat.v1.placeholder(a.dtype, a.shape) for a in arrays]
    op = op_fn(*feeds)
    with tf.compat.v1.Session() as session:
      return session.run(op, feed_dict=dict(zip(feeds, arrays)))


def _slice_spec(full_shape, index):
  """SaveV2/RestoreV2 spec of ``[index]`` along the first axis."""
  return "%s %d,1%s" % (" ".join(str(d) for d in full_shape), index,
                        ":-" * (len(full_shape) - 1))


class CheckpointWriter(object):
  """Writes a checkpoint at ``prefix`` piece by piece."""

  def __init__(self, prefix, batch_bytes=256 << 20):
    self.prefix = prefix
    self._batch_bytes = batch_bytes
    self._pending = []
    self._pending_bytes = 0
    self._parts = []

  def add(self, name, value, dtype=np.float32):
    """A whole tensor (``dtype=np.int64`` for ``global_step``)."""
    self._queue(name, "", np.asarray(value, dtype))

  def add_slice(self, name, full_shape, index, value):
    """``value`` is ``tensor[index]`` of a tensor of ``full_shape``."""
    value = np.asarray(value, np.float32)
    if tuple(value.shape) != tuple(full_shape[1:]):
      raise ValueError("%s[%d]: shape %s, expected %s" % (
          name, index, value.shape, tuple(full_shape[1:])))
    self._queue(name, _slice_spec(full_shape, index), value[None])

  def _queue(self, name, spec, value):
    self._pending.append((name, spec, value))
    self._pending_bytes += value.nbytes
    if self._pending_bytes >= self._batch_bytes:
      self._flush()

  def _flush(self):
    if not self._pending:
      return
    part = "%s.part-%05d" % (self.prefix, len(self._parts))
    names, specs, values = zip(*self._pending)
    run_op(lambda *tensors: tf.raw_ops.SaveV2(
        prefix=part, tensor_names=list(names), shape_and_slices=list(specs),
        tensors=list(tensors)), values)
    self._parts.append(part)
    self._pending, self._pending_bytes = [], 0

  def close(self):
    """Merges the pieces and points the directory's ``checkpoint`` file at
    the result; returns the prefix."""
    self._flush()
    run_op(lambda: tf.raw_ops.MergeV2Checkpoints(
        checkpoint_prefixes=self._parts, destination_prefix=self.prefix,
        delete_old_dirs=False))
    directory = os.path.dirname(self.prefix)
    with open(os.path.join(directory, "checkpoint"), "w") as f:
      name = os.path.basename(self.prefix)
      f.write('model_checkpoint_path: "%s"\nall_model_checkpoint_paths: '
              '"%s"\n' % (name, name))
    return self.prefix


class CheckpointReader(object):
  """Reads a checkpoint's tensors, whole or one first-axis slice at a time."""

  def __init__(self, prefix):
    self.prefix = prefix
    self._reader = tf.train.load_checkpoint(prefix)
    self.shapes = {name: tuple(shape) for name, shape in
                   self._reader.get_variable_to_shape_map().items()}
    self._dtypes = self._reader.get_variable_to_dtype_map()

  def read(self, name):
    return self._reader.get_tensor(name).astype(np.float32)

  def read_slice(self, name, index):
    """``tensor[index]``, without reading the rest of the tensor."""
    (value,) = run_op(lambda: tf.raw_ops.RestoreV2(
        prefix=self.prefix, tensor_names=[name],
        shape_and_slices=[_slice_spec(self.shapes[name], index)],
        dtypes=[self._dtypes[name]]))
    return np.asarray(value)[0].astype(np.float32)
