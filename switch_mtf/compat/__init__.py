"""Every workaround for old upstream code, in one place: this package
(the patches of Mesh TF in ``mesh_tf``, the others and the import hook
here).

Mesh TensorFlow 0.1.21 (the last release) was written for TensorFlow <= 2.12.
switch_mtf pins TensorFlow 2.15.1 (the last release with tf.estimator, which the
upstream TPU path needs), so a few things must be patched *before* the first
``import mesh_tensorflow``, and the others right after the module they patch
is imported.  ``install()`` puts an import hook in place that does exactly
that, when (and only if) those modules are imported: ``import switch_mtf``
calls it and costs nothing (no TensorFlow import), and the environment's
``switch_mtf_compat.pth`` calls it at every interpreter start, so that any
program of the environment that imports Mesh TF (T5's own
``t5_mesh_transformer`` too) gets the same fixes.  ``apply()`` installs the
hook and imports Mesh TF now.

Patches:
  1. ``tensorflow.python.framework.ops.register_tensor_conversion_function``
     moved to ``tensor_conversion_registry`` in TF 2.13; Mesh TF's
     ``tpu_variables.py`` still looks for it in ``ops`` (tensorflow/mesh#392).
  2. ``PlacementMeshImpl.random`` seeds each random op with ``random.random()``
     and ``hash(str)``.  ``hash`` of a string is salted per process, so the same
     seed gave different jitter/dropout in every run.  We replace it with a
     seed derived from a per-lowering counter and a stable CRC of the slice
     position, so the same ``tf.random.set_seed`` gives the same numbers.
     Where the graph has a global step (the Estimator path), the ops are
     stateless and also keyed by the step, so a run resumed from a checkpoint
     draws the numbers the uninterrupted run would have drawn.
  3. Mesh TF's train op increments the global step with no ordering against
     the model's reads of it (tf.Print showed step 4 printed as 3), so the
     learning rate, Adafactor's decay and the step-keyed random numbers
     could see either step.  ``order_step_increment()`` (called by our
     training hook before the graph is finalized) makes the increment wait
     for every read of the step that the parameter updates depend on, and
     for the Estimator's read that the session hooks fetch, as TensorFlow's
     own ``_increment_global_step`` does (only where the increment is
     outside control flow, not in a TPU loop).  Unordered, the summary
     hook, which picks its steps from that read, wrote small/switch_8's
     summaries at steps 1, 100, 200 instead of 1, 101, 201, and a test's at
     1, 11, 20 or 1, 10, 19 by the machine's load.
     ``stable_global_step()`` is the one read the random ops share.  The
     train op is ``tf.group``, which puts the increment and the updates in
     different NoOps (one per device): the reads are found from the top of
     that tree.  (Until 2026-12-03 they were looked for from the
     increment's own NoOp, found none, and the router's jitter drew with
     step+1's key whenever the increment ran first: a rare, load-dependent
     divergence of Switch runs, never of dropout-free dense ones.)
  4. ``mesh_tensorflow.transformer.utils`` imports ``pkg_resources``, which
     setuptools >= 82 no longer ships.  We only check for it and say what to do.
  5. Mesh TF's scalar summaries (``mtf.scalar_summary``: the loss, our
     router health) reach TensorBoard only through the TPU host call.  On
     CPU/GPU placement meshes we also emit a ``tf.summary.scalar`` so that
     the Estimator's summary hook writes them (not from inside the while
     loop of serialized microbatches, whose summaries cannot be merged).
  6. Mesh TF's ``get_estimator`` builds a RunConfig without
     ``tf_random_seed``, so variable initializers differ in every run;
     ``seed_estimator`` sets it.
  7. TensorFlow's ``CheckpointSaverHook`` saves again at the start of every
     run, also when the restored checkpoint is that very step: a resumed run
     rewrote the last good checkpoint, and a kill during that rewrite could
     damage it.  We skip that save when the latest checkpoint is the step
     (``saved_already``; our training hook, which replaces the method to
     write the graph once, asks the same).
  8. Mesh TF's model function ``tf.Print``s "step, tf_loss" to stderr on
     every CPU/GPU step (and reads the step racily for it).  Our progress
     lines replace it: its module sees a ``tf`` whose ``Print`` is identity.
  9. ``t5/models/__init__.py`` imports the Hugging Face model and so torch,
     which a Mesh TF user does not need.  We register ``t5.models`` as a bare
     package (its real directory, without running its ``__init__``), so that
     ``t5.models.mtf_model`` and ``t5.models.mesh_transformer`` import
     without torch.
  10. (None since 2026-12-03: the attention kernels' init scale, paper
     §2.4, is a modelling choice made by ``models.SparseLayerStack``.)
  11. gin tries an ``include``d file under each search path in turn; its
     resource reader logs ``ERROR:root:Path not found: ...`` for every path
     where the file is not, although a later one has it (our presets'
     ``include 'models/common.gin'`` misses the current directory first).
     ``quiet_gin_search_misses()`` (called by ``config.parse``) drops those
     records; a file found nowhere is still gin's IOError.
  12. Mesh TF's ``get_estimator`` passes no session master off TPU (only a
     TPU cluster resolver, which ``MtfModel`` builds for TPUs), so a
     ``--cluster`` run could not reach its gRPC server.  ``set_session_master``
     gives the model a ``SimpleClusterResolver`` whose master is the server
     and whose ClusterSpec is empty: RunConfig takes the master from it, and
     propagates no cluster_def (TensorFlow refuses a propagated spec that
     names the master's own task; every server already has the spec).
  13. Mesh TF's model function gives its mesh a variable placer only on TPU
     (``var_placer = None`` otherwise), so off TPU every master variable sat
     on the default device: task 0 of a ``--cluster`` run held the whole
     model.  ``spread_master_variables(devices)`` makes the module's
     ``mtf.Mesh`` take a ``BalancedVariablePlacer`` over those devices.
  14. TensorFlow 2.15's CUDA build (SWITCH_MTF_TENSORFLOW=gpu or pypi, or a
     plain ``pip install .``; bin/'s default tensorflow-cpu has no CUDA)
     registers its cuDNN, cuFFT and cuBLAS factories twice when imported
     and logs each as an error ("E ... Unable to register cuDNN
     factory"), with a GPU or without; users read "E" as an error.  ``import_tensorflow_quietly()``
     (the CLI's first TensorFlow import) drops those three lines and passes
     every other line of the import on.
  15. TensorFlow 2.15's TFLite module imports jax when it is installed
     (seqio's dependencies install it), only for TFLite's jax converter:
     0.6 s of every start.  ``import_tensorflow_quietly()`` hides jax
     while TensorFlow imports (TFLite then has no jax converter); a later
     ``import jax`` works as usual.
  16. T5's ``t5_mesh_transformer`` shows every exception with its
     traceback; a user error of ours (a layout that does not fit, a bad
     gin value) is then a 250-line traceback.  Its module's ``main`` is
     wrapped: the errors ``errors.user_error`` knows end the program with
     the one line and exit status ``switch-mtf`` gives (``SystemExit``,
     which absl passes on); ``SWITCH_MTF_DEBUG=1`` keeps the traceback.
  17. seqio's ``map_seed_manager`` (entered by ``Task.get_dataset``) puts
     the module's next preprocessor seed back only when its block ends
     without an exception (no try/finally), so a pipeline build that raised
     left the seeds of later seeded preprocessors shifted.
     ``seqio_map_seed_kept()`` restores it around a build that may raise
     (``train.pipelines``' first try without autograph).
  18. Mesh TF's lowering makes a TensorFlow constant at every use of one
     (shapes of reshapes, axes of sums and expand_dims, scalars of
     multiplies): small/switch_8 on 2 devices had 5,448 constants, 189 of
     them distinct, at ~0.1-0.25 ms of Python each, and grappler merged
     them again before each first run of a graph.  During each
     ``mtf.Lowering`` an equal constant (same value, dtype, shape, graph
     and device; none is shared under control dependencies, colocation,
     control flow or attribute scopes; per thread) is made once and
     reused, under the name of its first use: lowering
     -0.75 s and session set-up -0.29 s on that mesh.  The graph
     TensorFlow runs is the same after its common-subexpression pass;
     checkpoints after 10 steps (dense and switch_8 on 1 device, switch_8
     and einsum-dispatch switch_32 on 2, serialized microbatches) and
     evaluations are bit-identical with and without.
  19. Mesh TF's lowering enters a variable scope per device for every
     operation (``mtf.parallel``), and TensorFlow's variable scope store
     resets the counts of the scopes below the one it leaves by looping
     over every scope name it has seen (about a thousand in a small
     model's graph): 40 us a scope, 0.27 s of a lowering of small/switch_8
     on 2 devices.  The store's scope names are indexed by the scopes above
     them (``mesh_tf.patch_variable_subscopes``), so leaving a scope resets
     the same counts at the cost of those below it.
"""
import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

