"""Routing and the Switch layer's arithmetic (issue tests 2-8 and 12)."""
import mesh_tensorflow as mtf
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import helpers
import reference
from switch_mtf.moe import layers
from switch_mtf.moe import routing
from switch_mtf.train import mesh_program
from switch_mtf.errors import ConfigError

ARGMAX = dict(policy_train="argmax")


def _tokens(b, l, m, seed=0, positive=False):
  x = np.random.RandomState(seed).randn(b, l, m).astype(np.float32)
  return np.abs(x) if positive else x


@pytest.mark.parametrize("dispatch", ["einsum", "gather"])
def test_first_come_dropping(dispatch):
  # Every token prefers expert 0; it has 5 slots: exactly tokens 0..4 keep
  # theirs and the rest get exactly 0.
  tokens = _tokens(1, 16, 4, positive=True)
  router = np.zeros((4, 2), np.float32)
  router[:, 0] = 3.0
  config = layers.SwitchConfig(num_experts=2, hidden_size=8, group_size=16,
                               capacity_factor_train=0.625,
                               min_expert_capacity=1, dispatch=dispatch)
  out = helpers.run_switch(tokens, config, routing.SwitchRouter(**ARGMAX),
                           train=True, weights={"router": router})
  y = out["y"][0]
  assert np.all(np.abs(y[:5]).sum(-1) > 0)
  assert np.array_equal(y[5:], np.zeros_like(y[5:]))
  assert out["metric/fraction_dropped"] == pytest.approx(11 / 16)


@pytest.mark.parametrize("activation", ["relu", "gated_gelu"])
@pytest.mark.parametrize("dispatch", ["einsum", "gather"])
def test_kept_tokens_get_gate_times_expert(activation, dispatch):
  tokens = _tokens(4, 8, 6, seed=1)
  config = layers.SwitchConfig(num_experts=4, hidden_size=12, group_size=8,
                               capacity_factor_eval=1.0, min_expert_capacity=1,
                               activation=activation, dispatch=dispatch,
                               init_scale=1.0)
  out = helpers.run_switch(tokens, config)
  expected, aux, kept = reference.switch_layer(
      tokens.reshape(32, 6), out["weights"], num_groups=4, capacity=2,
      activation=activation)
  assert 0 < kept.sum() < 32  # some dropped, some kept
  np.testing.assert_allclose(out["y"].reshape(32, 6), expected, atol=1e-5)
  assert out["metric/aux_loss"] == pytest.approx(aux, rel=1e-5)
  assert out["loss"] == pytest.approx(0.01 * aux, rel=1e-5)
  assert out["metric/fraction_dropped"] == pytest.approx(1 - kept.mean())


def test_combine_has_one_gate_per_token_and_dispatch_is_its_support():
  tokens = _tokens(2, 16, 8, seed=2)
  config = layers.SwitchConfig(num_experts=4, hidden_size=8, group_size=16,
                               capacity_factor_eval=1.0)
  out = helpers.run_switch(tokens, config, extra=lambda r: {
      "combine": r.combine_tensor(), "dispatch": r.dispatch_tensor()})
  combine = out["combine"].reshape(32, -1)   # [tokens, experts * capacity]
  nonzero = (combine != 0).sum(-1)
  assert nonzero.max() == 1 and nonzero.min() == 0   # tight capacity drops
  top1 = out["probs"].reshape(32, 4).max(-1)
  kept = nonzero == 1
  np.testing.assert_allclose(combine.sum(-1)[kept], top1[kept], rtol=1e-6)
  assert np.array_equal(out["dispatch"].reshape(32, -1), (combine > 0) * 1.0)


def _cyclic_tokens(num_experts, group_size):
  """Tokens whose router probabilities are cyclic shifts of one vector, so
  each expert gets 1/N of the tokens and 1/N of the probability mass."""
  base = np.linspace(2.0, 0.0, num_experts).astype(np.float32)
  rows = [np.roll(base, t % num_experts) for t in range(group_size)]
  return np.stack(rows)[None]


@pytest.mark.parametrize("num_experts", [2, 4, 8])
def test_aux_loss_is_alpha_under_uniform_routing(num_experts):
  group = 4 * num_experts
  tokens = _cyclic_tokens(num_experts, group)
  config = layers.SwitchConfig(num_experts=num_experts, hidden_size=4,
                               group_size=group)
  out = helpers.run_switch(tokens, config,
                           weights={"router": np.eye(num_experts)})
  assert out["metric/aux_loss"] == pytest.approx(1.0, rel=1e-6)
  assert out["loss"] == pytest.approx(0.01, rel=1e-6)
  np.testing.assert_allclose(out["metric/expert_load"],
                             np.full(num_experts, 1.0 / num_experts))


