"""Routers: which expert(s) each token goes to, and the router's losses.

One interface for every routing policy.  ``Router.route`` runs the steps all
policies share, written once:

  1. a float32 copy of the input, whatever the activation dtype (paper §2.4,
     "selective precision"); exploration noise on that copy only;
  2. router logits ``x · W_r`` (no bias) and a softmax over experts;
  3. the top-1 choice (argmax, or a sample from the softmax);
  4. the load-balancing loss (Eq. 4-6) and the router z-loss;
  5. router health metrics.

Subclasses only decide how tokens get slots in the experts' buffers
(``_assign``): first-come Switch routing, batch-prioritized routing,
No-Token-Left-Behind (Appendix B) and top-2 MoE.  The result is a ``Routing``:
a list of ``ExpertChoice`` (one per choice a token can get) from which both
dispatch implementations (see ``dispatch.py``) are built.

Tensors here have the dims ``[(outer_batch,) batch, group(, expert_unsplit)]``,
where ``batch`` counts groups (it keeps the batch name so that it is split like
the batch) and ``group`` indexes tokens inside a group.
"""
import dataclasses
import typing

import gin
import mesh_tensorflow as mtf
import tensorflow.compat.v1 as tf

from switch_mtf.errors import ConfigError

EXPLORATION_POLICIES = ("argmax", "input_jitter", "input_dropout", "sample")
SECOND_EXPERT_POLICIES = ("all", "none", "threshold", "random")


@dataclasses.dataclass
class ExpertChoice:
  """One expert assignment per token.  Shapes ``[(outer_batch,) batch, group]``.

  Attributes:
    expert_index: int32, the expert this choice picked.
    position: int32, the token's slot in that expert's buffer (only meaningful
      where ``kept`` is 1).
    kept: float32, 1.0 where the token got the slot, 0.0 where it was dropped
      (over capacity), is padding, or had no such choice.
    gate: float32, the combine weight: the router probability of the expert
      (renormalized for top-2), times ``kept``.
  """
  expert_index: mtf.Tensor
  position: mtf.Tensor
  kept: mtf.Tensor
  gate: mtf.Tensor


@dataclasses.dataclass
class Routing:
  """What a router decided for one layer call."""
  choices: typing.List[ExpertChoice]
  experts_dim: mtf.Dimension       # "expert_unsplit": experts, not split
  capacity_dim: mtf.Dimension      # "expert_capacity"
  group_dim: mtf.Dimension         # "group"
  activation_dtype: tf.DType
  logits: mtf.Tensor               # float32 [..., group, expert_unsplit]
  probs: mtf.Tensor                # float32 softmax of logits
  loss: mtf.Tensor                 # scalar, weighted: goes into the total loss
  metrics: typing.Dict[str, mtf.Tensor]

  def _sum_over_choices(self, weight_fn):
    total = None
    for choice in self.choices:
      term = (weight_fn(choice)
              * mtf.one_hot(choice.expert_index, self.experts_dim)
              * mtf.one_hot(choice.position, self.capacity_dim))
      total = term if total is None else total + term
    return total

  def combine_tensor(self):
    """``[(outer_batch,) batch, group, expert_unsplit, expert_capacity]``.

    Built in float32, returned in the activation dtype (paper §2.4).
    """
    return mtf.cast(self._sum_over_choices(lambda c: c.gate),
                    self.activation_dtype)

  def dispatch_tensor(self):
    """Binary version of ``combine_tensor``, in the activation dtype."""
    return mtf.cast(self._sum_over_choices(lambda c: c.kept),
                    self.activation_dtype)


def exclusive_cumsum(x, dim):
  """Exclusive cumulative sum of ``x`` along ``dim`` (never split).

  ``mtf.cumsum`` multiplies by a ``[dim, dim]`` triangular matrix, which costs
  O(group_size^2) per group; a slice-wise ``tf.cumsum`` is linear.  The group
  dimension is never split across devices, so the slice-wise op is exact.
  """
  axis = x.shape.dims.index(dim)
  return mtf.slicewise(
      lambda t: tf.cumsum(t, axis=axis, exclusive=True), [x],
      output_shape=x.shape, output_dtype=x.dtype,
      splittable_dims=[d for d in x.shape.dims if d != dim],
      grad_function=0, name="exclusive_cumsum")