from switch_mtf.compat import mesh_tf
from switch_mtf.compat.mesh_tf import lowered_scalars  # noqa: F401  pylint: disable=unused-import
from switch_mtf.compat.mesh_tf import order_step_increment  # noqa: F401  pylint: disable=unused-import
from switch_mtf.compat.mesh_tf import spread_master_variables  # noqa: F401  pylint: disable=unused-import
from switch_mtf.compat.mesh_tf import stable_global_step  # noqa: F401  pylint: disable=unused-import

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_installed = False


def _patch_tensor_conversion_registry():
  from tensorflow.python.framework import ops  # pylint: disable=g-direct-tensorflow-import
  if not hasattr(ops, "register_tensor_conversion_function"):
    from tensorflow.python.framework import tensor_conversion_registry  # pylint: disable=g-direct-tensorflow-import
    ops.register_tensor_conversion_function = (
        tensor_conversion_registry.register_tensor_conversion_function)


def _check_pkg_resources():
  """Mesh TF and our config need pkg_resources; setuptools 81 (which torch
  2.13 needs at least 77.0.3 of) warns that it is deprecated on the first
  import.  We import it first, quietly: the warning is not the user's."""
  import warnings  # pylint: disable=g-import-not-at-top
  try:
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
      import pkg_resources  # pylint: disable=unused-import,g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "mesh_tensorflow.transformer needs pkg_resources, which setuptools>=82 "
        "removed: run `pip install 'setuptools<82'` in this environment.") from e


