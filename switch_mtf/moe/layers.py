"""The Switch feed-forward layer: routing, dispatch, experts, combine.

``switch_feed_forward`` is a plain function on mtf tensors (tests and
benchmarks call it directly); ``SwitchFFN`` wraps it as a
``mesh_tensorflow.transformer`` TransformerLayer that can stand in for
``DenseReluDense`` in any layer stack.

Dataflow (dims as in Mesh TF ``moe.py``; ` marks the dim split over devices):

  x           [batch`, length, d_model]   (optionally outer_batch first)
  reshape     [batch`(groups), group, d_model]
  route       -> Routing (float32 inside; combine/dispatch in x.dtype)
  dispatch    [expert_unsplit, batch`, expert_capacity, d_model]
  all-to-all  [experts`, batch_unsplit, expert_capacity, d_model]
  experts     ... expert_hidden (may be split over a model dim) ... d_model
  all-to-all  back, combine -> [batch`, group, d_model]
  reshape     [batch`, length, d_model]

Dropped tokens get exactly 0 from this layer; the residual connection around
it carries them to the next layer unchanged.
"""
import dataclasses
import inspect
import typing

import gin
import mesh_tensorflow as mtf
from mesh_tensorflow.transformer import transformer
import tensorflow.compat.v1 as tf

from switch_mtf.moe import capacity as capacity_lib
from switch_mtf.moe import dispatch as dispatch_lib
from switch_mtf.moe import experts as experts_lib
from switch_mtf.moe import layout as layout_lib
from switch_mtf.moe import router_summaries
from switch_mtf.moe import routing
from switch_mtf.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SwitchConfig:
  """Hyperparameters of a Switch layer (defaults: the paper / Mesh TF).

  Attributes:
    num_experts: experts in the layer.
    hidden_size: d_ff of each expert.
    group_size: tokens per routing group, at most (Mesh TF: 1024).
    capacity_factor_train: capacity factor in training (1.25).
    capacity_factor_eval: capacity factor in eval and inference (2.0).
    min_expert_capacity: capacity is raised to at least this (4).
    drop_tokens_eval: False gives every expert room for the whole group in
      eval, so nothing is ever dropped (costs E x the expert compute).
    activation: "relu" or "gated_gelu" (T5 v1.1 / Table 9) or "gelu".
    expert_dropout_rate: dropout inside the experts, training only (paper
      fine-tuning: 0.4, with 0.1 elsewhere).
    init_scale: truncated-normal fan-in scale of all kernels, router
      included (paper §2.4: 0.1).
    dispatch: "einsum" (the paper's one-hot matmuls, for TPU) or "gather"
      (index-based, for CPU/GPU; the experts then also compute only on the
      slots that hold a token when they can, see
      experts.expert_feed_forward_filled).  Same results.
    summarize_expert_load: in training, also write each expert's share of
      the tokens as its own scalar summary (``router/expert_load_03``), for
      plots of the load over time (off by default: E scalars per layer).
    route_per_sequence: every sequence is one routing group, whatever its
      length (Hugging Face's SwitchTransformers); ``group_size`` is then
      unused.  The batch must split evenly over the batch mesh dimension.
    expert_capacity: a fixed number of slots per expert and group, in
      training and eval alike (Hugging Face's ``expert_capacity``), instead
      of the capacity factors; capped at the group size.  None: factors.
  """
  num_experts: int = 8
  hidden_size: int = 2048
  group_size: int = 1024
  capacity_factor_train: float = 1.25
  capacity_factor_eval: float = 2.0
  min_expert_capacity: int = 4
  drop_tokens_eval: bool = True
  activation: str = "relu"
  expert_dropout_rate: float = 0.0
  init_scale: float = 0.1
  dispatch: str = "einsum"
  summarize_expert_load: bool = False
  route_per_sequence: bool = False
  expert_capacity: typing.Optional[int] = None

  def __post_init__(self):
    if not isinstance(self.num_experts, int) or self.num_experts < 1:
      raise ConfigError("num_experts=%r must be an integer >= 1"
                        % (self.num_experts,))
    if not isinstance(self.hidden_size, int) or self.hidden_size < 1:
      raise ConfigError("hidden_size=%r must be an integer >= 1"
                        % (self.hidden_size,))
    for name in ("capacity_factor_train", "capacity_factor_eval"):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError("%s=%r must be a number > 0 (the paper uses 1.0 to "
                          "2.0)" % (name, value))
    if self.group_size < 1:
      raise ConfigError("group_size=%r must be >= 1" % (self.group_size,))
    if self.min_expert_capacity < 1:
      raise ConfigError("min_expert_capacity=%r must be >= 1"
                        % (self.min_expert_capacity,))
    if not 0.0 <= self.expert_dropout_rate < 1.0:
      raise ConfigError("expert_dropout_rate=%r must be in [0, 1)"
                        % (self.expert_dropout_rate,))
    if not self.init_scale > 0:
      raise ConfigError("init_scale=%r must be > 0" % (self.init_scale,))
    if self.expert_capacity is not None and (
        not isinstance(self.expert_capacity, int) or self.expert_capacity < 1):
      raise ConfigError("expert_capacity=%r must be an integer >= 1, or None "
                        "for the capacity factors" % (self.expert_capacity,))
    experts_lib.check_activation(self.activation)
    if self.dispatch not in dispatch_lib.DISPATCH_IMPLEMENTATIONS:
      raise ConfigError("dispatch=%r is unknown: use one of %s" % (
          self.dispatch, ", ".join(dispatch_lib.DISPATCH_IMPLEMENTATIONS)))

  def max_group_size(self, sequence_tokens):
    """The largest routing group for sequences of ``sequence_tokens``."""
    return sequence_tokens if self.route_per_sequence else self.group_size

  def capacity(self, group_size, train):
    """Expert capacity for a group of ``group_size`` tokens."""
    if not train and not self.drop_tokens_eval:
      factor = None
    elif self.expert_capacity is not None:
      return min(self.expert_capacity, group_size)
    else:
      factor = (self.capacity_factor_train if train
                else self.capacity_factor_eval)
    return capacity_lib.expert_capacity(group_size, self.num_experts, factor,
                                        self.min_expert_capacity)


