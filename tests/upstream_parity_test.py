"""Parity with upstream Mesh TF ``moe.py`` Switch gating (issue test 10).

Both layers are built in one mtf graph from the same weights and inputs; the
upstream one through ``transformer_moe_layer_v1`` with ``moe_gating="switch"``
and the argmax policy.
"""
import mesh_tensorflow as mtf
from mesh_tensorflow.transformer import moe
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from switch_mtf.moe import layers
from switch_mtf.moe import routing
from switch_mtf.train import mesh_program

E, M, H = 4, 8, 16


def _run_both(capacity_factor, train, dispatch, layout="", mesh_shape=""):
  rng = np.random.RandomState(0)
  tokens = rng.randn(4, 16, M).astype(np.float32)
  weights = {"router": rng.randn(M, E) * 0.5, "wi": rng.randn(E, M, H) * 0.3,
             "wo": rng.randn(E, H, M) * 0.3}
  dims = [mtf.Dimension("batch", 4), mtf.Dimension("length", 16),
          mtf.Dimension("d_model", M)]
  hparams = moe.MoE1D(
      num_experts=E, hidden_size=H, group_size=16,
      capacity_factor_train=capacity_factor,
      capacity_factor_eval=capacity_factor, min_expert_capacity=1,
      moe_gating="switch", switch_policy_train="argmax",
      switch_policy_eval="argmax", activation="relu")._hparams
  config = layers.SwitchConfig(
      num_experts=E, hidden_size=H, group_size=16,
      capacity_factor_train=capacity_factor,
      capacity_factor_eval=capacity_factor, min_expert_capacity=1,
      dispatch=dispatch)
  with mesh_program.MeshProgram(mesh_shape, layout) as p:
    x = p.import_array(tokens, dims)
    # Upstream crashes in training without a nonpadding tensor.
    nonpadding = p.import_array(np.ones((4, 16), np.float32), dims[:2])
    with tf.variable_scope("upstream"):
      y_up, loss_up = moe.transformer_moe_layer_v1(
          x, dims[-1], hparams, train, mesh_program.FLOAT32, layout=layout,
          mesh_shape=mesh_shape, nonpadding=nonpadding, activation="relu")
    with tf.variable_scope("ours"):
      # Upstream's loss is its default loss_coef 1e-2 times the balancing
      # loss, no z-loss: the same settings spelled out here.
      router = routing.SwitchRouter(policy_train="argmax", aux_loss_coef=1e-2,
                                    z_loss_coef=0.0)
      y_ours, r = layers.switch_feed_forward(
          x, config, router, train,
          mesh_program.FLOAT32, nonpadding=nonpadding, layout=layout,
          mesh_shape=mesh_shape)
    values = {
        "upstream/switch_gating/kernel": weights["router"],
        "upstream/wi/kernel": weights["wi"],
        "upstream/wo/kernel": weights["wo"],
        "ours/router/kernel": weights["router"],
        "ours/wi/kernel": weights["wi"],
        "ours/wo/kernel": weights["wo"],
    }
    return p.run({"y_up": y_up, "loss_up": loss_up, "y": y_ours,
                  "loss": r.loss,
                  "dropped": r.metrics["fraction_dropped"]},
                 variable_values=values)


@pytest.mark.parametrize("dispatch", ["einsum", "gather"])
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("capacity_factor,drops", [(4.0, False), (0.75, True)])
def test_same_outputs_and_aux_loss_as_upstream(capacity_factor, drops, train,
                                               dispatch):
  out = _run_both(capacity_factor, train, dispatch)
  assert (out["dropped"] > 0.1) == drops
  np.testing.assert_allclose(out["y"], out["y_up"], rtol=1e-5, atol=1e-6)
  assert out["loss"] == pytest.approx(float(out["loss_up"]), rel=1e-5)


def test_same_as_upstream_on_an_expert_parallel_mesh():
  out = _run_both(0.75, True, "gather", layout="batch:batch,experts:batch",
                  mesh_shape="batch:2")
  np.testing.assert_allclose(out["y"], out["y_up"], rtol=1e-5, atol=1e-6)
  assert out["loss"] == pytest.approx(float(out["loss_up"]), rel=1e-5)
