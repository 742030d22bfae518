"""Every workaround for old upstream code, in one place.

Mesh TensorFlow 0.1.21 (the last release) was written for TensorFlow <= 2.12.
switch_mtf pins TensorFlow 2.15.1 (the last release with tf.estimator, which the
upstream TPU path needs), so a few things must be patched *before* the first
``import mesh_tensorflow``.  ``apply()`` does that; ``import switch_mtf`` calls
it, so users never have to.

Patches:
  1. ``tensorflow.python.framework.ops.register_tensor_conversion_function``
     moved to ``tensor_conversion_registry`` in TF 2.13; Mesh TF's
     ``tpu_variables.py`` still looks for it in ``ops`` (tensorflow/mesh#392).
  2. ``PlacementMeshImpl.random`` seeds each random op with ``random.random()``
     and ``hash(str)``.  ``hash`` of a string is salted per process, so the same
     seed gave different jitter/dropout in every run.  We replace it with a
     seed derived from a per-lowering counter and a stable CRC of the slice
     position, so the same ``tf.random.set_seed`` gives the same numbers.
  3. ``mesh_tensorflow.transformer.utils`` imports ``pkg_resources``, which
     setuptools >= 82 no longer ships.  We only check for it and say what to do.
  4. Mesh TF's scalar summaries (``mtf.scalar_summary``: the loss, our
     router health) reach TensorBoard only through the TPU host call.  On
     CPU/GPU placement meshes we also emit a ``tf.summary.scalar`` so that
     the Estimator's summary hook writes them.
  5. ``t5/models/__init__.py`` imports the Hugging Face model and so torch,
     which a Mesh TF user does not need.  We register ``t5.models`` as a bare
     package (its real directory, without running its ``__init__``), so that
     ``t5.models.mtf_model`` and ``t5.models.mesh_transformer`` import
     without torch.
"""
import os
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_applied = False


def _patch_tensor_conversion_registry():
  from tensorflow.python.framework import ops  # pylint: disable=g-direct-tensorflow-import
  if not hasattr(ops, "register_tensor_conversion_function"):
    from tensorflow.python.framework import tensor_conversion_registry  # pylint: disable=g-direct-tensorflow-import
    ops.register_tensor_conversion_function = (
        tensor_conversion_registry.register_tensor_conversion_function)


def _check_pkg_resources():
  try:
    import pkg_resources  # pylint: disable=unused-import,g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "mesh_tensorflow.transformer needs pkg_resources, which setuptools>=82 "
        "removed: run `pip install 'setuptools<82'` in this environment.") from e


def _deterministic_placement_random(self, shape, tf_fn, kwargs):
  """Replacement for PlacementMeshImpl.random with process-stable seeds."""
  counter = getattr(self, "_switch_mtf_random_ops", 0)
  self._switch_mtf_random_ops = counter + 1  # pylint: disable=protected-access
  slice_shape = self.slice_shape(shape)

  def my_fn(pnum):
    # Slices that hold the same part of the tensor (replicas) must draw the
    # same numbers, so the seed depends on the slice's position, not on pnum.
    key = "%d,%s" % (counter, self.slice_begin(shape, pnum))
    seed = zlib.crc32(key.encode("utf-8")) & 0x7FFFFFFF
    return tf_fn(slice_shape, seed=seed, **kwargs)

  return self.slicewise(my_fn, self.laid_out_pnum())


def _patch_scalar_summaries():
  import mesh_tensorflow as mtf  # pylint: disable=g-import-not-at-top
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  original = mtf.ScalarSummaryOperation.lower

  def lower(self, lowering):
    original(self, lowering)
    mesh_impl = lowering.mesh_impl(self)
    if isinstance(mesh_impl, mtf.placement_mesh_impl.PlacementMeshImpl):
      value = lowering.tensors[self.outputs[0]].to_laid_out_tensor()
      # The mtf op name already holds the layer's scope: use it as the tag
      # (tf.summary.scalar would prefix the lowering's name scope again).
      summary = tf.raw_ops.ScalarSummary(
          tags=self.name.strip("/"),
          values=tf.cast(value.tensor_list[0], tf.float32))
      tf.add_to_collection(tf.GraphKeys.SUMMARIES, summary)

  mtf.ScalarSummaryOperation.lower = lower


def _stub_t5_models():
  import sys  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  if "t5.models" in sys.modules:
    return
  import t5  # pylint: disable=g-import-not-at-top
  package = types.ModuleType("t5.models")
  package.__path__ = [os.path.join(os.path.dirname(t5.__file__), "models")]
  package.__package__ = "t5.models"
  sys.modules["t5.models"] = package
  t5.models = package


def apply():
  """Applies all patches (idempotent).  Must run before Mesh TF is imported."""
  global _applied
  if _applied:
    return
  _patch_tensor_conversion_registry()
  _check_pkg_resources()
  from mesh_tensorflow import placement_mesh_impl  # pylint: disable=g-import-not-at-top
  placement_mesh_impl.PlacementMeshImpl.random = _deterministic_placement_random
  _patch_scalar_summaries()
  _stub_t5_models()
  _applied = True