class _DropGinSearchMisses(object):
  """A logging filter (see 11)."""

  def filter(self, record):
    return not (record.getMessage().startswith("Path not found: ")
                and record.pathname.replace(os.sep, "/").endswith(
                    "gin/resource_reader.py"))


_GIN_SEARCH_MISSES = _DropGinSearchMisses()


def quiet_gin_search_misses():
  """Drops gin's log line for an include not found under one search path
  (see 11); idempotent."""
  import logging  # pylint: disable=g-import-not-at-top
  root = logging.getLogger()
  if _GIN_SEARCH_MISSES not in root.filters:
    root.addFilter(_GIN_SEARCH_MISSES)


@contextlib.contextmanager
def seqio_map_seed_kept():
  """seqio's next preprocessor seed as it was before the block, also when
  the block raises (see 17)."""
  from seqio import utils as seqio_utils  # pylint: disable=g-import-not-at-top
  kept = seqio_utils._NEXT_MAP_SEED  # pylint: disable=protected-access
  try:
    yield
  except BaseException:
    seqio_utils._NEXT_MAP_SEED = kept  # pylint: disable=protected-access
    raise


def seed_estimator(estimator, seed):
  """Sets the graph-level seed of an upstream Estimator (see 6)."""
  estimator._config = estimator._config.replace(tf_random_seed=seed)  # pylint: disable=protected-access
  return estimator


def set_session_master(model, target):
  """Runs an MtfModel's Estimator sessions on ``target`` (a gRPC server of
  a ``--cluster`` run; see 12)."""
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  model._cluster = tf.distribute.cluster_resolver.SimpleClusterResolver(  # pylint: disable=protected-access
      tf.train.ClusterSpec({}), master=target)


def session_master(model):
  """The session target set by ``set_session_master`` ("" for none)."""
  cluster = getattr(model, "_cluster", None)
  return "" if cluster is None or model._tpu else cluster.master()  # pylint: disable=protected-access


def saved_already(checkpoint_dir, step):
  """Whether the newest checkpoint in ``checkpoint_dir`` is of ``step``: a
  resumed run's, which its session restored (see 7)."""
  from tensorflow.python.checkpoint import checkpoint_management  # pylint: disable=g-direct-tensorflow-import,g-import-not-at-top
  latest = checkpoint_management.latest_checkpoint(checkpoint_dir)
  return bool(latest) and latest.endswith("-%d" % step)


def _patch_checkpoint_resave():
  from tensorflow.python.training import basic_session_run_hooks  # pylint: disable=g-direct-tensorflow-import,g-import-not-at-top
  hook_class = basic_session_run_hooks.CheckpointSaverHook
  original = hook_class.after_create_session

  def after_create_session(self, session, coord):
    step = session.run(self._global_step_tensor)  # pylint: disable=protected-access
    if not saved_already(self._checkpoint_dir, step):  # pylint: disable=protected-access
      return original(self, session, coord)
    self._save = lambda *args, **kwargs: False  # pylint: disable=protected-access
    try:
      return original(self, session, coord)
    finally:
      del self._save

  hook_class.after_create_session = after_create_session