def positions_by_priority(mask, priority, group_dim):
  """Slots by descending ``priority`` instead of by position in the group.

  Args:
    mask: float ``[..., group, expert_unsplit]``, one-hot of the chosen expert.
    priority: float ``[..., group]``, same leading dims and order as ``mask``.
    group_dim: the group Dimension.

  Returns:
    float ``[..., group, expert_unsplit]``: for each token, the number of
    tokens choosing the same expert with a higher priority (ties: earlier
    position first).
  """
  axis = mask.shape.dims.index(group_dim)
  if priority.shape.dims != mask.shape.dims[:-1]:
    raise ValueError("priority dims %s must lead mask dims %s"
                     % (priority.shape, mask.shape))

  def _fn(m, p):
    order = tf.argsort(-p, axis=axis, stable=True)
    m_sorted = tf.gather(m, order, axis=axis, batch_dims=axis)
    pos_sorted = tf.cumsum(m_sorted, axis=axis, exclusive=True)
    inverse = tf.argsort(order, axis=axis, stable=True)
    return tf.gather(pos_sorted, inverse, axis=axis, batch_dims=axis)

  return mtf.slicewise(
      _fn, [mask, priority], output_shape=mask.shape, output_dtype=mask.dtype,
      splittable_dims=[d for d in mask.shape.dims[:axis]],
      grad_function=0, name="positions_by_priority")


def _masked_mean(x, real, total_real):
  return mtf.reduce_sum(x * real) / total_real


