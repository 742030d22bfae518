"""The TPU path: models lower with Mesh TF's SIMD mesh implementation (what
TPUEstimator uses), and expert parallelism becomes all-to-all collectives.

No TPU here: the graph is only built, with a stand-in device assignment."""
import mesh_tensorflow as mtf
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from switch_mtf import config
from switch_mtf.moe import layers
from switch_mtf.train import mesh_program
from switch_mtf.moe import models
from switch_mtf.moe import routing

MESH, LAYOUT = "batch:4", "batch:batch,experts:batch"


class _FakeDeviceAssignment(object):
  """What SimdMeshImpl asks a tf.tpu DeviceAssignment while lowering."""
  num_replicas = 4
  num_cores_per_replica = 1

  def tpu_device(self, replica=0, logical_core=0, job=None):
    del replica, logical_core, job
    return ""

  def host_device(self, replica=0, logical_core=0, job=None):
    del replica, logical_core, job
    return ""


def _lower(build):
  """Builds the mtf graph with ``build(mesh)`` -> loss, adds its gradients
  and lowers it with SimdMeshImpl; returns the TF op types."""
  tf.disable_eager_execution()
  with tf.Graph().as_default() as graph:
    mtf_graph = mtf.Graph()
    mesh = mtf.Mesh(mtf_graph, "mesh")
    loss = build(mesh)
    variables = mtf_graph.trainable_variables
    mtf.gradients([loss], [v.outputs[0] for v in variables])
    impl = mtf.simd_mesh_impl.SimdMeshImpl(
        mtf.convert_to_shape(MESH), mtf.convert_to_layout_rules(LAYOUT),
        device_assignment=_FakeDeviceAssignment())
    lowering = mtf.Lowering(mtf_graph, {mesh: impl})
    lowering.export_to_tf_tensor(loss)
    return [op.type for op in graph.get_operations()]


@pytest.mark.parametrize("dispatch", ["einsum", "gather"])
def test_switch_layer_lowers_to_all_to_all(dispatch):
  def build(mesh):
    dims = [mtf.Dimension("batch", 8), mtf.Dimension("length", 16),
            mtf.Dimension("d_model", 8)]
    x = mtf.import_fully_replicated(mesh, tf.zeros([8, 16, 8]),
                                    mtf.Shape(dims))
    config_ = layers.SwitchConfig(num_experts=4, hidden_size=16,
                                  group_size=16, dispatch=dispatch)
    y, result = layers.switch_feed_forward(
        x, config_, routing.SwitchRouter(), True, mesh_program.FLOAT32,
        layout=LAYOUT, mesh_shape=MESH)
    return mtf.reduce_sum(y) + result.loss
  ops = _lower(build)
  # Forward: tokens to experts and back; backward: the same two again.
  assert ops.count("AllToAll") >= 2


def test_small_switch_model_lowers_with_simd():
  config.parse(["models/small/switch_8.gin"], [
      "utils.run.mesh_shape = '%s'" % MESH,
      "utils.run.layout_rules = '%s'" % LAYOUT])

  def build(mesh):
    model = models.build_model("bitransformer", 64, LAYOUT, MESH)
    feats = {k: mtf.import_fully_replicated(
        mesh, tf.constant(np.ones((8, n), np.int32)),
        mtf.Shape([mtf.Dimension("batch", 8), mtf.Dimension("length", n)]))
             for k, n in (("inputs", 32), ("targets", 8))}
    _, loss = model.call_simple(
        inputs=feats["inputs"], targets=feats["targets"], compute_loss=True,
        mode="train", variable_dtype=mtf.VariableDType(
            tf.float32, tf.float32, tf.bfloat16))
    return loss
  ops = _lower(build)
  assert ops.count("AllToAll") >= 4   # two Switch layers (encoder, decoder)
  assert "CrossReplicaSum" in ops      # data-parallel gradient all-reduce