def switch_feed_forward(x, config, router, train, variable_dtype,
                        nonpadding=None, layout=None, mesh_shape=None,
                        num_microbatches=1, output_dim=None):
  """The Switch layer as a function.

  Args:
    x: ``[(outer_batch,) batch, (length,) ..., d_model]``: the first dim is
      the batch (or ``outer_batch`` for expert replication, then ``batch``).
    config: a SwitchConfig.
    router: a routing.Router.
    train: a boolean.
    variable_dtype: a mtf.VariableDType.
    nonpadding: optional float tensor with x's dims but d_model; 1 = real.
    layout, mesh_shape: the layout rules and mesh shape the graph will be
      lowered with (to choose the number of groups and check divisibility).
    num_microbatches: the aux loss is divided by this.
    output_dim: output Dimension (default: x's last dim).

  Returns:
    (y with x's shape but output_dim, routing.Routing)
  """
  if x.shape.dims[0].name == "outer_batch" and x.shape.dims[0].size == 1:
    # Mesh TF's training graph always has an outer_batch dim (size 1 unless
    # the experts are replicated).  A size-1 lead dim computes nothing but
    # would turn off the filled-slots expert path (and transpose the
    # experts' inputs): route without it, the same numbers.
    inner = x.shape.dims[1:]
    if nonpadding is not None and nonpadding.shape.dims[:1] == x.shape.dims[:1]:
      nonpadding = mtf.reshape(nonpadding, nonpadding.shape.dims[1:])
    y, result = switch_feed_forward(
        mtf.reshape(x, inner), config, router, train, variable_dtype,
        nonpadding=nonpadding, layout=layout, mesh_shape=mesh_shape,
        num_microbatches=num_microbatches, output_dim=output_dim)
    return mtf.reshape(y, x.shape.dims[:1] + y.shape.dims), result
  batch_and_length_dims, model_dim = x.shape.dims[:-1], x.shape.dims[-1]
  output_dim = output_dim or model_dim
  # An "outer_batch" dim replicates the experts (Mesh TF convention).  We add
  # no size-1 outer dim when there is none: leading dims before "experts"
  # make the experts' matmuls transpose their inputs.
  if x.shape.dims[0].name == "outer_batch":
    lead, batch_dim = x.shape.dims[:1], x.shape.dims[1]
  else:
    lead, batch_dim = [], x.shape.dims[0]
  num_tokens = mtf.Shape(batch_and_length_dims).size // mtf.Shape(lead).size

  experts_dim = mtf.Dimension("experts", config.num_experts)
  hidden_dim = mtf.Dimension("expert_hidden", config.hidden_size)
  batch_ways = layout_lib.split_ways(layout, mesh_shape, batch_dim)
  sequence_tokens = num_tokens // batch_dim.size
  num_groups, group_size = capacity_lib.split_into_groups(
      num_tokens, config.max_group_size(sequence_tokens), batch_ways)
  if config.route_per_sequence and group_size != sequence_tokens:
    raise ConfigError(
        "SwitchFFN.route_per_sequence: %d sequences cannot be split over the "
        "%d devices of the batch mesh dimension: make the batch size a "
        "multiple of %d" % (batch_dim.size, batch_ways, batch_ways))
  groups_dim = mtf.Dimension(batch_dim.name, num_groups)
  group_dim = mtf.Dimension("group", group_size)
  capacity_dim = mtf.Dimension(
      "expert_capacity", config.capacity(group_size, train))
  experts_unsplit_dim = mtf.Dimension("expert_unsplit", config.num_experts)
  batch_unsplit_dim = mtf.Dimension("batch_unsplit", num_groups)
  layout_lib.check_tensors(layout, mesh_shape, {
      "routed tokens": lead + [groups_dim, group_dim, model_dim],
      "expert inputs": lead + [experts_dim, batch_unsplit_dim, capacity_dim,
                               model_dim],
      "expert hidden": lead + [experts_dim, batch_unsplit_dim, capacity_dim,
                               hidden_dim],
      "wi kernel": [experts_dim, model_dim, hidden_dim],
      "wo kernel": [experts_dim, hidden_dim, output_dim],
  })

  grouped_dims = lead + [groups_dim, group_dim]
  inputs = mtf.reshape(x, grouped_dims + [model_dim])
  if nonpadding is not None:
    nonpadding = mtf.zeros(x.mesh, batch_and_length_dims,
                           dtype=nonpadding.dtype) + nonpadding
    nonpadding = mtf.reshape(nonpadding, grouped_dims)

  result = router.route(
      inputs, experts_unsplit_dim, capacity_dim, train, variable_dtype,
      nonpadding=nonpadding, init_scale=config.init_scale,
      num_microbatches=num_microbatches)
  dispatcher = dispatch_lib.make_dispatcher(
      config.dispatch, result, groups_dim, experts_dim, batch_unsplit_dim)
  expert_inputs = dispatcher.dispatch(inputs)
  compute_filled_only = (
      config.dispatch == "gather" and not lead
      and layout_lib.split_ways(layout, mesh_shape, model_dim) == 1
      and layout_lib.split_ways(layout, mesh_shape, hidden_dim) == 1
      and not (train and config.expert_dropout_rate > 0))
  if compute_filled_only:
    expert_outputs = experts_lib.expert_feed_forward_filled(
        expert_inputs, dispatcher.filled_slots(), experts_dim, hidden_dim,
        output_dim, config.activation, variable_dtype, config.init_scale)
  else:
    expert_outputs = experts_lib.expert_feed_forward(
        expert_inputs, experts_dim, hidden_dim, output_dim, config.activation,
        config.expert_dropout_rate, train, variable_dtype, config.init_scale)
  outputs = dispatcher.combine(expert_outputs)
  outputs = mtf.reshape(outputs, batch_and_length_dims + [output_dim])
  router_summaries.record(x.mesh.graph, tf.get_variable_scope().name,
                          result.metrics)
  if train:
    router_summaries.write(result.metrics, config.summarize_expert_load)
  return outputs, result