class Router(object):
  """The routing steps every policy shares; subclasses implement ``_assign``.

  Args:
    policy_train: exploration policy in training, one of
      ``EXPLORATION_POLICIES``.  ``input_jitter`` (the paper's choice)
      multiplies the router input by Uniform(1-eps, 1+eps); ``input_dropout``
      applies dropout to the router input; ``sample`` draws the expert from the
      softmax; ``argmax`` takes the top expert.
    policy_eval: the same, for evaluation and inference.  Jitter and dropout
      never apply outside training, so only ``sample`` differs from argmax.
    jitter_eps: epsilon of the multiplicative jitter (paper: 1e-2).
    input_dropout_rate: dropout rate of the ``input_dropout`` policy.
    temperature: softmax temperature of the ``sample`` policy.
    aux_loss_coef: alpha of the load-balancing loss (paper: 1e-2).
    z_loss_coef: weight of the router z-loss (ST-MoE), independent of alpha.
      Upstream Mesh TF folds it under ``loss_coef``; we don't.
    kernel_init_scale: truncated-normal fan-in scale of the router kernel;
      None (the default) takes the layer's ``init_scale`` (paper §2.4: one
      scale for every weight).
  """

  def __init__(self,
               policy_train="input_jitter",
               policy_eval="argmax",
               jitter_eps=1e-2,
               input_dropout_rate=0.1,
               temperature=1.0,
               aux_loss_coef=1e-2,
               z_loss_coef=0.0,
               kernel_init_scale=None):
    for name, policy in (("policy_train", policy_train),
                         ("policy_eval", policy_eval)):
      if policy not in EXPLORATION_POLICIES:
        raise ConfigError("%s=%r is not a routing policy: use one of %s"
                          % (name, policy, ", ".join(EXPLORATION_POLICIES)))
    if not 0 <= jitter_eps < 1:
      raise ConfigError("jitter_eps=%r must be in [0, 1)" % (jitter_eps,))
    if not 0 <= input_dropout_rate < 1:
      raise ConfigError(
          "input_dropout_rate=%r must be in [0, 1)" % (input_dropout_rate,))
    if not temperature > 0:
      raise ConfigError("temperature=%r must be > 0" % (temperature,))
    if aux_loss_coef < 0 or z_loss_coef < 0:
      raise ConfigError("aux_loss_coef=%r and z_loss_coef=%r must be >= 0"
                        % (aux_loss_coef, z_loss_coef))
    self.policy_train = policy_train
    self.policy_eval = policy_eval
    self.jitter_eps = jitter_eps
    self.input_dropout_rate = input_dropout_rate
    self.temperature = temperature
    self.aux_loss_coef = aux_loss_coef
    self.z_loss_coef = z_loss_coef
    if kernel_init_scale is not None and not kernel_init_scale > 0:
      raise ConfigError("kernel_init_scale=%r must be > 0 (or None: the "
                        "layer's init_scale)" % (kernel_init_scale,))
    self.kernel_init_scale = kernel_init_scale

  def route(self, inputs, experts_dim, capacity_dim, train, variable_dtype,
            nonpadding=None, init_scale=0.1, num_microbatches=1,
            name="router"):
    """Routes ``inputs`` ``[(outer_batch,) batch, group, d_model]``.

    Args:
      inputs: the tokens, in groups, in the activation dtype.
      experts_dim: Dimension "expert_unsplit" (number of experts).
      capacity_dim: Dimension "expert_capacity" (slots per expert per group).
      train: a boolean.
      variable_dtype: the model's mtf.VariableDType (its activation dtype is
        replaced by float32 for the router).
      nonpadding: optional float ``[(outer_batch,) batch, group]``, 1 for real
        tokens and 0 for padding.  Padding is never routed and never counted
        in the losses or metrics.  None: every token is real.
      init_scale: truncated-normal fan-in scale of the router kernel (0.1).
      num_microbatches: the loss is divided by this (it is summed over
        microbatches).
      name: variable scope of the router kernel.

    Returns:
      a Routing.
    """
    group_dim, model_dim = inputs.shape.dims[-2:]
    policy = self.policy_train if train else self.policy_eval
    # Selective precision: every router op below runs in float32.
    router_inputs = mtf.to_float(inputs)
    if train and policy == "input_jitter":
      router_inputs = mtf.layers.multiplicative_jitter(
          router_inputs, self.jitter_eps)
    elif train and policy == "input_dropout":
      router_inputs = mtf.dropout(router_inputs, is_training=True,
                                  rate=self.input_dropout_rate)
    logits = mtf.layers.dense(
        router_inputs, experts_dim, reduced_dims=[model_dim], use_bias=False,
        variable_dtype=mtf.VariableDType(variable_dtype.master_dtype,
                                         variable_dtype.slice_dtype,
                                         tf.float32),
        kernel_initializer=mtf.layers.VarianceScalingInitializer(
            scale=(init_scale if self.kernel_init_scale is None
                   else self.kernel_init_scale)),
        name=name)
    probs = mtf.softmax(logits, reduced_dim=experts_dim)
    if policy == "sample":
      index = mtf.sample_with_temperature(logits, experts_dim,
                                          temperature=self.temperature)
      gate = mtf.reduce_sum(probs * mtf.one_hot(index, experts_dim),
                            reduced_dim=experts_dim)
    else:
      gate, index = mtf.top_1(probs, reduced_dim=experts_dim)

    if nonpadding is None:
      real = mtf.ones(inputs.mesh, index.shape, dtype=tf.float32)
    else:
      real = mtf.cast(mtf.greater(mtf.to_float(nonpadding), 0.5), tf.float32)

    choices = self._assign(probs, index, gate, real, capacity_dim, train)
    aux_loss = load_balancing_loss(probs, index, real, experts_dim, group_dim)
    z_loss = router_z_loss(logits, real, experts_dim)
    loss = self.aux_loss_coef * aux_loss
    if self.z_loss_coef:
      loss += self.z_loss_coef * z_loss
    if num_microbatches and num_microbatches > 1:
      loss /= float(num_microbatches)
    metrics = router_metrics(probs, index, gate, real, choices, experts_dim)
    metrics.update(aux_loss=aux_loss, z_loss=z_loss)
    return Routing(choices=choices, experts_dim=experts_dim,
                   capacity_dim=capacity_dim, group_dim=group_dim,
                   activation_dtype=inputs.dtype, logits=logits, probs=probs,
                   loss=loss, metrics=metrics)

  def _assign(self, probs, index, gate, real, capacity_dim, train):
    """Gives tokens slots.  Returns a list of ExpertChoice."""
    raise NotImplementedError


def load_balancing_loss(probs, index, real, experts_dim, group_dim):
  """Paper Eq. 4-6 without alpha: N · Σ_i f_i · P_i, per group, then averaged.

  f_i is the fraction of the group's real tokens whose top choice (before
  capacity) is expert i; P_i the mean router probability of expert i over the
  same tokens.  Padding counts in neither.  Groups without any real token are
  left out of the average.  Under uniform routing the value is exactly 1.
  """
  mask = mtf.one_hot(index, experts_dim) * real
  count = mtf.reduce_sum(real, reduced_dim=group_dim)
  denom = mtf.maximum(count, 1.0)
  f = mtf.reduce_sum(mask, reduced_dim=group_dim) / denom
  p = mtf.reduce_sum(probs * real, reduced_dim=group_dim) / denom
  per_group = mtf.reduce_sum(f * p, reduced_dim=experts_dim) * float(
      experts_dim.size)
  nonempty = mtf.cast(mtf.greater(count, 0.0), tf.float32)
  return (mtf.reduce_sum(per_group * nonempty)
          / mtf.maximum(mtf.reduce_sum(nonempty), 1.0))


