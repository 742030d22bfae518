"""Every workaround for old upstream code, in one place.

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
     for every read of the step that the parameter updates depend on;
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
"""
import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
import weakref
import zlib

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


_STEP_READS = weakref.WeakKeyDictionary()   # graph -> stable step tensor
_SCALARS = weakref.WeakKeyDictionary()      # graph -> {tag: lowered scalar}


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


def stable_global_step():
  """One int64 read of the global step per graph (None without one); the
  step increment waits for it once ``order_step_increment`` has run."""
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  graph = tf.get_default_graph()
  if graph not in _STEP_READS:
    step = tf.train.get_global_step(graph)
    if step is None:
      return None
    # Outside loops, control dependencies and device scopes of the caller.
    with tf.init_scope(), tf.device(None):
      _STEP_READS[graph] = tf.identity(tf.cast(step.read_value(), tf.int64),
                                       name="switch_mtf_stable_global_step")
  return _STEP_READS[graph]


def order_step_increment(graph):
  """Makes the global-step increments of ``graph`` wait for every read of
  the step that the parameter updates depend on (see 3): the learning rate,
  Adafactor's decay, the step-keyed random numbers.  Call before the graph
  is finalized; returns the number of reads ordered."""
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  step = tf.train.get_global_step(graph)
  if step is None:
    return 0
  ops = graph.get_operations()
  increments = [op for op in ops
                if op.type in ("AssignAdd", "AssignAddVariableOp")
                and op.inputs[0].op.name == step.op.name]
  if not increments:
    return 0
  controlled_by = {}   # op name -> the ops that have it as a control input
  for op in ops:
    for c in op.control_inputs:
      controlled_by.setdefault(c.name, []).append(op)
  # The train op groups the increment with the parameter updates, through
  # a tree of NoOps (tf.group makes one NoOp per device, then one over
  # those): climb to the top of that tree ...
  tops, frontier, tree = [], list(increments), set()
  while frontier:
    op = frontier.pop()
    if op.name in tree:
      continue
    tree.add(op.name)
    groups = [g for g in controlled_by.get(op.name, []) if g.type == "NoOp"]
    if not groups and op.type == "NoOp":
      tops.append(op)
    frontier.extend(groups)
  # ... and walk back from it to the reads of the step, never through the
  # increment or what runs after it (that would make a cycle).
  after = _descendants(increments, controlled_by) - (
      tree - {op.name for op in increments})
  frontier, seen, reads = list(tops), set(), []
  while frontier:
    op = frontier.pop()
    if op.name in seen or op.name in after:
      continue
    seen.add(op.name)
    if (op.type in ("ReadVariableOp", "Identity") and op.inputs
        and op.inputs[0].op.name == step.op.name):
      reads.append(op)
    frontier.extend(t.op for t in op.inputs)
    frontier.extend(op.control_inputs)
  for op in increments:
    op._add_control_inputs(reads)  # pylint: disable=protected-access
  return len(reads)


def _descendants(ops, controlled_by):
  """Names of ``ops`` and of every op that depends on them (data, or
  control: ``controlled_by`` maps an op's name to the ops it controls)."""
  names, frontier = set(), list(ops)
  while frontier:
    op = frontier.pop()
    if op.name in names:
      continue
    names.add(op.name)
    frontier.extend(c for t in op.outputs for c in t.consumers())
    frontier.extend(controlled_by.get(op.name, []))
  return names


def lowered_scalars(graph):
  """{tag: tf scalar} of the Mesh TF scalar summaries lowered in ``graph``
  on a placement mesh (the loss and router health in training)."""
  return dict(_SCALARS.get(graph, {}))


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


def _stateless(tf_fn):
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  return {tf.random.uniform: tf.random.stateless_uniform,
          tf.random.normal: tf.random.stateless_normal,
          tf.random.truncated_normal: tf.random.stateless_truncated_normal
          }.get(tf_fn)


