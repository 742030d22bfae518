"""Parameters, FLOPs, capacity and memory of a gin-configured model, without
building the TensorFlow graph.

The model is built as Mesh TF Python objects (``models.build_model``: layer
stacks, layers and their hyperparameters, no TensorFlow ops) and each layer's
variables are listed from its hyperparameters.  A test checks the list
against the variables of the real graph for the small presets.

FLOPs follow Kaplan et al. (2020), as the paper's Table 9 does (footnote 7):
forward pass, 2 FLOPs per multiply-add of every weight a token uses (one
expert per Switch layer, two for top-2), plus 2 x context x (heads x d_kv)
per attention layer for the attention scores.  Router FLOPs are reported
apart (``router_flops_per_token``): FLOP-matched models differ only there.
For an encoder-decoder, ``flops_per_token`` is the FLOPs per sequence divided
by the input plus target length.
"""
import dataclasses
import functools
import typing

import mesh_tensorflow as mtf
from mesh_tensorflow.transformer import transformer_layers

from switch_mtf.moe import attention as attention_lib
from switch_mtf.moe import capacity as capacity_lib
from switch_mtf.moe import layers
from switch_mtf.moe import layout as layout_lib
from switch_mtf.moe import models
from switch_mtf.moe import routing
from switch_mtf.moe import variable_names as var_names
from switch_mtf.errors import ConfigError


@dataclasses.dataclass
class Variable:
  name: str
  dims: typing.List[mtf.Dimension]

  @property
  def size(self):
    return mtf.Shape(self.dims).size


@dataclasses.dataclass
class StackCount:
  """What one stack (encoder or decoder) holds and computes per token."""
  variables: typing.List[Variable]
  flops_per_token: int = 0          # weights and attention, routers excluded
  router_flops_per_token: int = 0
  attention_layers: int = 0
  cross_attention_layers: int = 0
  switch_layers: typing.List[layers.SwitchFFN] = dataclasses.field(
      default_factory=list)
  attention_width: int = 0          # heads x d_kv of the attention layers


def _dim(name, size):
  return mtf.Dimension(name, size)


def _attention_variables(layer, scope, model_dim, shared_biases):
  """q, k, v, o (and relative position biases) of an attention layer.

  With ``combine_dims`` (the default) Mesh TF stores the heads and d_kv
  dimensions of each projection as one dimension.
  """
  kv = layer.key_value_size
  heads, memory_heads = layer.num_heads, layer.num_memory_heads or (
      layer.num_heads)
  if layer.combine_dims:
    q_dims = [_dim("heads", heads * kv)]
    kv_dims = [_dim("heads", memory_heads * kv)]
  else:
    q_dims = [_dim("heads", heads), _dim("d_kv", kv)]
    kv_dims = [_dim("heads", memory_heads), _dim("d_kv", kv)]
  name = functools.partial(var_names.attention_variable, scope)
  out = [Variable(name("q"), [model_dim] + q_dims),
         Variable(name("k"), [model_dim] + kv_dims)]
  if not layer.shared_kv:
    out.append(Variable(name("v"), [model_dim] + kv_dims))
  out.append(Variable(name("o"), q_dims + [model_dim]))
  kind = layer.relative_attention_type
  bias = Variable(name(var_names.RELATIVE_BIAS),
                  [_dim("heads", heads),
                   _dim("buckets", layer.relative_attention_num_buckets)])
  if isinstance(layer, transformer_layers.EncDecAttention) or kind is None:
    pass
  elif kind == "bias":
    out.append(bias)
  elif kind == "bias_shared":
    if not shared_biases:  # created by the stack's first attention layer
      shared_biases.append(bias)
      out.append(bias)
  else:
    raise ConfigError("accounting does not support relative_attention_type="
                      "%r" % (kind,))
  return out


