"""Switch attention (Appendix A)."""
import mesh_tensorflow as mtf
import numpy as np
import pytest

import helpers
from switch_mtf.moe import accounting
from switch_mtf import config
from switch_mtf.moe import layers
from switch_mtf.train import mesh_program
from switch_mtf.moe import models
from switch_mtf.moe import router_summaries
from switch_mtf.errors import ConfigError

VOCAB = 64
PARAMS = [
    "utils.run.model_type = 'lm'",
    "transformer.make_layer_stack.layers = ["
    "@attention.SwitchSelfAttention, @transformer_layers.DenseReluDense]",
    "SwitchSelfAttention.num_experts = 4",
    "SwitchSelfAttention.hidden_size = 64",
    "SwitchSelfAttention.group_size = 64",
    "Unitransformer.max_length = 32",
]


def _lm_loss(p, layout="", mesh_shape=""):
  model = models.build_model("lm", VOCAB, layout, mesh_shape)
  return helpers.lm_loss(
      p, model, np.random.RandomState(0).randint(1, VOCAB, (4, 32)))


def test_switch_attention_lm_trains_on_two_devices_and_counts_right():
  config.parse(["models/small/dense.gin", "layouts/cpu_ep_2.gin"], PARAMS)
  layout, mesh_shape = "batch:batch,experts:batch", "batch:2"
  report = accounting.count("lm", VOCAB, {"inputs": 0, "targets": 32}, 4,
                            layout=layout, mesh_shape=mesh_shape)
  with mesh_program.MeshProgram(mesh_shape, layout) as p:
    loss = _lm_loss(p, layout, mesh_shape)
    variables = p.graph.trainable_variables
    built = {v.name: [d.size for d in v.shape.dims] for v in variables}
    routers = router_summaries.tensors_by_layer(p.graph)
    grads = mtf.gradients([loss], [v.outputs[0] for v in variables])
    updates = mtf.optimize.AdafactorOptimizer(
        learning_rate=0.02).apply_grads(grads, variables)
    losses = [float(o["loss"]) for o in p.run({"loss": loss},
                                              extra_ops=updates, steps=8)]
  # Two Switch layers (Q and the shared K/V) per attention layer.
  assert len(routers) == 4
  assert any(n.endswith("q_experts") for n in routers)
  assert any("kv_experts/wi/kernel" in n for n in built)
  assert not any(n.endswith("SwitchSelfAttention/q") for n in built)
  assert {v.name: [d.size for d in v.dims] for v in report.variables} == built
  assert losses[-1] < losses[0]


def test_switch_attention_settings_are_switch_configs_with_its_defaults():
  """Every SwitchConfig field is a setting (gin sees them in the
  signature); the defaults are SwitchConfig's except the attention's own;
  the other keywords reach Mesh TF's SelfAttention."""
  import inspect  # pylint: disable=g-import-not-at-top
  import gin  # pylint: disable=g-import-not-at-top
  from switch_mtf.moe import attention  # pylint: disable=g-import-not-at-top
  gin.clear_config()   # no bindings left by other tests
  signature = inspect.signature(attention.SwitchSelfAttention.__init__)
  for field in layers.dataclasses.fields(layers.SwitchConfig):
    expected = attention.SwitchSelfAttention.DEFAULTS.get(field.name,
                                                          field.default)
    assert signature.parameters[field.name].default == expected, field.name
  layer = attention.SwitchSelfAttention(num_experts=4, min_expert_capacity=2,
                                        num_heads=4, router="top_2")
  assert layer.config == layers.SwitchConfig(
      num_experts=4, min_expert_capacity=2, hidden_size=512,
      dispatch="gather")
  assert layer.num_heads == 4 and layer.shared_kv
  assert type(layer.router).__name__ == "Top2Router"
  with pytest.raises(ConfigError, match="SwitchSelfAttention.router=3"):
    attention.SwitchSelfAttention(router=3)
