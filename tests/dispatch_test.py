"""Einsum and gather dispatch: same outputs and gradients (issue test 9)."""
import dataclasses

import numpy as np
import pytest

import helpers
from switch_mtf.moe import layers
from switch_mtf.moe import routing

ROUTERS = {
    "switch": lambda: routing.SwitchRouter(policy_train="argmax"),
    "top_2": lambda: routing.Top2Router(policy_train="argmax",
                                        second_policy_train="all"),
    "ntlb": lambda: routing.NoTokenLeftBehindRouter(policy_train="argmax"),
    "batch_prioritized": lambda: routing.BatchPrioritizedRouter(
        policy_train="argmax"),
}


@pytest.mark.parametrize("router", sorted(ROUTERS))
@pytest.mark.parametrize("activation", ["relu", "gated_gelu"])
def test_einsum_and_gather_agree(router, activation):
  tokens = np.random.RandomState(3).randn(4, 12, 8).astype(np.float32)
  config = layers.SwitchConfig(num_experts=4, hidden_size=16, group_size=16,
                               capacity_factor_train=1.0,
                               min_expert_capacity=2, activation=activation,
                               dispatch="einsum")
  einsum = helpers.run_switch(tokens, config, ROUTERS[router](), train=True,
                              grads=True)
  if router != "ntlb":  # NTLB re-routes the overflow: 16 slots, 16 tokens
    assert 0 < einsum["metric/fraction_dropped"] < 1
  gather = helpers.run_switch(
      tokens, dataclasses.replace(config, dispatch="gather"),
      ROUTERS[router](), train=True, grads=True, weights=einsum["weights"])
  np.testing.assert_allclose(gather["y"], einsum["y"], rtol=1e-5, atol=1e-6)
  grads = sorted(k for k in einsum if k.startswith("grad/"))
  assert "grad/x" in grads and "grad/router" in grads
  for key in grads:
    assert np.abs(einsum[key]).sum() > 0, key
    np.testing.assert_allclose(gather[key], einsum[key], rtol=1e-4,
                               atol=1e-6, err_msg=key)


@pytest.mark.parametrize("dispatch", ["einsum", "gather"])
def test_a_size_one_outer_batch_changes_nothing(dispatch):
  """Mesh TF's training graph feeds [outer_batch=1, batch, ...]: the layer
  routes without that dim (so that the gather path computes only filled
  slots), with the same outputs, gradients and router loss."""
  tokens = np.random.RandomState(5).randn(4, 12, 8).astype(np.float32)
  nonpadding = np.ones((4, 12), np.float32)
  nonpadding[1, 9:] = 0
  config = layers.SwitchConfig(num_experts=4, hidden_size=16, group_size=16,
                               capacity_factor_train=1.0,
                               min_expert_capacity=2, activation="gated_gelu",
                               dispatch=dispatch)
  plain = helpers.run_switch(tokens, config, train=True, grads=True,
                             nonpadding=nonpadding)
  outer = helpers.run_switch(tokens, config, train=True, grads=True,
                             nonpadding=nonpadding, weights=plain["weights"],
                             outer_batch=1)
  assert 0 < plain["metric/fraction_dropped"] < 1
  np.testing.assert_allclose(outer["y"], plain["y"], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(outer["loss"], plain["loss"], rtol=1e-6)
  for key in (k for k in plain if k.startswith("grad/")):
    np.testing.assert_allclose(outer[key], plain[key], rtol=1e-5, atol=1e-7,
                               err_msg=key)
