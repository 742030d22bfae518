"""Sparse upcycling: a Switch checkpoint made from a trained dense one.

Every expert of a Switch layer starts as a copy of the dense feed-forward
layer it replaces (same scope: ``.../DenseReluDense/wi_0/kernel`` ->
``.../SwitchFFN/wi_0/kernel`` with a leading ``experts`` dimension), the
router is new (left out, so it gets its usual initializer), and every other
variable is copied.  Optimizer slots and the global step are not copied:
training the upcycled model starts a new run from step 0.

The Switch model's variables come from ``accounting.count`` (the same names
and shapes as the graph, without building it).  We write the result with
``checkpoint_io`` and hand it to the usual ``init_checkpoint`` path.
"""
import os

import numpy as np
import tensorflow.compat.v1 as tf

from switch_mtf.moe import accounting
from switch_mtf.moe import variable_names as var_names
from switch_mtf import checkpoint_io
from switch_mtf.errors import ConfigError


def upcycled_values(dense_checkpoint, switch_variables):
  """{name: array} for the Switch model's variables (router left out).

  Args:
    dense_checkpoint: path of a dense checkpoint (a prefix).
    switch_variables: [(name, shape)] of the Switch model.
  """
  reader = tf.train.load_checkpoint(dense_checkpoint)
  saved = reader.get_variable_to_shape_map()
  values = {}
  for name, shape in switch_variables:
    if var_names.is_router(name):
      continue   # a new router: its usual initializer
    shape = list(shape)
    source = var_names.dense_counterpart(name)
    if source is not None:
      if source not in saved or list(saved[source]) != shape[1:]:
        raise ConfigError(
            "cannot upcycle %s: the dense checkpoint has %s with shape %s, an "
            "expert needs %s (the dense and the Switch gin model must match "
            "outside the expert layers)" % (
                name, source, saved.get(source, "nothing"), shape[1:]))
      expert = reader.get_tensor(source).astype(np.float32)
      values[name] = np.broadcast_to(expert, shape).copy()
    elif name in saved and list(saved[name]) == shape:
      values[name] = reader.get_tensor(name).astype(np.float32)
    else:
      raise ConfigError(
          "cannot upcycle: the Switch model's %s %s is %s in the dense "
          "checkpoint (the dense and the Switch gin model must match outside "
          "the expert layers)" % (
              name, shape, "%s" % (saved[name],) if name in saved
              else "not"))
  return values


def write_checkpoint(values, prefix):
  """Saves {name: array} as a TensorFlow checkpoint at ``prefix`` (each
  array keeps its dtype)."""
  os.makedirs(os.path.dirname(prefix), exist_ok=True)
  writer = checkpoint_io.CheckpointWriter(prefix)
  for name, value in sorted(values.items()):
    value = np.asarray(value)
    writer.add(name, value, dtype=value.dtype)
  return writer.close()


def upcycle(dense_model_dir, prefix, vocab_size, sequence_length, batch_size,
            model_type="bitransformer"):
  """Writes the upcycled checkpoint of the gin-configured Switch model from
  the latest checkpoint of ``dense_model_dir``; returns its path."""
  dense = tf.train.latest_checkpoint(dense_model_dir)
  if dense is None:
    raise ConfigError("no checkpoint in --dense_model_dir=%s"
                      % dense_model_dir)
  report = accounting.count(model_type, vocab_size, sequence_length,
                            batch_size)
  switch = [(v.name, [d.size for d in v.dims]) for v in report.variables]
  if not any(var_names.dense_counterpart(name) for name, _ in switch):
    raise ConfigError("the gin model has no Switch layer to upcycle into: "
                      "add a Switch model, e.g. models/small/switch_8")
  return write_checkpoint(upcycled_values(dense, switch), prefix)