def _ffn_variables(hidden, activation, scope, model_dim, expert_dims=()):
  factors = len(activation) if isinstance(activation, (list, tuple)) else 1
  hidden_dim = _dim("d_ff" if not expert_dims else "expert_hidden", hidden)
  out = [Variable(var_names.ffn_kernel(scope, n),
                  list(expert_dims) + [model_dim, hidden_dim])
         for n in var_names.ffn_inputs(factors)]
  out.append(Variable(var_names.ffn_kernel(scope, "wo"),
                      list(expert_dims) + [hidden_dim, model_dim]))
  return out


def _switch_variables(config, scope, model_dim, output_dim):
  """Router and expert kernels of a Switch layer, and FLOPs of one expert."""
  experts = _dim("experts", config.num_experts)
  weights = _ffn_variables(
      config.hidden_size, layers.experts_lib.ACTIVATIONS[config.activation],
      scope, model_dim, [experts])
  weights[-1] = Variable(weights[-1].name, weights[-1].dims[:-1] + [output_dim])
  router = Variable(var_names.router_kernel(scope),
                    [model_dim, _dim("expert_unsplit", config.num_experts)])
  per_expert = sum(w.size for w in weights) // config.num_experts
  return [router] + weights, 2 * per_expert


def count_stack(stack, model_dim):
  """Variables (named as in the graph) and per-token FLOPs of one
  Unitransformer's layer stack."""
  result = StackCount(variables=[])
  shared_biases = []
  layer_stack = stack.layer_stack
  for index, layer in enumerate(layer_stack.layers):
    scope = "%s/%s" % (stack.name, layer.name or "layer_%03d" % index)
    result.variables.append(Variable(var_names.norm_scale(scope),
                                     [model_dim]))
    if isinstance(layer, layers.SwitchFFN):
      weights, expert_flops = _switch_variables(
          layer.config, var_names.child_scope(scope, var_names.SWITCH_FFN),
          model_dim, model_dim)
      result.variables += weights
      chosen = 2 if isinstance(layer.router, routing.Top2Router) else 1
      result.flops_per_token += expert_flops * chosen
      result.router_flops_per_token += (
          2 * model_dim.size * layer.config.num_experts)
      result.switch_layers.append(layer)
    elif isinstance(layer, attention_lib.SwitchSelfAttention):
      attn = var_names.child_scope(scope, var_names.SWITCH_ATTENTION)
      combined = _dim("heads", layer.num_heads * layer.key_value_size)
      for part in ("q_experts", "kv_experts"):
        weights, expert_flops = _switch_variables(
            layer.config, var_names.child_scope(attn, part), model_dim,
            combined)
        result.variables += weights
        result.flops_per_token += expert_flops
        result.router_flops_per_token += (
            2 * model_dim.size * layer.config.num_experts)
      result.variables.append(Variable(var_names.attention_variable(attn, "o"),
                                       [combined, model_dim]))
      result.flops_per_token += 2 * combined.size * model_dim.size
      biases = [v for v in _attention_variables(layer, attn, model_dim,
                                                shared_biases)
                if v.name.endswith(var_names.RELATIVE_BIAS)]
      result.variables += biases
      result.attention_width = combined.size
      result.attention_layers += 1
    elif isinstance(layer, transformer_layers.DenseReluDense):
      if layer.use_bias:
        raise ConfigError("accounting does not support DenseReluDense biases")
      weights = _ffn_variables(
          layer.hidden_size, layer.activation,
          var_names.child_scope(scope, var_names.DENSE_FFN), model_dim)
      result.variables += weights
      result.flops_per_token += 2 * sum(w.size for w in weights)
    elif isinstance(layer, transformer_layers.SelfAttention):
      cross = isinstance(layer, transformer_layers.EncDecAttention)
      name = (var_names.CROSS_ATTENTION if cross
              else var_names.SELF_ATTENTION)
      weights = _attention_variables(
          layer, var_names.child_scope(scope, name), model_dim, shared_biases)
      result.variables += weights
      result.flops_per_token += 2 * sum(
          w.size for w in weights if not w.name.endswith("bias"))
      result.attention_width = layer.num_heads * layer.key_value_size
      if cross:
        result.cross_attention_layers += 1
      else:
        result.attention_layers += 1
    else:
      raise ConfigError("accounting does not know layer %s"
                        % type(layer).__name__)
  result.variables.append(Variable(var_names.norm_scale(stack.name),
                                   [model_dim]))
  return result