def router_z_loss(logits, real, experts_dim):
  """Mean over real tokens of logsumexp(logits)^2 (ST-MoE)."""
  log_z = mtf.reduce_logsumexp(logits, reduced_dim=experts_dim)
  total = mtf.maximum(mtf.reduce_sum(real), 1.0)
  return _masked_mean(mtf.square(log_z), real, total)


def router_metrics(probs, index, gate, real, choices, experts_dim):
  """Router health, as float32 scalars (and one [experts] vector)."""
  total = mtf.maximum(mtf.reduce_sum(real), 1.0)
  kept_any = None
  for choice in choices:
    kept_any = choice.kept if kept_any is None else kept_any + choice.kept
  kept_any = mtf.minimum(kept_any, 1.0)
  entropy = mtf.reduce_sum(-probs * mtf.log(probs + 1e-9),
                           reduced_dim=experts_dim)
  load = mtf.reduce_sum(mtf.one_hot(index, experts_dim) * real,
                        output_shape=[experts_dim]) / total
  return {
      "fraction_dropped": 1.0 - _masked_mean(kept_any, real, total),
      "router_entropy": _masked_mean(entropy, real, total),
      "mean_top1_gate": _masked_mean(gate, real, total),
      "expert_load": load,
  }


def _slots_first_come(mask, capacity_dim, group_dim, experts_dim, real,
                      offset=None, priority=None):
  """Position of each token in its chosen expert and whether it fits.

  Args:
    mask: float ``[..., group, expert_unsplit]`` one-hot of each token's
      expert, zero for tokens that do not take part.
    capacity_dim: slots per expert.
    group_dim: the group Dimension.
    experts_dim: the expert Dimension.
    real: float ``[..., group]``, tokens that may be kept.
    offset: optional float ``[..., expert_unsplit]``: slots already taken.
    priority: optional ``[..., group]``: fill by descending priority instead
      of by position.

  Returns:
    (position int32 [..., group], kept float32 [..., group])
  """
  if priority is None:
    before = exclusive_cumsum(mask, group_dim)
  else:
    before = positions_by_priority(mask, priority, group_dim)
  if offset is not None:
    before += offset
  position = mtf.reduce_sum(before * mask, reduced_dim=experts_dim)
  takes_part = mtf.reduce_sum(mask, reduced_dim=experts_dim)
  kept = (mtf.cast(mtf.less(position, float(capacity_dim.size)), tf.float32)
          * takes_part * real)
  return mtf.to_int32(position), kept


@gin.configurable
class SwitchRouter(Router):
  """Top-1 Switch routing: slots first-come by position in the group.

  This is the paper's router (exclusive cumsum, see the errata in
  ``paper_facts.md``: the printed pseudocode's inclusive cumsum would waste
  one slot per expert).
  """

  def _priority(self, gate):
    """Order in which tokens take slots: None = by position in the group."""
    del gate
    return None

  def _assign(self, probs, index, gate, real, capacity_dim, train):
    experts_dim = probs.shape.dims[-1]
    group_dim = index.shape.dims[-1]
    mask = mtf.one_hot(index, experts_dim) * real
    position, kept = _slots_first_come(mask, capacity_dim, group_dim,
                                       experts_dim, real,
                                       priority=self._priority(gate))
    return [ExpertChoice(index, position, kept, gate * kept)]


@gin.configurable
class BatchPrioritizedRouter(SwitchRouter):
  """Top-1 routing where, under overflow, the tokens with the highest gate
  keep their slots (instead of the earliest ones).  Riquelme et al. 2021;
  Mesh TF's ``switch_max`` and flaxformer's ``batch_prioritized_routing``.

  Note: in a decoder this lets later tokens take slots from earlier ones, so
  a token's output can depend on future tokens of the same group.
  """

  def _priority(self, gate):
    return gate


