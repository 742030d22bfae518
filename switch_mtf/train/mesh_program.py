"""Running small mtf computations on a (virtual) device mesh.

Used by the tests, the layer benchmark and the demo: build an mtf graph, lower
it on a ``PlacementMeshImpl`` with ``n`` virtual CPU devices (empty device
strings), set variables from NumPy, feed inputs, and fetch NumPy results.
"""
import mesh_tensorflow as mtf
import numpy as np
import tensorflow.compat.v1 as tf

FLOAT32 = mtf.VariableDType(tf.float32, tf.float32, tf.float32)


class MeshProgram(object):
  """An mtf graph on one mesh, inside its own tf.Graph.

  Usage:
    with MeshProgram("batch:2", "batch:batch,experts:batch") as p:
      x = p.import_array(array, [batch_dim, length_dim, model_dim])
      y = ...mtf ops...
      values = p.run({"y": y})
  """

  def __init__(self, mesh_shape="", layout="", seed=1234, devices=None,
               target=""):
    """``devices``: one device name per mesh position (default: virtual
    CPU devices of this process); ``target``: the session master (a gRPC
    server's, for devices of a cluster)."""
    tf.disable_eager_execution()
    self.devices = devices
    self.target = target
    self.mesh_shape = mtf.convert_to_shape(mesh_shape)
    self.layout = mtf.convert_to_layout_rules(layout)
    self.layout_string = layout
    self.mesh_shape_string = mesh_shape
    self.seed = seed
    self.tf_graph = tf.Graph()
    self._graph_context = None
    self.graph = None
    self.mesh = None

  def __enter__(self):
    self._graph_context = self.tf_graph.as_default()
    self._graph_context.__enter__()
    tf.set_random_seed(self.seed)
    self.graph = mtf.Graph()
    self.mesh = mtf.Mesh(self.graph, "mesh")
    return self

  def __exit__(self, *args):
    self._graph_context.__exit__(*args)

  def import_placeholder(self, dims, dtype=tf.int32, name=None):
    """A fed input: returns (tf placeholder, fully replicated mtf tensor)."""
    shape = mtf.Shape(dims)
    placeholder = tf.placeholder(dtype, shape.to_integer_list, name=name)
    return placeholder, mtf.import_fully_replicated(self.mesh, placeholder,
                                                    shape)

  def import_array(self, array, dims, dtype=None):
    """A NumPy array as a fully replicated mtf tensor with ``dims``."""
    array = np.asarray(array)
    tensor = tf.constant(array, dtype=dtype or tf.as_dtype(array.dtype))
    return mtf.import_fully_replicated(self.mesh, tensor, mtf.Shape(dims))

  def variables_by_name(self):
    return {v.name: v for v in self.graph.all_variables}

  def run(self, fetches, variable_values=None, extra_ops=None, steps=1,
          feed_fn=None, on_step=None, fetch_variables=False):
    """Lowers the graph and evaluates ``fetches`` (a dict of mtf Tensors).

    Args:
      fetches: dict name -> mtf.Tensor.
      variable_values: optional dict variable name (or name suffix) ->
        NumPy array, assigned after initialization.
      extra_ops: optional list of mtf Operations to run each step (e.g. the
        optimizer's updates); fetches are read after the last step.
      steps: how many times to run extra_ops.
      feed_fn: optional function step -> feed_dict.
      on_step: optional function (step, fetched dict) called after each step.
      fetch_variables: also return the final trainable variable values, under
        the key "variables" (dict variable name -> NumPy array).

    Returns:
      dict name -> NumPy array (for steps > 1: a list, one per step).
    """
    devices = self.devices or [""] * max(1, self.mesh_shape.size)
    mesh_impl = mtf.placement_mesh_impl.PlacementMeshImpl(
        self.mesh_shape, self.layout, devices)
    # autostack would replace the variables by stacked ones, which the
    # variable_values and variable fetches below refer to by their own names.
    lowering = mtf.Lowering(self.graph, {self.mesh: mesh_impl},
                            autostack=False)
    names = sorted(fetches)
    tf_fetches = [lowering.export_to_tf_tensor(fetches[n]) for n in names]
    tf_updates = [lowering.lowered_operation(op) for op in (extra_ops or [])]
    assigns = []
    by_name = self.variables_by_name()
    if variable_values:
      for key, value in variable_values.items():
        matches = [v for n, v in by_name.items()
                   if n == key or n.endswith("/" + key)]
        if len(matches) != 1:
          raise KeyError("variable %r matches %d variables: %s"
                         % (key, len(matches), sorted(by_name)))
        master = matches[0].get_master()
        assigns.append(tf.assign(master, tf.cast(value, master.dtype)))
    init = tf.global_variables_initializer()
    copy = lowering.copy_masters_to_slices()
    copy_back = lowering.copy_slices_to_masters() if fetch_variables else None
    results = []
    with tf.Session(self.target, config=tf.ConfigProto(
        inter_op_parallelism_threads=2,
        intra_op_parallelism_threads=2,
        isolate_session_state=bool(self.target))) as sess:
      sess.run(init)
      sess.run(assigns)
      sess.run(copy)
      for step in range(steps):
        feed = feed_fn(step) if feed_fn else None
        if tf_updates:
          out = sess.run([tf_fetches, tf_updates], feed_dict=feed)[0]
        else:
          out = sess.run(tf_fetches, feed_dict=feed)
        results.append(dict(zip(names, out)))
        if on_step:
          on_step(step, results[-1])
      if fetch_variables:
        sess.run(copy_back)  # training updated the slices, not the masters
        masters = {v.name: v.get_master()
                   for v in self.graph.trainable_variables}
        results[-1]["variables"] = sess.run(masters)
    return results[-1] if steps == 1 else results

