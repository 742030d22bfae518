"""The Switch layer inside a Mesh TF LayerStack (issue test 13)."""
import functools

import mesh_tensorflow as mtf
from mesh_tensorflow.transformer import transformer
from mesh_tensorflow.transformer import transformer_layers
import numpy as np
import pytest

import helpers
from switch_mtf.moe import layers
from switch_mtf.train import mesh_program
from switch_mtf.moe import router_summaries
from switch_mtf.moe import routing

MESH, LAYOUT = "batch:2", "batch:batch,experts:batch"
VOCAB, LENGTH, BATCH = 16, 16, 8


def _sequences():
  """Counting sequences mod VOCAB from random starts: easy to learn."""
  starts = np.random.RandomState(0).randint(1, VOCAB, size=(BATCH, 1))
  seq = (starts + np.arange(LENGTH)[None, :]) % (VOCAB - 1) + 1
  return seq.astype(np.int32)


def _build_lm(p, aux_loss_coef):
  router = routing.SwitchRouter(policy_train="argmax",
                                aux_loss_coef=aux_loss_coef)
  attention = (transformer_layers.SelfAttention,
               dict(num_heads=2, key_value_size=8))
  stack = transformer.make_layer_stack(
      layers=[attention,
              (layers.SwitchFFN, dict(num_experts=4, hidden_size=32,
                                      group_size=32, router=router,
                                      dispatch="gather")),
              attention,
              (transformer_layers.DenseReluDense, dict(hidden_size=32))],
      num_layers=1,
      layer_stack_cls=functools.partial(
          transformer.LayerStack, dropout_rate=0.0, norm_epsilon=1e-6))
  model = transformer.Unitransformer(
      layer_stack=stack, d_model=16, input_vocab_size=VOCAB,
      output_vocab_size=VOCAB, autoregressive=True, max_length=LENGTH,
      layout=LAYOUT, mesh_shape=MESH, z_loss=0.0)
  return helpers.lm_loss(p, model, _sequences())


def test_aux_loss_is_part_of_the_total_loss():
  totals = {}
  for coef in (0.0, 0.01):
    with mesh_program.MeshProgram(MESH, LAYOUT, seed=5) as p:
      loss = _build_lm(p, coef)
      metrics = router_summaries.tensors_by_layer(p.graph)
      assert len(metrics) == 1
      (layer_metrics,) = metrics.values()
      totals[coef] = p.run({"loss": loss, "aux": layer_metrics["aux_loss"]})
  aux = float(totals[0.01]["aux"])
  assert aux == pytest.approx(float(totals[0.0]["aux"]), rel=1e-6)
  assert aux >= 1.0 - 1e-6   # N·Σ f·P is at least 1
  assert float(totals[0.01]["loss"] - totals[0.0]["loss"]) == pytest.approx(
      0.01 * aux, rel=1e-4)


def test_switch_lm_trains_on_two_devices():
  with mesh_program.MeshProgram(MESH, LAYOUT, seed=7) as p:
    loss = _build_lm(p, 0.01)
    variables = p.graph.trainable_variables
    grads = mtf.gradients([loss], [v.outputs[0] for v in variables])
    updates = mtf.optimize.AdafactorOptimizer(
        learning_rate=0.05).apply_grads(grads, variables)
    history = p.run({"loss": loss}, extra_ops=updates, steps=40)
  losses = [float(h["loss"]) for h in history]
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.5 * losses[0], losses


def test_switch_ffn_settings_are_switch_config_fields_with_its_defaults():
  """SwitchConfig declares the settings once; gin sees each of them."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  assert layers.SwitchFFN().config == layers.SwitchConfig()
  gin.bind_parameter("SwitchFFN.expert_capacity", 7)
  gin.bind_parameter("SwitchFFN.dispatch", "gather")
  try:
    layer = gin.get_configurable("SwitchFFN")()
  finally:
    gin.clear_config()
  assert layer.config == dataclasses.replace(
      layers.SwitchConfig(), expert_capacity=7, dispatch="gather")
  with pytest.raises(ValueError, match="num_expert"):
    gin.bind_parameter("SwitchFFN.num_expert", 4)
