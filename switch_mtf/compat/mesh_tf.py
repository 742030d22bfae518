"""The workarounds of ``switch_mtf.compat`` that patch Mesh TensorFlow
(numbered as in its list: 2, 3, 5, 8, 13, 18, 19).  No TensorFlow import here:
the patches import what they need when they run."""
import contextlib
import sys
import threading
import weakref
import zlib

_STEP_READS = weakref.WeakKeyDictionary()   # graph -> stable step tensor
_SCALARS = weakref.WeakKeyDictionary()      # graph -> {tag: lowered scalar}


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
  Adafactor's decay, the step-keyed random numbers; and for the read the
  session hooks fetch.  Call before the graph is finalized; returns the
  number of reads ordered."""
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
  # The hooks' read (the Estimator's ``global_step/add``: the summary,
  # checkpoint and stop-at-step hooks fetch it at every step) comes first
  # too, as TensorFlow's own ``_increment_global_step`` orders it: the
  # summary hook picks its next steps from that value, and with the
  # increment free to run first it wrote summaries at steps 100 and 200
  # instead of 101 and 201.  Only for increments outside control flow (a
  # TPU loop or replicated computation takes outside ops only through its
  # own context, never as a control input added later).
  from tensorflow.python.training import training_util  # pylint: disable=g-import-not-at-top
  at_top = [op for op in increments if op._get_control_flow_context() is None]  # pylint: disable=protected-access
  if not at_top:
    return len(reads)
  with graph.as_default():
    hooks_read = training_util._get_or_create_global_step_read(graph)  # pylint: disable=protected-access
  if hooks_read is None or hooks_read.op.name in after:
    return len(reads)
  for op in at_top:
    op._add_control_inputs([hooks_read.op])  # pylint: disable=protected-access
  return len(reads) + 1


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


def patch_placement_random():
  placement_mesh_impl = sys.modules["mesh_tensorflow.placement_mesh_impl"]
  placement_mesh_impl.PlacementMeshImpl.random = _deterministic_placement_random


def patch_scalar_summaries():
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


# The methods of TensorFlow and Mesh TF that patches 18 and 19 replace, by
# name (for their tests).
ORIGINALS = {}

# ``made``: {key: constant} while equal constants are shared on this thread.
_SHARING = threading.local()


@contextlib.contextmanager
def shared_constants():
  """Within: equal constants made on this thread are made once (see 18)."""
  outer = getattr(_SHARING, "made", None)
  _SHARING.made = {}
  try:
    yield
  finally:
    _SHARING.made = outer


def _equal_constants_shared(create):
  """``ops._create_graph_constant`` that, inside ``shared_constants``,
  returns the constant made before with the same value, dtype and shape in
  the same graph on the same device, outside control dependencies,
  colocation, control flow, attribute scopes and functions."""
  from tensorflow.python.framework import op_callbacks  # pylint: disable=g-direct-tensorflow-import,g-import-not-at-top
  from tensorflow.python.framework import ops  # pylint: disable=g-direct-tensorflow-import,g-import-not-at-top
  from tensorflow.python.framework import tensor_util  # pylint: disable=g-direct-tensorflow-import,g-import-not-at-top

  def create_or_share(value, dtype, shape, name, verify_shape,
                      allow_broadcast):
    made = getattr(_SHARING, "made", None)
    if made is None:
      return create(value, dtype, shape, name, verify_shape, allow_broadcast)
    # pylint: disable=protected-access
    graph = ops.get_default_graph()
    devices = list(graph._device_function_stack.peek_objs())
    if (graph.building_function or graph._control_dependencies_stack
        or list(graph._colocation_stack.peek_objs())
        or graph._get_control_flow_context() is not None
        or graph._attr_scope_map or op_callbacks.should_invoke_op_callbacks()
        or any(d.raw_string is None and d.function is not None
               for d in devices)):
      return create(value, dtype, shape, name, verify_shape, allow_broadcast)
    # pylint: enable=protected-access
    proto = tensor_util.make_tensor_proto(
        value, dtype=dtype, shape=shape, verify_shape=verify_shape,
        allow_broadcast=allow_broadcast)
    key = (graph, proto.SerializeToString(deterministic=True),
           tuple(d.raw_string for d in devices))
    if key not in made:
      made[key] = create(proto, None, None, name, False, False)
    return made[key]

  return create_or_share


def patch_lowering_constants():
  mtf = sys.modules["mesh_tensorflow"]
  from tensorflow.python.framework import ops  # pylint: disable=g-direct-tensorflow-import,g-import-not-at-top
  ORIGINALS["Lowering.__init__"] = lowering_init = mtf.Lowering.__init__
  ops._create_graph_constant = _equal_constants_shared(  # pylint: disable=protected-access
      ops._create_graph_constant)  # pylint: disable=protected-access

  def init(self, *args, **kwargs):
    with shared_constants():
      lowering_init(self, *args, **kwargs)

  mtf.Lowering.__init__ = init


def _indexed_subscopes(store):
  """{scope name: names of the scopes below it} of a variable scope store,
  built from its counts at first use (see 19)."""
  index = store.__dict__.get("_switch_mtf_below")
  if index is None:
    index = store._switch_mtf_below = {}  # pylint: disable=protected-access
    for name in store.variable_scopes_count:
      _index_scope(index, name)
  return index


def _index_scope(index, name):
  """Puts ``name`` under each scope above it, once: a name with a parent is
  indexed when its parent's set holds it (all are added together)."""
  if name in index.get(name.rpartition("/")[0], ()):
    return
  for i, character in enumerate(name):
    if character == "/":
      index.setdefault(name[:i], set()).add(name)


def patch_variable_subscopes():
  from tensorflow.python.ops import variable_scope  # pylint: disable=g-direct-tensorflow-import,g-import-not-at-top
  store_class = variable_scope._VariableScopeStore  # pylint: disable=protected-access
  ORIGINALS.update({
      "_VariableScopeStore.open_variable_scope":
          store_class.open_variable_scope,
      "_VariableScopeStore.close_variable_subscopes":
          store_class.close_variable_subscopes})
  close_all = store_class.close_variable_subscopes

  def open_variable_scope(self, scope_name):
    counts = self.variable_scopes_count
    if scope_name not in counts:   # else indexed already
      _index_scope(_indexed_subscopes(self), scope_name)
    counts[scope_name] = counts.get(scope_name, 0) + 1

  def close_variable_subscopes(self, scope_name):
    if scope_name is None:
      return close_all(self, None)
    # Those of the scopes below it that the counts hold: the counts may be
    # an older copy (variable_scope's exit puts one back).
    counts = self.variable_scopes_count
    for name in _indexed_subscopes(self).get(scope_name, ()):
      if name in counts:
        counts[name] = 0

  store_class.open_variable_scope = open_variable_scope
  store_class.close_variable_subscopes = close_variable_subscopes


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


def silence_loss_print():
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


def place_master_variables():
  utils = sys.modules["mesh_tensorflow.transformer.utils"]
  if not isinstance(utils.mtf, _MtfWithVariablePlacer):
    utils.mtf = _MtfWithVariablePlacer(utils.mtf)