class _OneLineUserErrors(object):
  """t5_mesh_transformer's ``main``, with our user errors as one line
  (see 16)."""

  def __init__(self, main):
    self._main = main

  def __call__(self, argv):
    from switch_mtf import errors  # pylint: disable=g-import-not-at-top
    try:
      return self._main(argv)
    except Exception as e:  # pylint: disable=broad-except
      known = errors.user_error(e)
      if known is None or os.environ.get("SWITCH_MTF_DEBUG"):
        raise
      sys.stdout.flush()
      print(errors.line(known[0], "t5_mesh_transformer"), file=sys.stderr)
      raise SystemExit(known[1]) from None


def _one_line_user_errors():
  main = sys.modules["t5.models.mesh_transformer_main"]
  if not isinstance(main.main, _OneLineUserErrors):
    main.main = _OneLineUserErrors(main.main)


class _BarePackage(importlib.abc.Loader):
  """``t5.models`` without its ``__init__`` (see 9): its submodules import
  from its directory as usual."""

  def create_module(self, spec):
    return None

  def exec_module(self, module):
    del module


class _Patching(importlib.abc.Loader):
  """Runs a module's loader between the patches due before and after it."""

  def __init__(self, loader, name):
    self._loader = loader
    self._name = name

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    for patch in _BEFORE.get(self._name, ()):
      patch()
    self._loader.exec_module(module)
    for patch in _AFTER.get(self._name, ()):
      patch()


class _Hook(importlib.abc.MetaPathFinder):
  """Finds the modules the patches are about with the other finders, and
  wraps their loaders."""

  def __init__(self):
    self._busy = set()

  def find_spec(self, name, path, target=None):
    del path, target
    if name not in _BEFORE and name not in _AFTER and name != "t5.models":
      return None
    if name in self._busy:
      return None
    self._busy.add(name)
    try:
      spec = importlib.util.find_spec(name)
    finally:
      self._busy.discard(name)
    if spec is None or spec.loader is None:
      return spec
    if name == "t5.models":
      spec.loader = _BarePackage()
    else:
      spec.loader = _Patching(spec.loader, name)
    return spec


# Patches by module: applied just before / just after its first import.
_BEFORE = {"mesh_tensorflow": (_patch_tensor_conversion_registry,
                               _check_pkg_resources)}
_AFTER = {
    "mesh_tensorflow": (mesh_tf.patch_placement_random,
                        mesh_tf.patch_scalar_summaries,
                        _patch_checkpoint_resave,
                        mesh_tf.patch_lowering_constants,
                        mesh_tf.patch_variable_subscopes),
    "mesh_tensorflow.transformer.utils": (mesh_tf.silence_loss_print,
                                          mesh_tf.place_master_variables),
    "t5.models.mesh_transformer_main": (_one_line_user_errors,),
}


_CUDA_FACTORY_NOISE = re.compile(
    rb"Unable to register cu(DNN|FFT|BLAS) factory: Attempting to register "
    rb"factory for plugin cu(DNN|FFT|BLAS) when one has already been "
    rb"registered")


def import_tensorflow_quietly():
  """Imports TensorFlow without its three CUDA factory lines (see 14) and
  without jax (see 15); a no-op once TensorFlow is imported."""
  if "tensorflow" in sys.modules:
    return
  sys.stderr.flush()
  saved = os.dup(2)
  hide_jax = "jax" not in sys.modules
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)   # the C++ logging writes to fd 2
    try:
      if hide_jax:
        sys.modules["jax"] = None   # `import jax` raises ImportError
      import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    finally:
      if hide_jax and sys.modules.get("jax", 0) is None:
        del sys.modules["jax"]
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().splitlines(keepends=True):
        if not _CUDA_FACTORY_NOISE.search(line):
          os.write(2, line)


def install():
  """Installs the import hook (idempotent); patches modules that are
  already imported (their ``before`` patches can only have been needed by
  an import that has already failed or succeeded)."""
  global _installed
  if _installed:
    return
  sys.meta_path.insert(0, _Hook())
  _installed = True
  for name, patches in _AFTER.items():
    if name in sys.modules:
      for patch in patches:
        patch()


def apply():
  """Installs the hook and imports Mesh TF now (all patches in place)."""
  install()
  import mesh_tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from mesh_tensorflow.transformer import utils  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
