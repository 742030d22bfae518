"""Token groups and expert capacity (paper Eq. 3, Mesh TF ``moe.py``).

Tokens are routed in groups: every group routes independently and every expert
has the same fixed number of slots (its capacity) in every group, so all shapes
are static.  Plain Python, no TensorFlow.
"""
from switch_mtf.errors import ConfigError


def expert_capacity(group_size, num_experts, capacity_factor,
                    min_expert_capacity=4):
  """Slots per expert per group.

  floor(group_size * capacity_factor / num_experts), raised to at least
  ``min_expert_capacity`` and capped at ``group_size`` (an expert can never
  receive more tokens than the group holds).  ``capacity_factor=None`` means
  "drop nothing": every expert gets ``group_size`` slots.

  Args:
    group_size: tokens per group (an int >= 1).
    num_experts: number of experts (an int >= 1).
    capacity_factor: a float > 0, or None for no dropping.
    min_expert_capacity: an int >= 1.

  Returns:
    an int in [1, group_size].
  """
  if group_size < 1:
    raise ConfigError("group_size=%r must be >= 1" % (group_size,))
  if num_experts < 1:
    raise ConfigError("num_experts=%r must be >= 1" % (num_experts,))
  if capacity_factor is None:
    return group_size
  if not capacity_factor > 0:
    raise ConfigError(
        "capacity_factor=%r must be > 0 (the paper uses 1.0-2.0; use "
        "drop_tokens_eval=False for an eval that drops nothing)"
        % (capacity_factor,))
  if min_expert_capacity < 1:
    raise ConfigError(
        "min_expert_capacity=%r must be >= 1" % (min_expert_capacity,))
  # The small epsilon keeps products like 1024 * 1.1 / 8 = 140.8000...2 from
  # flooring differently on different platforms; it never crosses an integer.
  capacity = int(group_size * capacity_factor / num_experts + 1e-9)
  capacity = max(capacity, min_expert_capacity)
  return min(capacity, group_size)


def split_into_groups(num_tokens, max_group_size, mesh_dim_size):
  """Splits ``num_tokens`` into ``num_groups * group_size``.

  The group size is the largest one <= ``max_group_size`` for which the
  number of groups is a multiple of ``mesh_dim_size`` (the number of devices
  the batch is split over), so that each device routes whole groups.  This is
  the rule of Mesh TF's ``_split_into_groups``, except that upstream starts
  its search at floor(num_tokens / max_group_size) groups and so can return
  groups larger than ``group_size`` (96 tokens, group_size 64: one group of
  96).  We start at the ceiling, so groups never exceed ``group_size``.

  Args:
    num_tokens: tokens to route (per outer-batch replica).
    max_group_size: the configured ``group_size``.
    mesh_dim_size: how many ways the batch dimension is split.

  Returns:
    (num_groups, group_size)
  """
  if max_group_size < 1:
    raise ConfigError("group_size=%r must be >= 1" % (max_group_size,))
  if num_tokens % mesh_dim_size != 0:
    raise ConfigError(
        "%d tokens (batch x length) cannot be split over the %d devices of the "
        "batch mesh dimension: make the batch size a multiple of %d"
        % (num_tokens, mesh_dim_size, mesh_dim_size))
  num_groups = max(1, -(-num_tokens // max_group_size))
  while num_groups % mesh_dim_size or num_tokens % num_groups:
    num_groups += 1
  return num_groups, num_tokens // num_groups
