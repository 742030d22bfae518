"""Layout invariance and impossible layouts (issue test 11, bad layouts)."""
import numpy as np
import pytest

import helpers
from switch_mtf.moe import layers
from switch_mtf.errors import ConfigError

LAYOUTS = {
    "1 device": ("", ""),
    "4-way expert + data": ("batch:4", "batch:batch,experts:batch"),
    "2x2 expert + model + data": (
        "batch:2,model:2", "batch:batch,experts:batch,expert_hidden:model"),
}


def _weights():
  rng = np.random.RandomState(0)
  return {"router": rng.randn(8, 4) * 0.5, "wi": rng.randn(4, 8, 16) * 0.3,
          "wo": rng.randn(4, 16, 8) * 0.3}


@pytest.mark.parametrize("dispatch", ["einsum", "gather"])
def test_same_outputs_and_gradients_on_every_layout(dispatch):
  tokens = np.random.RandomState(1).randn(4, 16, 8).astype(np.float32)
  config = layers.SwitchConfig(num_experts=4, hidden_size=16, group_size=16,
                               capacity_factor_train=1.0,
                               min_expert_capacity=1, dispatch=dispatch)
  results = {
      name: helpers.run_switch(tokens, config, train=True, grads=True,
                               weights=_weights(), mesh_shape=mesh,
                               layout=layout)
      for name, (mesh, layout) in LAYOUTS.items()}
  base = results["1 device"]
  assert base["metric/fraction_dropped"] > 0
  for name, out in results.items():
    for key in ["y", "loss"] + [k for k in base if k.startswith("grad/")]:
      np.testing.assert_allclose(out[key], base[key], rtol=1e-5, atol=1e-5,
                                 err_msg="%s: %s" % (name, key))


@pytest.mark.parametrize("dispatch", ["einsum", "gather"])
def test_expert_replication_over_an_outer_batch_dimension(dispatch):
  # 2 replicas of the experts (mesh "outer") x 2-way expert parallelism
  # ("inner"), as in Mesh TF's 8x8_dp_r4 layout.  Groups are one sequence in
  # both runs, so the results must match the single-device ones.
  tokens = np.random.RandomState(2).randn(4, 16, 8).astype(np.float32)
  config = layers.SwitchConfig(num_experts=4, hidden_size=16, group_size=16,
                               capacity_factor_train=1.0,
                               min_expert_capacity=1, dispatch=dispatch)
  base = helpers.run_switch(tokens, config, train=True, grads=True,
                            weights=_weights())
  replicated = helpers.run_switch(
      tokens, config, train=True, grads=True, weights=_weights(),
      outer_batch=2, mesh_shape="outer:2,inner:2",
      layout="outer_batch:outer,batch:inner,experts:inner")
  assert base["metric/fraction_dropped"] > 0
  for key in ["y", "loss"] + [k for k in base if k.startswith("grad/")]:
    np.testing.assert_allclose(replicated[key], base[key], rtol=1e-5,
                               atol=1e-5, err_msg=key)


@pytest.mark.parametrize("experts,mesh,layout,message", [
    (3, "batch:2", "batch:batch,experts:batch",
     r"'experts' \(size 3\) cannot be split 2 ways over mesh dimension 'batch'"),
    (4, "batch:2,model:2", "batch:batch,experts:model,expert_hidden:model",
     "both 'experts' and 'expert_hidden' on mesh dimension 'model'"),
    (4, "batch:2,model:2", "batch:batch,experts:batch,experts:model",
     "'experts' to more than one mesh dimension"),
])
def test_impossible_layouts_fail_before_lowering(experts, mesh, layout,
                                                 message):
  tokens = np.zeros((4, 8, 8), np.float32)
  config = layers.SwitchConfig(num_experts=experts, hidden_size=16,
                               group_size=8)
  with pytest.raises(ConfigError, match=message):
    helpers.run_switch(tokens, config, mesh_shape=mesh, layout=layout)


def test_tokens_that_cannot_be_split_over_the_batch_devices():
  tokens = np.zeros((3, 5, 8), np.float32)
  config = layers.SwitchConfig(num_experts=2, hidden_size=16, group_size=8)
  with pytest.raises(ConfigError, match="15 tokens"):
    helpers.run_switch(tokens, config, mesh_shape="batch:2",
                       layout="batch:batch,experts:batch")
