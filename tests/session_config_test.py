"""session_config.for_cpu: eight grappler passes off on TensorFlow's CPU
build, everything else of the given options kept; used by training's
Estimator and the evaluation scorer.  The last three leave the optimized
graph of a Switch training step as it was.  session_config.unoptimized:
grappler off, for the emptiness check's session."""
import collections
import hashlib

import mesh_tensorflow as mtf
import numpy as np
import tensorflow.compat.v1 as tf
from tensorflow.core.protobuf import rewriter_config_pb2

from switch_mtf import config
from switch_mtf.moe import layers
from switch_mtf.moe import routing
from switch_mtf.train import mesh_program
from switch_mtf.train import run
from switch_mtf.train import session_config
from switch_mtf.train import training
from switch_mtf.tasks import embedded

Rewriter = rewriter_config_pb2.RewriterConfig


# The passes that for_cpu turns off without changing the graph TensorFlow
# runs (the other five are checked by hand: see session_config).
NEUTRAL = ("loop_optimization", "shape_optimization", "implementation_selector")


def _passes(proto):
  rewrite = proto.graph_options.rewrite_options
  return (rewrite.layout_optimizer, rewrite.remapping,
          rewrite.memory_optimization, rewrite.function_optimization,
          rewrite.disable_tfg_optimizer) + tuple(
              getattr(rewrite, name) for name in NEUTRAL)


def test_passes_off_and_the_rest_kept(monkeypatch):
  monkeypatch.setattr(tf.test, "is_built_with_cuda", lambda: False)
  given = tf.ConfigProto(isolate_session_state=True,
                         allow_soft_placement=True)
  given.graph_options.rewrite_options.meta_optimizer_iterations = Rewriter.ONE
  out = session_config.for_cpu(given)
  assert _passes(out) == (Rewriter.OFF, Rewriter.OFF, Rewriter.NO_MEM_OPT,
                          Rewriter.OFF, True) + (Rewriter.OFF,) * 3
  assert out.isolate_session_state and out.allow_soft_placement
  assert out.graph_options.rewrite_options.meta_optimizer_iterations == (
      Rewriter.ONE)
  assert _passes(given) == (Rewriter.DEFAULT, Rewriter.DEFAULT,
                            Rewriter.DEFAULT_MEM_OPT, Rewriter.DEFAULT,
                            False) + (Rewriter.DEFAULT,) * 3  # not changed
  assert _passes(session_config.for_cpu()) == _passes(out)


def test_cuda_build_keeps_the_defaults(monkeypatch):
  monkeypatch.setattr(tf.test, "is_built_with_cuda", lambda: True)
  given = tf.ConfigProto(isolate_session_state=True)
  assert session_config.for_cpu(given) is given
  assert session_config.for_cpu() is None


def test_training_estimator_uses_them(monkeypatch, tmp_path):
  monkeypatch.setattr(tf.test, "is_built_with_cuda", lambda: False)
  task = embedded.register()
  config.parse(["models/small/dense", "layouts/cpu_1"], [])
  model = run.make_model(str(tmp_path), 8, {"inputs": 64, "targets": 16})
  estimator = training.training_estimator(model, task.name, seed=3)
  proto = estimator._session_config  # pylint: disable=protected-access
  assert _passes(proto) == _passes(session_config.for_cpu())
  assert proto.allow_soft_placement   # the Estimator's default kept
  assert estimator.config.tf_random_seed == 3


def test_emptiness_check_runs_without_grappler(monkeypatch):
  """The check's session has grappler off, and still tells a dataset with
  an element from an empty one."""
  configs = []
  session = tf.Session

  def recording(*args, **kwargs):
    configs.append(kwargs.get("config"))
    return session(*args, **kwargs)
  monkeypatch.setattr(tf, "Session", recording)
  with tf.Graph().as_default():
    assert run._has_element(tf.data.Dataset.range(3))  # pylint: disable=protected-access
    assert not run._has_element(  # pylint: disable=protected-access
        tf.data.Dataset.range(3).filter(lambda x: x > 5))
  assert len(configs) == 2
  assert all(c.graph_options.rewrite_options.disable_meta_optimizer
             for c in configs)