def test_aux_loss_formula_and_padding_excluded():
  tokens = _tokens(2, 8, 4, seed=3)
  real = np.ones((2, 8))
  real[0, 5:] = 0
  real[1, 2] = 0
  config = layers.SwitchConfig(num_experts=4, hidden_size=8, group_size=8,
                               capacity_factor_eval=1.0, min_expert_capacity=1)
  padded = helpers.run_switch(tokens, config, nonpadding=real)
  router = padded["weights"]["router"]
  aux = []
  for g in range(2):
    rows = tokens[g][real[g] > 0]
    probs = reference.softmax(rows @ router)
    f = np.bincount(probs.argmax(-1), minlength=4) / len(rows)
    aux.append(4 * np.sum(f * probs.mean(0)))
  assert padded["metric/aux_loss"] == pytest.approx(np.mean(aux), rel=1e-5)
  # Padding gets no expert and takes no slot.
  expected, _, _ = reference.switch_layer(
      tokens.reshape(16, 4), padded["weights"], num_groups=2, capacity=2,
      real=real.reshape(-1))
  np.testing.assert_allclose(padded["y"].reshape(16, 4), expected, atol=1e-5)
  assert np.all(padded["y"][real == 0] == 0)
  kept_real = (np.abs(expected).sum(-1) > 0).sum()
  assert padded["metric/fraction_dropped"] == pytest.approx(
      1 - kept_real / real.sum())


def test_no_nonpadding_means_every_token_counts():
  tokens = _tokens(1, 8, 4, seed=4)
  config = layers.SwitchConfig(num_experts=2, hidden_size=4, group_size=8)
  a = helpers.run_switch(tokens, config, train=True)
  b = helpers.run_switch(tokens, config, train=True, nonpadding=np.ones((1, 8)))
  assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
  np.testing.assert_allclose(a["y"], b["y"])


def test_z_loss_on_hand_made_logits():
  tokens = np.array([[[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 3.0, 0.5],
                      [2.0, -2.0, 1.0]]], np.float32)
  real = np.array([[1, 1, 1, 0]])
  config = layers.SwitchConfig(num_experts=3, hidden_size=4, group_size=4)
  router = routing.SwitchRouter(aux_loss_coef=0.0, z_loss_coef=0.5)
  out = helpers.run_switch(tokens, config, router, nonpadding=real,
                           weights={"router": np.eye(3)})
  lse = np.log(np.exp(tokens[0, :3]).sum(-1))
  z = np.mean(lse ** 2)
  assert out["metric/z_loss"] == pytest.approx(z, rel=1e-5)
  assert out["loss"] == pytest.approx(0.5 * z, rel=1e-5)


@pytest.mark.parametrize("dispatch", ["einsum", "gather"])
def test_router_runs_in_float32_with_bfloat16_activations(dispatch):
  bf16 = mtf.VariableDType(tf.float32, tf.float32, tf.bfloat16)
  dims = [mtf.Dimension("batch", 2), mtf.Dimension("length", 8),
          mtf.Dimension("d_model", 4)]
  with mesh_program.MeshProgram() as p:
    x = p.import_array(np.zeros((2, 8, 4)), dims, dtype=tf.bfloat16)
    config = layers.SwitchConfig(num_experts=2, hidden_size=4, group_size=8,
                                 dispatch=dispatch)
    y, r = layers.switch_feed_forward(x, config, routing.SwitchRouter(), True,
                                      bf16)
    # The router's matmul reads a float32 copy of x and float32 weights.
    router_matmul = r.logits.operation
    assert [t.dtype for t in router_matmul.inputs] == [tf.float32] * 2
    assert r.logits.dtype == tf.float32 and r.probs.dtype == tf.float32
    assert all(c.gate.dtype == tf.float32 for c in r.choices)
    assert r.loss.dtype == tf.float32
    assert r.combine_tensor().dtype == tf.bfloat16
    assert r.dispatch_tensor().dtype == tf.bfloat16
    assert y.dtype == tf.bfloat16