@gin.configurable
class NoTokenLeftBehindRouter(Router):
  """No-Token-Left-Behind (paper Appendix B).

  Stage 1 is Switch routing.  Tokens that overflowed are then offered to their
  2nd choice, then 3rd, ..., up to ``max_choices``, each time taking the
  expert's next free slot if it has one.  The combine weight is the router
  probability of the expert the token finally got.  The paper found no
  quality gain from it; it is here to reproduce that.
  """

  def __init__(self, max_choices=4, **kwargs):
    super(NoTokenLeftBehindRouter, self).__init__(**kwargs)
    if max_choices < 1:
      raise ConfigError("max_choices=%r must be >= 1" % (max_choices,))
    self.max_choices = max_choices

  def _assign(self, probs, index, gate, real, capacity_dim, train):
    experts_dim = probs.shape.dims[-1]
    group_dim = index.shape.dims[-1]
    remaining = real
    filled = None
    candidates = probs
    choices = []
    for k in range(min(self.max_choices, experts_dim.size)):
      if k:
        gate, index = mtf.top_1(candidates, reduced_dim=experts_dim)
      one_hot = mtf.one_hot(index, experts_dim)
      candidates *= 1.0 - one_hot
      mask = one_hot * remaining
      position, kept = _slots_first_come(mask, capacity_dim, group_dim,
                                         experts_dim, remaining, offset=filled)
      taken = mtf.reduce_sum(one_hot * kept, reduced_dim=group_dim)
      filled = taken if filled is None else filled + taken
      remaining *= 1.0 - kept
      choices.append(ExpertChoice(index, position, kept, gate * kept))
    return choices


@gin.configurable
class Top2Router(Router):
  """Top-2 MoE routing (the paper's MoE baseline; Mesh TF ``_top_2_gating``).

  The two gates are renormalized to sum to 1.  Whether a token also goes to
  its second expert follows ``second_policy_*``: ``all``, ``none``,
  ``threshold`` (if the renormalized 2nd gate > threshold) or ``random``
  (with probability min(1, gate_2 / threshold)).  Second choices take slots
  after all first choices of the group.  The load-balancing loss uses the
  first choice only.  Upstream's eval default is ``random``; ours is ``all``
  so that evaluation is deterministic.
  """

  def __init__(self, second_policy_train="random", second_policy_eval="all",
               second_threshold=0.2, **kwargs):
    super(Top2Router, self).__init__(**kwargs)
    for name, policy in (("second_policy_train", second_policy_train),
                         ("second_policy_eval", second_policy_eval)):
      if policy not in SECOND_EXPERT_POLICIES:
        raise ConfigError("%s=%r is not a second-expert policy: use one of %s"
                          % (name, policy, ", ".join(SECOND_EXPERT_POLICIES)))
    if not second_threshold > 0:
      raise ConfigError(
          "second_threshold=%r must be > 0" % (second_threshold,))
    self.second_policy_train = second_policy_train
    self.second_policy_eval = second_policy_eval
    self.second_threshold = second_threshold

  def _assign(self, probs, index, gate, real, capacity_dim, train):
    experts_dim = probs.shape.dims[-1]
    group_dim = index.shape.dims[-1]
    one_hot_1 = mtf.one_hot(index, experts_dim)
    gate_2, index_2 = mtf.top_1(probs * (1.0 - one_hot_1),
                                reduced_dim=experts_dim)
    denom = gate + gate_2 + 1e-9
    gate_1, gate_2 = gate / denom, gate_2 / denom

    policy = self.second_policy_train if train else self.second_policy_eval
    if policy == "all":
      use_2 = real
    elif policy == "none":
      use_2 = real * 0.0
    elif policy == "threshold":
      use_2 = real * mtf.cast(mtf.greater(gate_2, self.second_threshold),
                              tf.float32)
    else:  # random
      draw = mtf.random_uniform(gate_2.mesh, gate_2.shape)
      use_2 = real * mtf.cast(
          mtf.less(draw, gate_2 / self.second_threshold), tf.float32)

    mask_1 = one_hot_1 * real
    position_1, kept_1 = _slots_first_come(mask_1, capacity_dim, group_dim,
                                           experts_dim, real)
    taken_1 = mtf.reduce_sum(one_hot_1 * kept_1, reduced_dim=group_dim)
    mask_2 = mtf.one_hot(index_2, experts_dim) * use_2
    position_2, kept_2 = _slots_first_come(mask_2, capacity_dim, group_dim,
                                           experts_dim, use_2, offset=taken_1)
    return [ExpertChoice(index, position_1, kept_1, gate_1 * kept_1),
            ExpertChoice(index_2, position_2, kept_2, gate_2 * kept_2)]


ROUTERS = {
    "switch": SwitchRouter,
    "batch_prioritized": BatchPrioritizedRouter,
    "ntlb": NoTokenLeftBehindRouter,
    "top_2": Top2Router,
}


def make_router(kind="switch", **kwargs):
  """Builds a router by name (one of ``ROUTERS``)."""
  if kind not in ROUTERS:
    raise ConfigError("router=%r is unknown: use one of %s"
                      % (kind, ", ".join(ROUTERS)))
  return ROUTERS[kind](**kwargs)