def takes_switch_config(defaults=None, more_keywords=False):
  """A decorator: gives ``init(self, *, router=None, **settings)`` the
  signature ``(self, *, <SwitchConfig's fields>, router=None)`` (and
  ``**kwargs`` with ``more_keywords``), the fields' defaults from
  SwitchConfig unless ``defaults`` (a dict) says otherwise, so that gin
  knows (and checks) every setting while the defaults are written once.
  ``init`` applies ``switch_config(settings, defaults)`` itself."""
  defaults = defaults or {}

  def decorate(init):
    parameter = inspect.Parameter
    init.__signature__ = inspect.Signature(
        [parameter("self", parameter.POSITIONAL_OR_KEYWORD)]
        + [parameter(field.name, parameter.KEYWORD_ONLY,
                     default=defaults.get(field.name, field.default))
           for field in dataclasses.fields(SwitchConfig)]
        + [parameter("router", parameter.KEYWORD_ONLY, default=None)]
        + ([parameter("kwargs", parameter.VAR_KEYWORD)]
           if more_keywords else []))
    return init
  return decorate


def switch_config(settings, defaults=None):
  """(SwitchConfig of the SwitchConfig fields in ``settings``, the other
  settings), the fields' defaults from ``defaults`` first."""
  names = {field.name for field in dataclasses.fields(SwitchConfig)}
  chosen = dict(defaults or {})
  chosen.update({k: v for k, v in settings.items() if k in names})
  return SwitchConfig(**chosen), {k: v for k, v in settings.items()
                                  if k not in names}