def test_jitter_only_in_training_and_only_on_router_input():
  tokens = _tokens(1, 32, 4, seed=5, positive=True) + 0.5
  config = layers.SwitchConfig(num_experts=4, hidden_size=8, group_size=32,
                               drop_tokens_eval=False,
                               capacity_factor_train=4.0)
  router = routing.SwitchRouter(policy_train="input_jitter", jitter_eps=0.01)
  rng = np.random.RandomState(0)
  weights = {"router": np.eye(4),  # logits = router input, elementwise
             "wi": rng.randn(4, 4, 8) * 0.5, "wo": rng.randn(4, 8, 4) * 0.5}
  eval_a = helpers.run_switch(tokens, config, router, weights=weights, seed=1)
  eval_b = helpers.run_switch(tokens, config, router, weights=weights, seed=2)
  np.testing.assert_array_equal(eval_a["y"], eval_b["y"])
  np.testing.assert_allclose(eval_a["logits"], tokens, rtol=1e-6)

  train = helpers.run_switch(tokens, config, router, weights=weights,
                             train=True, seed=3)
  ratio = train["logits"] / tokens
  assert ratio.min() >= 0.99 - 1e-6 and ratio.max() <= 1.01 + 1e-6
  assert ratio.std() > 1e-3   # it really is jittered
  # The experts see the clean input: y = jittered gate x expert(clean x).
  w = train["weights"]
  probs = train["probs"][0]
  x = tokens[0]
  expected = np.stack([probs[t].max() * reference.expert(
      x[t], w, probs[t].argmax(), "relu") for t in range(32)])
  np.testing.assert_allclose(train["y"][0], expected, rtol=1e-5, atol=1e-6)


def test_same_seed_same_jitter():
  tokens = _tokens(1, 16, 4, seed=6)
  config = layers.SwitchConfig(num_experts=4, hidden_size=8, group_size=16)
  router = routing.SwitchRouter(policy_train="input_jitter")
  a = helpers.run_switch(tokens, config, router, train=True, seed=11)
  b = helpers.run_switch(tokens, config, router, train=True, seed=11)
  np.testing.assert_array_equal(a["logits"], b["logits"])
  other = helpers.run_switch(tokens, config, router, train=True, seed=12)
  assert not np.array_equal(a["logits"], other["logits"])


@pytest.mark.parametrize("policy", ["input_dropout", "sample"])
def test_other_policies_run_and_eval_is_argmax(policy):
  tokens = _tokens(2, 16, 4, seed=7)
  config = layers.SwitchConfig(num_experts=4, hidden_size=8, group_size=16)
  router = routing.SwitchRouter(policy_train=policy)
  train = helpers.run_switch(tokens, config, router, train=True)
  assert np.isfinite(train["y"]).all()
  evaluated = helpers.run_switch(tokens, config, router)
  argmax = helpers.run_switch(tokens, config, routing.SwitchRouter(**ARGMAX))
  np.testing.assert_array_equal(evaluated["y"], argmax["y"])


def test_sample_policy_samples():
  # With flat router probabilities, sampling spreads tokens over all experts
  # while argmax sends every token to the same one.
  tokens = np.ones((1, 64, 4), np.float32)
  config = layers.SwitchConfig(num_experts=4, hidden_size=8, group_size=64)
  flat = {"router": np.zeros((4, 4))}
  sampled = helpers.run_switch(tokens, config,
                               routing.SwitchRouter(policy_train="sample"),
                               train=True, weights=flat)
  assert (sampled["metric/expert_load"] > 0.05).all()


@pytest.mark.parametrize("kwargs,message", [
    (dict(policy_train="softmax"), "policy_train='softmax'"),
    (dict(policy_eval="jitter"), "policy_eval='jitter'"),
    (dict(jitter_eps=1.5), "jitter_eps=1.5"),
])
def test_bad_router_values(kwargs, message):
  with pytest.raises(ConfigError, match=message):
    routing.SwitchRouter(**kwargs)


def test_unknown_router_name():
  with pytest.raises(ConfigError, match="router='top_3'"):
    routing.make_router("top_3")


# ----------------------------------------------------------------------------
# Top-2, No-Token-Left-Behind and batch-prioritized routing (issue test 12).


def _top2_reference(tokens, w, capacity):
  """NumPy top-2 with second choices after all first choices, policy 'all'."""
  probs = reference.softmax(tokens @ w["router"])
  order = np.argsort(-probs, -1)
  e1, e2 = order[:, 0], order[:, 1]
  g1 = probs[np.arange(len(tokens)), e1]
  g2 = probs[np.arange(len(tokens)), e2]
  g1, g2 = g1 / (g1 + g2 + 1e-9), g2 / (g1 + g2 + 1e-9)
  used = np.zeros(probs.shape[1], int)
  y = np.zeros_like(tokens)
  for choice, gate in ((e1, g1), (e2, g2)):
    for t in range(len(tokens)):
      e = choice[t]
      if used[e] < capacity:
        used[e] += 1
        y[t] += gate[t] * reference.expert(tokens[t], w, e, "relu")
  return y