@dataclasses.dataclass
class Report:
  """The numbers ``switch-mtf info`` prints."""
  total_parameters: int
  parameters_per_device: int
  flops_per_token: int
  flops_per_sequence: int
  router_flops_per_token: int
  expert_parameters: int
  switch_layers: int
  expert_capacity: typing.Dict[str, int]
  tokens_per_group: int
  groups_per_batch: int
  memory_per_device_bytes: typing.Dict[str, int]
  mesh_shape: str
  layout_rules: str
  sequence_length: typing.Dict[str, int]
  batch_size: int
  variables: typing.List[Variable] = dataclasses.field(repr=False)

  def as_dict(self):
    out = dataclasses.asdict(self)
    out["variables"] = {v.name: [d.size for d in v.dims]
                        for v in self.variables}
    return out


def _split_size(var, layout, mesh_shape):
  ways = 1
  for d in var.dims:
    ways *= layout_lib.split_ways(layout, mesh_shape, d)
  return var.size // ways


def _adafactor_state(var):
  """Adafactor (Mesh TF default, factored, no momentum): row + column
  accumulators for matrices, a full accumulator for vectors."""
  sizes = [d.size for d in var.dims]
  if len(sizes) < 2:
    return var.size
  leading = mtf.Shape(var.dims[:-2]).size
  return leading * (sizes[-1] + sizes[-2])