def _switch_step_graph(session_options):
  """The graphs TensorFlow runs for one training step (a gated-GELU Switch
  layer with its router loss and Adafactor, experts split over a 2-device
  mesh), after grappler with ``session_options``: a multiset of node
  fingerprints (op, device, attributes and, recursively, inputs; names left
  out, since grappler's renaming of deduplicated nodes is no change)."""
  switch = layers.SwitchConfig(num_experts=4, hidden_size=32, group_size=8,
                               activation="gated_gelu")
  layout, mesh_shape = "batch:b,experts:b", "b:2"
  rng = np.random.RandomState(0)
  with mesh_program.MeshProgram(mesh_shape, layout) as p:
    dims = [mtf.Dimension("batch", 4), mtf.Dimension("length", 8),
            mtf.Dimension("d_model", 16)]
    x = p.import_array(rng.randn(4, 8, 16).astype(np.float32), dims)
    y, result = layers.switch_feed_forward(
        x, switch, routing.SwitchRouter(), True, mesh_program.FLOAT32,
        layout=layout, mesh_shape=mesh_shape)
    loss = mtf.reduce_mean(mtf.square(y)) + result.loss
    variables = p.graph.trainable_variables
    grads = mtf.gradients([loss], [v.outputs[0] for v in variables])
    updates = mtf.optimize.AdafactorOptimizer().apply_grads(grads, variables)
    lowering = mtf.Lowering(p.graph, {p.mesh: mtf.placement_mesh_impl
                                      .PlacementMeshImpl(p.mesh_shape,
                                                         p.layout, [""] * 2)})
    step = tf.group([lowering.lowered_operation(op) for op in updates]
                    + [lowering.export_to_tf_tensor(loss)])
    metadata = tf.RunMetadata()
    with tf.Session(config=session_options) as session:
      session.run(tf.global_variables_initializer())
      session.run(lowering.copy_masters_to_slices())
      session.run(step, options=tf.RunOptions(output_partition_graphs=True),
                  run_metadata=metadata)
  nodes = {n.name: n for g in metadata.partition_graphs for n in g.node}
  fingerprints = {}

  def fingerprint(name):
    if name not in fingerprints:
      node = nodes[name]
      inputs = [i for i in node.input if not i.startswith("^")]
      controls = sorted(fingerprint(i[1:]) for i in node.input
                        if i.startswith("^"))
      data = [fingerprint(i.split(":")[0]) + ":" + (i.split(":") + ["0"])[1]
              for i in inputs]
      attrs = [(k, node.attr[k].SerializeToString(deterministic=True))
               for k in sorted(node.attr) if not k.startswith("_")]
      fingerprints[name] = hashlib.sha1(repr(
          (node.op, node.device, attrs, data, controls)).encode()).hexdigest()
    return fingerprints[name]
  return collections.Counter(fingerprint(name) for name in nodes)


def test_the_passes_change_no_graph_of_a_switch_step(monkeypatch):
  """for_cpu's graph of a Switch layer's training step is the one
  TensorFlow's defaults for the NEUTRAL passes give (each of them on
  again), node for node; with constant folding off too it is not (the
  comparison can tell).  The small presets' whole training steps were
  compared the same way by hand (see session_config)."""
  monkeypatch.setattr(tf.test, "is_built_with_cuda", lambda: False)

  def with_on(names):
    options = session_config.for_cpu()
    for name in names:
      setattr(options.graph_options.rewrite_options, name, Rewriter.DEFAULT)
    return options

  ours = _switch_step_graph(session_config.for_cpu())
  assert sum(ours.values()) > 300   # the whole step (495 nodes)
  assert _switch_step_graph(with_on(NEUTRAL)) == ours
  folding_off = session_config.for_cpu()
  folding_off.graph_options.rewrite_options.constant_folding = Rewriter.OFF
  assert _switch_step_graph(folding_off) != ours