@pytest.mark.parametrize("capacity_factor", [4.0, 1.5])
def test_top2_renormalized_gates_and_second_choices_after_first(
    capacity_factor):
  tokens = _tokens(1, 16, 6, seed=8)
  config = layers.SwitchConfig(num_experts=4, hidden_size=8, group_size=16,
                               capacity_factor_eval=capacity_factor,
                               min_expert_capacity=1)
  router = routing.Top2Router(second_policy_eval="all")
  out = helpers.run_switch(tokens, config, router)
  capacity = int(16 * capacity_factor / 4)
  expected = _top2_reference(tokens[0], out["weights"], min(capacity, 16))
  np.testing.assert_allclose(out["y"][0], expected, atol=1e-5)


def test_top2_second_policy_none_is_switch_with_renormalized_gate():
  tokens = _tokens(1, 16, 6, seed=9)
  config = layers.SwitchConfig(num_experts=4, hidden_size=8, group_size=16,
                               drop_tokens_eval=False)
  top2 = helpers.run_switch(tokens, config,
                            routing.Top2Router(second_policy_eval="none"))
  switch = helpers.run_switch(tokens, config, weights=top2["weights"])
  # Same experts; the top-2 gate is p1 / (p1 + p2) instead of p1.
  p = np.sort(top2["probs"][0], -1)
  scale = 1.0 / (p[:, -1] + p[:, -2] + 1e-9)
  np.testing.assert_allclose(top2["y"][0], switch["y"][0] * scale[:, None],
                             rtol=1e-4, atol=1e-6)


def _ntlb_reference(tokens, w, capacity, max_choices):
  probs = reference.softmax(tokens @ w["router"])
  order = np.argsort(-probs, -1)
  used = np.zeros(probs.shape[1], int)
  assigned = np.full(len(tokens), -1)
  for k in range(max_choices):
    for t in range(len(tokens)):
      e = order[t, k]
      if assigned[t] < 0 and used[e] < capacity:
        used[e] += 1
        assigned[t] = e
  y = np.zeros_like(tokens)
  for t, e in enumerate(assigned):
    if e >= 0:
      y[t] = probs[t, e] * reference.expert(tokens[t], w, e, "relu")
  return y, assigned


def test_ntlb_reroutes_overflow_to_next_choices():
  tokens = _tokens(1, 32, 6, seed=10)
  tokens[0, :, 0] += 1.0  # make expert 0 popular
  config = layers.SwitchConfig(num_experts=4, hidden_size=8, group_size=32,
                               capacity_factor_eval=1.0, min_expert_capacity=1)
  ntlb = helpers.run_switch(tokens, config,
                            routing.NoTokenLeftBehindRouter(max_choices=4))
  expected, assigned = _ntlb_reference(tokens[0], ntlb["weights"], 8, 4)
  np.testing.assert_allclose(ntlb["y"][0], expected, atol=1e-5)
  switch = helpers.run_switch(tokens, config, weights=ntlb["weights"])
  assert switch["metric/fraction_dropped"] > 0.1
  # Capacity 8 x 4 experts = 32 slots for 32 tokens: nobody is left behind.
  assert (assigned >= 0).all()
  assert ntlb["metric/fraction_dropped"] == pytest.approx(0.0)


def test_batch_prioritized_keeps_highest_gates():
  tokens = _tokens(1, 16, 4, seed=11, positive=True)
  router = np.zeros((4, 2), np.float32)
  router[:, 0] = 1.0    # every token prefers expert 0, with different gates
  config = layers.SwitchConfig(num_experts=2, hidden_size=8, group_size=16,
                               capacity_factor_eval=0.5, min_expert_capacity=1)
  out = helpers.run_switch(tokens, config, routing.BatchPrioritizedRouter(),
                           weights={"router": router})
  gates = out["probs"][0, :, 0]
  kept = np.abs(out["y"][0]).sum(-1) > 0
  assert kept.sum() == 4
  assert set(np.flatnonzero(kept)) == set(np.argsort(-gates)[:4])
  first_come = helpers.run_switch(tokens, config, weights={"router": router})
  assert set(np.flatnonzero(np.abs(first_come["y"][0]).sum(-1) > 0)) == {
      0, 1, 2, 3}