def _deterministic_placement_random(self, shape, tf_fn, kwargs):
  """Replacement for PlacementMeshImpl.random with process-stable seeds."""
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  counter = getattr(self, "_switch_mtf_random_ops", 0)
  self._switch_mtf_random_ops = counter + 1  # pylint: disable=protected-access
  slice_shape = self.slice_shape(shape)
  stateless = _stateless(tf_fn)
  step = stable_global_step() if stateless else None
  graph_seed = tf.get_default_graph().seed

  def my_fn(pnum):
    # Slices that hold the same part of the tensor (replicas) must draw the
    # same numbers, so the seed depends on the slice's position, not on pnum.
    key = "%d,%s,%s" % (counter, self.slice_begin(shape, pnum), graph_seed)
    seed = zlib.crc32(key.encode("utf-8")) & 0x7FFFFFFF
    if step is None:
      return tf_fn(slice_shape, seed=seed, **kwargs)
    return stateless(slice_shape, seed=tf.stack([tf.constant(seed, tf.int64),
                                                 step]), **kwargs)

  return self.slicewise(my_fn, self.laid_out_pnum())


def _patch_placement_random():
  placement_mesh_impl = sys.modules["mesh_tensorflow.placement_mesh_impl"]
  placement_mesh_impl.PlacementMeshImpl.random = _deterministic_placement_random


def _patch_scalar_summaries():
  mtf = sys.modules["mesh_tensorflow"]
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  original = mtf.ScalarSummaryOperation.lower

  def lower(self, lowering):
    original(self, lowering)
    mesh_impl = lowering.mesh_impl(self)
    graph = tf.get_default_graph()
    # Inside a while loop's body (Mesh TF's serialized microbatches) a
    # summary cannot be merged with the outer graph's: skip it there.
    if (isinstance(mesh_impl, mtf.placement_mesh_impl.PlacementMeshImpl)
        and not getattr(graph, "building_function", False)):
      value = lowering.tensors[self.outputs[0]].to_laid_out_tensor()
      # The mtf op name already holds the layer's scope: use it as the tag
      # (tf.summary.scalar would prefix the lowering's name scope again).
      summary = tf.raw_ops.ScalarSummary(
          tags=self.name.strip("/"),
          values=tf.cast(value.tensor_list[0], tf.float32))
      tf.add_to_collection(tf.GraphKeys.SUMMARIES, summary)
      _SCALARS.setdefault(graph, {})[
          self.name.strip("/")] = value.tensor_list[0]

  mtf.ScalarSummaryOperation.lower = lower


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


class _ModuleView(object):
  """A module as one upstream module sees it: every attribute of the real
  one, except those a subclass replaces."""

  def __init__(self, module):
    self._module = module

  def __getattr__(self, name):
    return getattr(self._module, name)


class _TfWithoutPrint(_ModuleView):
  """tf.compat.v1 for mesh_tensorflow.transformer.utils, minus tf.Print."""

  @staticmethod
  def Print(tensor, *args, **kwargs):  # pylint: disable=invalid-name
    del args, kwargs
    return tensor


def _silence_loss_print():
  utils = sys.modules["mesh_tensorflow.transformer.utils"]
  if not isinstance(utils.tf, _TfWithoutPrint):
    utils.tf = _TfWithoutPrint(utils.tf)


# Devices the master variables of Mesh TF's model function are spread over
# off TPU (see 13); empty: all on the default device.
_MASTER_DEVICES = []


def spread_master_variables(devices):
  """Spreads the master variables of every model function built from now
  on over ``devices`` by size (Mesh TF's BalancedVariablePlacer); an empty
  list puts them back on the default device."""
  _MASTER_DEVICES[:] = list(devices)


class _MtfWithVariablePlacer(_ModuleView):
  """mesh_tensorflow for mesh_tensorflow.transformer.utils, whose meshes
  get a variable placer off TPU when one is asked for (see 13)."""

  def Mesh(self, graph, name, variable_placer=None):  # pylint: disable=invalid-name
    if variable_placer is None and _MASTER_DEVICES:
      variable_placer = self._module.utils.BalancedVariablePlacer(
          list(_MASTER_DEVICES))
    return self._module.Mesh(graph, name, variable_placer)


def _place_master_variables():
  utils = sys.modules["mesh_tensorflow.transformer.utils"]
  if not isinstance(utils.mtf, _MtfWithVariablePlacer):
    utils.mtf = _MtfWithVariablePlacer(utils.mtf)


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
    "mesh_tensorflow": (_patch_placement_random, _patch_scalar_summaries,
                        _patch_checkpoint_resave),
    "mesh_tensorflow.transformer.utils": (_silence_loss_print,
                                          _place_master_variables),
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