def count(model_type, vocab_size, sequence_length, batch_size, layout="",
          mesh_shape="", master_bytes=4):
  """Builds the gin-configured model (no graph) and counts it.

  Args:
    model_type: "bitransformer" or "lm".
    vocab_size: the vocabulary size (padded like Mesh TF, to a multiple of
      the model's vocab_divisor).
    sequence_length: {"inputs": n, "targets": m} ("targets" only for lm).
    batch_size: sequences per batch (for groups and capacity).
    layout, mesh_shape: as in utils.run.
    master_bytes: bytes per master weight (4: float32, 2: bfloat16).

  Returns:
    a Report.
  """
  model = models.build_model(model_type, vocab_size, layout, mesh_shape)
  stacks = models.stacks(model)
  model_dim = _dim("d_model", stacks[0][1].model_dim.size)
  lengths = {"encoder": sequence_length.get("inputs", 0),
             "decoder": sequence_length.get("targets", 0)}
  if model_type == "lm":
    lengths["decoder"] = (sequence_length.get("inputs", 0)
                          + sequence_length.get("targets", 0))
  variables = []
  flops = router_flops = 0
  switch = []
  shared_embedding = getattr(model, "shared_embedding", False)
  for name, stack in stacks:
    counted = count_stack(stack, model_dim)
    variables += counted.variables
    vocab = stack.input_vocab_dim
    if not shared_embedding:
      variables.append(Variable(var_names.embedding(stack.name),
                                [vocab, model_dim]))
    elif name == "encoder":
      variables.append(Variable(var_names.SHARED_EMBEDDING,
                                [vocab, model_dim]))
    if stack.positional_embedding:
      variables.append(Variable(var_names.positional_embedding(stack.name),
                                [stack.max_length_dim, model_dim]))
    per_token = counted.flops_per_token
    context = lengths[name]
    per_token += 2 * counted.attention_layers * context * (
        counted.attention_width)
    per_token += 2 * counted.cross_attention_layers * lengths["encoder"] * (
        counted.attention_width)
    if stack.output_vocab_dim is not None:
      if not stack.shared_embedding_and_softmax_weights:
        variables.append(Variable(var_names.logits(stack.name),
                                  [model_dim, stack.output_vocab_dim]))
      per_token += 2 * model_dim.size * stack.output_vocab_dim.size
    flops += per_token * lengths[name]
    router_flops += counted.router_flops_per_token * lengths[name]
    switch += [(layer, lengths[name]) for layer in counted.switch_layers]

  # An impossible layout fails here, before any graph is built.
  layout_lib.check_tensors(layout, mesh_shape,
                           {v.name: v.dims for v in variables})
  tokens = sum(lengths.values()) if model_type != "lm" else lengths["decoder"]
  total = sum(v.size for v in variables)
  expert_params = sum(v.size for v in variables
                      if any(d.name == "experts" for d in v.dims))
  per_device = sum(_split_size(v, layout, mesh_shape) for v in variables)
  optimizer = sum(_split_size(Variable(v.name, v.dims), layout, mesh_shape)
                  * _adafactor_state(v) // max(v.size, 1) for v in variables)
  capacity, group, groups = _capacity(switch, batch_size, layout, mesh_shape)
  return Report(
      total_parameters=total, parameters_per_device=per_device,
      flops_per_token=flops // max(tokens, 1), flops_per_sequence=flops,
      router_flops_per_token=router_flops // max(tokens, 1),
      expert_parameters=expert_params, switch_layers=len(switch),
      expert_capacity=capacity, tokens_per_group=group,
      groups_per_batch=groups,
      memory_per_device_bytes={
          "parameters": per_device * master_bytes,
          "optimizer_state": optimizer * 4,
      },
      mesh_shape=str(mesh_shape or ""), layout_rules=str(layout or ""),
      sequence_length=dict(sequence_length), batch_size=batch_size,
      variables=variables)


def _capacity(switch, batch_size, layout, mesh_shape):
  """Expert capacity per group (train/eval) of the first Switch layer."""
  if not switch:
    return {}, 0, 0
  layer, length = switch[0]
  batch_ways = layout_lib.split_ways(layout, mesh_shape,
                                     _dim("batch", batch_size))
  groups, group = capacity_lib.split_into_groups(
      batch_size * length, layer.config.max_group_size(length), batch_ways)
  return ({"train": layer.config.capacity(group, True),
           "eval": layer.config.capacity(group, False)}, group, groups)


def format_report(report):
  """Human-readable lines; the first two are machine-readable."""
  def human(n):
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
      if n >= size:
        return "%.2f%s" % (n / size, unit)
    return str(n)
  mem = report.memory_per_device_bytes
  lines = [
      "total_parameters: %d" % report.total_parameters,
      "flops_per_token: %d" % report.flops_per_token,
      "flops_per_sequence: %d" % report.flops_per_sequence,
      "router_flops_per_token: %d" % report.router_flops_per_token,
      "parameters_per_device: %d" % report.parameters_per_device,
      "expert_parameters: %d" % report.expert_parameters,
      "switch_layers: %d" % report.switch_layers,
      "",
      "summary: %s parameters (%s in experts), %s forward FLOPs per sequence "
      "of %s tokens" % (human(report.total_parameters),
                        human(report.expert_parameters),
                        human(report.flops_per_sequence),
                        "+".join(str(v) for v in
                                 report.sequence_length.values())),
      "mesh: %r, layout: %r" % (report.mesh_shape, report.layout_rules),
      "per device: %s parameters, %.2f GiB of weights + %.2f GiB of Adafactor "
      "state (estimate; activations not included)" % (
          human(report.parameters_per_device),
          mem["parameters"] / 2 ** 30, mem["optimizer_state"] / 2 ** 30),
  ]
  if report.expert_capacity:
    lines.append(
        "routing: batch of %d sequences -> %d groups of %d tokens; expert "
        "capacity per group %d (train), %d (eval)" % (
            report.batch_size, report.groups_per_batch,
            report.tokens_per_group, report.expert_capacity["train"],
            report.expert_capacity["eval"]))
  return lines