def make_router(router, owner):
  """``router``: None (SwitchRouter()), a name, or a routing.Router."""
  if router is None:
    return routing.SwitchRouter()
  if isinstance(router, str):
    router = routing.make_router(router)
  if not isinstance(router, routing.Router):
    raise ConfigError("%s.router=%r is not a router: use one of %s or a "
                      "routing.Router" % (owner, router,
                                          ", ".join(routing.ROUTERS)))
  return router


@gin.configurable
class SwitchFFN(transformer.TransformerLayer):
  """Switch feed-forward layer for ``mesh_tensorflow.transformer`` stacks.

  Use it where a stack would have ``DenseReluDense``, e.g. in gin:
    encoder/transformer.make_layer_stack.layers = [
        @transformer_layers.SelfAttention, @switch_mtf.moe.layers.SwitchFFN, ...]

  In training, the router loss (alpha x aux loss + z-loss coefficient x
  z-loss) is appended to ``context.losses``, so it is summed over layers and
  becomes part of the total loss, as in Mesh TF.
  """

  @takes_switch_config()
  def __init__(self, *, router=None, **settings):
    # ``settings``: SwitchConfig's fields, declared (with their defaults)
    # there only; gin reads them from this method's signature.
    self.config = SwitchConfig(**settings)
    self.router = make_router(router, "SwitchFFN")

  def call(self, context, x):
    if context.model.ensemble_dim:
      raise ConfigError("SwitchFFN does not support ensembles: remove the "
                        "ensemble dimension or use DenseReluDense")
    # Incremental decoding feeds one position at a time without a length dim.
    has_length = context.length_dim in x.shape.dims
    if not has_length:
      x_shape = x.shape
      x = mtf.reshape(x, x_shape.dims[:-1] + [mtf.Dimension("length", 1)]
                      + x_shape.dims[-1:])
    nonpadding = context.nonpadding if has_length else None
    if not isinstance(nonpadding, mtf.Tensor):  # None, or 1 for "no padding"
      nonpadding = None
    y, result = switch_feed_forward(
        x, self.config, self.router, context.train, context.variable_dtype,
        nonpadding=nonpadding, layout=context.model.layout,
        mesh_shape=context.model.mesh_shape,
        num_microbatches=context.num_microbatches or 1)
    if context.train and context.losses is not None:
      context.losses.append(mtf.cast(result.loss, context.activation_dtype))
    if not has_length:
      y = mtf.reshape(y, x_shape)
    return y
