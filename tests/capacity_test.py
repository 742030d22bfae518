"""Expert capacity and token groups (issue test 1, plus the bad values)."""
import pytest

from switch_mtf.moe import capacity
from switch_mtf.errors import ConfigError
from switch_mtf.moe.layers import SwitchConfig


@pytest.mark.parametrize("group,experts,factor,minimum,expected", [
    (1024, 8, 1.25, 4, 160),    # floor(1024 * 1.25 / 8)
    (1024, 32, 1.0, 4, 32),
    (1000, 3, 1.0, 4, 333),     # floors, never rounds up
    (64, 32, 1.0, 4, 4),        # raised to the minimum
    (64, 128, 1.25, 1, 1),      # floor gives 0 -> minimum 1
    (8, 2, 4.0, 4, 8),          # capped at the group size
    (3, 1, 2.0, 4, 3),          # minimum above the group size -> group size
    (1024, 8, None, 4, 1024),   # None: no dropping
])
def test_capacity_formula_and_clamps(group, experts, factor, minimum,
                                     expected):
  assert capacity.expert_capacity(group, experts, factor, minimum) == expected


def test_train_and_eval_factors():
  config = SwitchConfig(num_experts=8, group_size=1024)
  assert config.capacity(1024, train=True) == 160     # 1.25
  assert config.capacity(1024, train=False) == 256    # 2.0
  no_drop = SwitchConfig(num_experts=8, drop_tokens_eval=False)
  assert no_drop.capacity(1024, train=False) == 1024
  assert no_drop.capacity(1024, train=True) == 160


def test_fixed_expert_capacity_replaces_the_factors():
  # Hugging Face's expert_capacity: the same slots in training and eval,
  # capped at the group; drop_tokens_eval=False still drops nothing.
  fixed = SwitchConfig(num_experts=8, expert_capacity=64)
  assert fixed.capacity(512, train=True) == fixed.capacity(512, False) == 64
  assert fixed.capacity(40, train=True) == 40
  assert SwitchConfig(num_experts=8, expert_capacity=64,
                      drop_tokens_eval=False).capacity(512, False) == 512


def test_route_per_sequence_needs_whole_sequences_per_device():
  import helpers  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  config = SwitchConfig(num_experts=2, hidden_size=8, route_per_sequence=True,
                        expert_capacity=2)
  tokens = np.random.RandomState(0).randn(2, 5, 4)
  with pytest.raises(ConfigError, match="route_per_sequence: 2 sequences "
                     "cannot be split over the 5 devices"):
    helpers.run_switch(tokens, config, mesh_shape="batch:5",
                       layout="batch:batch")
  # One group per sequence (not one of all 10 tokens, as group_size 1024
  # would make on one device): 2 slots per expert in each sequence.
  out = helpers.run_switch(tokens, config)
  kept = np.abs(out["y"]).sum(-1) > 0
  choice = out["probs"].argmax(-1)
  for b in range(2):   # the first two tokens of each expert in the sequence
    expected = [(choice[b, :i] == choice[b, i]).sum() < 2 for i in range(5)]
    assert kept[b].tolist() == expected


@pytest.mark.parametrize("tokens,max_group,ways,expected", [
    (4096, 1024, 1, (4, 1024)),
    (4096, 1024, 8, (8, 512)),       # groups must be a multiple of the split
    (96, 64, 1, (2, 48)),            # the largest size <= max that divides
    (100, 64, 4, (4, 25)),
    (16, 1024, 2, (2, 8)),
])
def test_split_into_groups(tokens, max_group, ways, expected):
  assert capacity.split_into_groups(tokens, max_group, ways) == expected


def test_tokens_not_divisible_into_groups():
  with pytest.raises(ConfigError, match="30 tokens.*4 devices"):
    capacity.split_into_groups(30, 8, 4)


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_experts=0), "num_experts=0"),
    (dict(num_experts=2.5), "num_experts=2.5"),
    (dict(capacity_factor_train=0.0), "capacity_factor_train=0.0"),
    (dict(capacity_factor_eval=-1), "capacity_factor_eval=-1"),
    (dict(activation="swish"), "activation='swish'"),
    (dict(dispatch="scatter"), "dispatch='scatter'"),
    (dict(expert_dropout_rate=1.0), "expert_dropout_rate=1.0"),
    (dict(group_size=0), "group_size=0"),
    (dict(expert_capacity=0), "expert_capacity=0"),
])
def test_bad_values_name_the_value(kwargs, message):
  with pytest.raises(ConfigError, match=message.replace(".", r"\.")
                     .replace("(", r"\(")):
    SwitchConfig(**kwargs)
