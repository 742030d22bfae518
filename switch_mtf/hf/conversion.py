"""Hugging Face SwitchTransformers checkpoints <-> switch_mtf checkpoints.

``import_hf`` turns a Hugging Face directory (config.json + safetensors or
PyTorch weights, sharded or not) into a switch_mtf model directory: a
TensorFlow checkpoint ``model.ckpt-0`` and the ``operative_config.gin`` of
the matching model, ready for ``switch-mtf finetune --pretrained_model_dir``
or ``eval``.  ``export_hf`` writes the latest checkpoint of a switch_mtf
model directory back as config.json + safetensors.  Both go tensor by
tensor (one expert at a time for expert kernels), so at most one tensor of
the source and one output shard are in memory.

Mapping decisions (``tensor_map`` is the single table both directions use):

* Kernels: Mesh TF computes ``y = x·W`` with W ``[in, out]``; torch's
  ``nn.Linear`` stores ``[out, in]``.  Every 2-D kernel is transposed:
  ``q, k, v`` ``[d_model, heads·d_kv]`` <- ``SelfAttention.q.weight``,
  ``o``, ``DenseReluDense/wi|wi_0|wi_1|wo``, the router
  ``SwitchFFN/router/kernel [d_model, experts]`` <-
  ``mlp.router.classifier.weight [experts, d_model]`` (no bias: Hugging
  Face's ``router_bias`` must be false), and the untied output layer
  ``decoder/logits/kernel`` <- ``lm_head.weight``.  Heads are the major
  part of the combined ``heads·d_kv`` axis on both sides.
* Experts: ``SwitchFFN/wi/kernel [experts, d_model, d_ff]`` is the stack of
  ``mlp.experts.expert_{e}.wi.weight [d_ff, d_model]`` transposed (likewise
  ``wo``; the gated ``wi_0``/``wi_1`` of switch-xxl use T5's gated names,
  ``experts.expert_{e}.wi_0.weight``, which Hugging Face's Switch model does
  not run but its T5 ``DenseGatedActDense`` does).
* Relative position biases: T5 ties one bias table per stack (Mesh TF
  ``bias_shared``), stored in block 0: ``relative_attention_bias [heads,
  buckets]`` <- ``block.0.layer.0.SelfAttention.relative_attention_bias.
  weight [buckets, heads]``.  Encoder-decoder attention has none on either
  side.  32 buckets, max distance 128 (Mesh TF's are fixed there).
* Layer norms: RMS norms with a scale and no bias, epsilon 1e-6 on both
  sides: ``layer_00j/rms_norm/scale`` <- ``layer.j.layer_norm.weight``,
  ``encoder/rms_norm/scale`` <- ``encoder.final_layer_norm.weight``.
* Embeddings: one table for encoder and decoder, ``shared/embedding`` <-
  ``shared.weight`` (``encoder/decoder.embed_tokens.weight`` are the same
  tied tensor).  With tied output weights both sides scale the decoder
  output by d_model^-0.5 before the softmax; untied, neither does.  Mesh TF
  pads the vocabulary to a multiple of 128 (T5's 32,100 ids -> 32,128 rows,
  Hugging Face's ``vocab_size``); other sizes get ``vocab_divisor = 1``.
* Which layers are sparse: Hugging Face makes feed-forward layer i sparse
  when ``i % step == 1`` (or step == 1), step = num_layers //
  num_sparse_layers; ``SparseLayerStack.expert_every = k`` when
  ``i % k == k - 1``.  Both give 1, 3, 5, ... for the released models
  (step 2) and every layer for step 1; a layout one side cannot express is
  an error, not an approximation.
* Routing: Hugging Face routes each sequence as one group with a fixed
  ``expert_capacity`` (first come, first served; a dropped token's layer
  output is 0, the residual carries it), in training and eval alike.  The
  gin we write does the same by default (``SwitchFFN.route_per_sequence``,
  ``SwitchFFN.expert_capacity``: identical outputs); ``routing="paper"``
  keeps the paper's groups and capacity factors instead.  Hugging Face
  routes padding tokens (they use capacity); switch_mtf never routes
  padding, so outputs agree exactly on unpadded sequences.
* Router losses: jitter, aux and z-loss coefficients are copied; the
  multi-layer aggregation differs (Hugging Face: one loss over the
  concatenated layers; here: the sum of per-layer losses).
* Activations: ``relu``; ``gelu_new``/``gelu_pytorch_tanh``/``gelu`` map to
  Mesh TF's ``gelu``, the tanh approximation the checkpoints were trained
  with (Hugging Face's ``gelu`` is the erf form: it differs by < 1e-3).
* Optimizer slots, ``global_step`` and a distillation teacher
  (``teacher/...``) are not exported; the import starts at step 0 (it
  writes ``global_step`` = 0, which the Estimator's eval needs).
* Jitter: Hugging Face multiplies the router input in place, so in float32
  training its experts see the jittered input too (its issue 33969); here
  only the router does, as in the paper and Mesh TF.
"""
import dataclasses
import json
import os
import typing

import numpy as np

from switch_mtf.moe import capacity as capacity_lib
from switch_mtf.moe import variable_names as var_names
from switch_mtf import checkpoint_io
from switch_mtf.hf import files as hf_files
from switch_mtf.errors import ConfigError

MODEL_TYPE = "switch_transformers"
_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu")
_NOT_EXPORTED = ("_slot_vc", "_slot_vr", "_slot_v", "_slot_m")


@dataclasses.dataclass
class Architecture:
  """What both formats must agree on."""
  vocab_size: int
  d_model: int
  d_kv: int
  d_ff: int
  num_heads: int
  encoder_layers: int
  decoder_layers: int
  num_experts: int
  encoder_sparse: typing.Tuple[int, ...]
  decoder_sparse: typing.Tuple[int, ...]
  gated: bool = False
  activation: str = "relu"          # "relu" or "gelu" (tanh approximation)
  tied: bool = True
  num_buckets: int = 32
  expert_capacity: int = 64
  router_jitter_noise: float = 0.01
  router_aux_loss_coef: float = 0.001
  router_z_loss_coef: float = 0.001
  dropout_rate: float = 0.1


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One switch_mtf variable and the Hugging Face tensor(s) it is made of:
  one, possibly transposed, or one per expert, each transposed."""
  ours: str
  shape: typing.Tuple[int, ...]
  hf: typing.Tuple[str, ...]
  transpose: bool = False

  @property
  def experts(self):
    return len(self.shape) == 3

  def hf_shape(self):
    shape = self.shape[1:] if self.experts else self.shape
    return tuple(reversed(shape)) if self.transpose else tuple(shape)


def hf_sparse_layers(num_layers, num_sparse):
  """The sparse feed-forward layers Hugging Face builds (its config's
  sparse step and its modeling rule)."""
  step = num_layers // num_sparse if num_sparse > 0 else num_layers
  return tuple(i for i in range(num_layers)
               if step > 0 and (i % step == 1 or step == 1))


def _expert_every(num_layers, sparse, stack):
  for every in range(num_layers + 1):
    ours = tuple(i for i in range(num_layers)
                 if every and i % every == every - 1)
    if ours == tuple(sparse):
      return every
  raise ConfigError(
      "the %s's sparse layers %s have no SparseLayerStack.expert_every "
      "(which makes layers k-1, 2k-1, ... sparse): this layout cannot be "
      "converted" % (stack, list(sparse)))


def _num_sparse_for_hf(num_layers, sparse, stack):
  # The honest count first: HF's "0 sparse layers" also makes layer 1 sparse.
  for count in [len(sparse)] + list(range(num_layers + 1)):
    if hf_sparse_layers(num_layers, count) == tuple(sparse):
      return count
  raise ConfigError(
      "the %s's Switch layers %s cannot be expressed by Hugging Face's "
      "num_sparse_*_layers (it makes layers i %% step == 1 sparse, and "
      "layer 1 even for 0 sparse layers)" % (stack, list(sparse)))


def tensor_map(arch):
  """[Tensor] of every switch_mtf variable of ``arch`` (both directions)."""
  d, hk = arch.d_model, arch.num_heads * arch.d_kv
  out = [Tensor(var_names.SHARED_EMBEDDING, (arch.vocab_size, d),
                ("shared.weight",))]
  if not arch.tied:
    out.append(Tensor(var_names.logits("decoder"), (d, arch.vocab_size),
                      ("lm_head.weight",), True))
  wi = var_names.ffn_inputs(2 if arch.gated else 1)
  for stack, layers, sparse in (
      ("encoder", arch.encoder_layers, arch.encoder_sparse),
      ("decoder", arch.decoder_layers, arch.decoder_sparse)):
    attentions = [var_names.SELF_ATTENTION] + (
        [var_names.CROSS_ATTENTION] if stack == "decoder" else [])
    for i in range(layers):
      hf_block = "%s.block.%d" % (stack, i)
      for j, kind in enumerate(attentions + ["FFN"]):
        ours, hf = var_names.layer_scope(stack, i, j), "%s.layer.%d" % (
            hf_block, j)
        out.append(Tensor(var_names.norm_scale(ours), (d,),
                          (hf + ".layer_norm.weight",)))
        if kind != "FFN":
          scope = var_names.child_scope(ours, kind)
          for w in ("q", "k", "v"):
            out.append(Tensor(var_names.attention_variable(scope, w), (d, hk),
                              ("%s.%s.%s.weight" % (hf, kind, w),), True))
          out.append(Tensor(var_names.attention_variable(scope, "o"), (hk, d),
                            ("%s.%s.o.weight" % (hf, kind),), True))
          if i == 0 and kind == var_names.SELF_ATTENTION:
            out.append(Tensor(
                var_names.attention_variable(scope, var_names.RELATIVE_BIAS),
                (arch.num_heads, arch.num_buckets),
                (hf + ".SelfAttention.relative_attention_bias.weight",),
                True))
        elif i in sparse:
          e = arch.num_experts
          scope = var_names.child_scope(ours, var_names.SWITCH_FFN)
          out.append(Tensor(var_names.router_kernel(scope), (d, e),
                            (hf + ".mlp.router.classifier.weight",), True))
          for w, shape in [(w, (e, d, arch.d_ff)) for w in wi] + [
              ("wo", (e, arch.d_ff, d))]:
            out.append(Tensor(
                var_names.ffn_kernel(scope, w), shape,
                tuple("%s.mlp.experts.expert_%d.%s.weight" % (hf, x, w)
                      for x in range(e)), True))
        else:
          scope = var_names.child_scope(ours, var_names.DENSE_FFN)
          for w, shape in [(w, (d, arch.d_ff)) for w in wi] + [
              ("wo", (arch.d_ff, d))]:
            out.append(Tensor(var_names.ffn_kernel(scope, w), shape,
                              ("%s.mlp.%s.weight" % (hf, w),), True))
    out.append(Tensor(var_names.norm_scale(stack), (d,),
                      ("%s.final_layer_norm.weight" % stack,)))
  return out


# ---------------------------------------------------------------------------
# Hugging Face -> switch_mtf


def architecture_from_hf(config, weight_names):
  """Architecture of a Hugging Face config.json (+ its weights' names)."""
  if config.get("model_type") != MODEL_TYPE:
    raise ConfigError(
        "not a Switch Transformer checkpoint: config.json has model_type=%r, "
        "expected %r" % (config.get("model_type"), MODEL_TYPE))
  get = config.get
  for key, want in (("router_bias", False), ("is_encoder_decoder", True),
                    ("relative_attention_max_distance", 128),
                    ("layer_norm_epsilon", 1e-6)):
    if get(key, want) != want:
      raise ConfigError("config.json has %s=%r; switch_mtf's model needs %r"
                        % (key, get(key), want))
  num_layers = int(get("num_layers", 12))
  decoder_layers = get("num_decoder_layers")
  decoder_layers = num_layers if decoder_layers is None else int(
      decoder_layers)
  gated = any(n.endswith(".wi_0.weight") for n in weight_names)
  activation = get("dense_act_fn", "relu")
  if str(get("feed_forward_proj", "")).startswith("gated-"):
    activation = get("feed_forward_proj")[len("gated-"):]
  if activation in _GELU:
    activation = "gelu"
  if activation not in ("relu", "gelu") or (gated and activation != "gelu"):
    raise ConfigError(
        "config.json's activation %r%s is not supported: use relu, gelu_new "
        "or gated-gelu" % (activation, " (gated)" if gated else ""))
  return Architecture(
      vocab_size=int(get("vocab_size", 32128)),
      d_model=int(get("d_model", 768)), d_kv=int(get("d_kv", 64)),
      d_ff=int(get("d_ff", 2048)), num_heads=int(get("num_heads", 12)),
      encoder_layers=num_layers, decoder_layers=decoder_layers,
      num_experts=int(get("num_experts", 8)),
      encoder_sparse=hf_sparse_layers(
          num_layers, int(get("num_sparse_encoder_layers", 3))),
      decoder_sparse=hf_sparse_layers(
          decoder_layers, int(get("num_sparse_decoder_layers", 3))),
      gated=gated, activation=activation,
      tied=bool(get("tie_word_embeddings", True)),
      num_buckets=int(get("relative_attention_num_buckets", 32)),
      expert_capacity=int(get("expert_capacity", 64)),
      router_jitter_noise=float(get("router_jitter_noise", 0.01)),
      router_aux_loss_coef=float(get("router_aux_loss_coef", 0.001)),
      router_z_loss_coef=float(get("router_z_loss_coef", 0.001)),
      dropout_rate=float(get("dropout_rate", 0.1)))


_TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def check_hf_weights(entries, reader, tied):
  """Every tensor the config implies is there with its shape, and nothing
  else is (a config/weights mismatch is one error naming the tensor)."""
  names = reader.names()
  if "shared.weight" not in names:
    for copy in _TIED_COPIES:
      if copy in names:
        reader.alias("shared.weight", copy)
        names = reader.names()
        break
  wanted = set()
  for entry in entries:
    for name in entry.hf:
      wanted.add(name)
      if name not in names:
        raise ConfigError("config/weights mismatch: %s is not in the weights "
                          "but config.json implies it" % name)
      if tuple(reader.shape(name)) != entry.hf_shape():
        raise ConfigError(
            "config/weights mismatch: %s has shape %s but config.json "
            "implies %s" % (name, list(reader.shape(name)),
                            list(entry.hf_shape())))
  # switch_mtf's models (Mesh TF's bitransformer) read one input embedding
  # table for both stacks.  Hugging Face files may hold copies of it
  # (transformers 5 keeps three separate tables in untied models): a copy
  # that differs cannot be converted exactly, so it is refused, not skipped.
  for copy in _TIED_COPIES:
    if copy in names and not np.array_equal(reader.get(copy),
                                            reader.get("shared.weight")):
      raise ConfigError(
          "%s differs from shared.weight: switch_mtf's models share one input "
          "embedding table between the encoder and the decoder, so this "
          "checkpoint cannot be converted exactly" % copy)
  ignorable = set(_TIED_COPIES) | ({"lm_head.weight"} if tied else set())
  extra = sorted(names - wanted - ignorable)
  if extra:
    raise ConfigError(
        "config/weights mismatch: the weights hold %s (and %d more) that "
        "config.json does not describe" % (extra[0], len(extra) - 1))


def gin_bindings(arch, routing="hf"):
  """The gin bindings (on top of models/released/common.gin) of ``arch``."""
  if routing not in ("hf", "paper"):
    raise ConfigError("routing=%r: use 'hf' (Hugging Face's per-sequence "
                      "capacity) or 'paper' (capacity factors)" % routing)
  dense = ('["gelu", "linear"]' if arch.gated else '"%s"' % arch.activation)
  switch = "gated_gelu" if arch.gated else arch.activation
  bindings = [
      "d_model = %d" % arch.d_model, "d_ff = %d" % arch.d_ff,
      "d_kv = %d" % arch.d_kv, "num_heads = %d" % arch.num_heads,
      "num_layers = %d" % arch.encoder_layers,
      "encoder/transformer.make_layer_stack.num_layers = %d"
      % arch.encoder_layers,
      "decoder/transformer.make_layer_stack.num_layers = %d"
      % arch.decoder_layers,
      "encoder/SparseLayerStack.expert_every = %d" % _expert_every(
          arch.encoder_layers, arch.encoder_sparse, "encoder"),
      "decoder/SparseLayerStack.expert_every = %d" % _expert_every(
          arch.decoder_layers, arch.decoder_sparse, "decoder"),
      "SwitchFFN.num_experts = %d" % arch.num_experts,
      "transformer.Unitransformer.shared_embedding_and_softmax_weights = %s"
      % arch.tied,
      "transformer_layers.DenseReluDense.activation = %s" % dense,
      'SwitchFFN.activation = "%s"' % switch,
      "transformer_layers.SelfAttention.relative_attention_num_buckets = %d"
      % arch.num_buckets,
      "SwitchRouter.jitter_eps = %r" % arch.router_jitter_noise,
      "SwitchRouter.aux_loss_coef = %r" % arch.router_aux_loss_coef,
      "SwitchRouter.z_loss_coef = %r" % arch.router_z_loss_coef]
  if arch.vocab_size % 128:
    bindings.append("transformer.Unitransformer.vocab_divisor = 1")
  if routing == "hf":
    bindings += ["SwitchFFN.route_per_sequence = True",
                 "SwitchFFN.expert_capacity = %d" % arch.expert_capacity]
  return bindings


def operative_gin(arch, routing, source):
  """Self-contained gin text of the converted model (no includes), checked
  to describe exactly the variables of ``tensor_map(arch)``."""
  import gin  # pylint: disable=g-import-not-at-top
  from switch_mtf.moe import accounting  # pylint: disable=g-import-not-at-top
  from switch_mtf import config  # pylint: disable=g-import-not-at-top
  config.parse(["models/released/common.gin"], gin_bindings(arch, routing))
  counted = accounting.count("bitransformer", arch.vocab_size,
                             {"inputs": 16, "targets": 16}, 1)
  built = {v.name: tuple(d.size for d in v.dims) for v in counted.variables}
  mapped = {t.ours: t.shape for t in tensor_map(arch)}
  if built != mapped:
    diff = sorted(set(built.items()) ^ set(mapped.items()))
    raise AssertionError("gin model and tensor map differ: %s" % diff[:3])
  header = ("# switch_mtf model converted from the Hugging Face checkpoint\n"
            "# %s by `switch-mtf convert` (routing=%s).\n\n" % (source,
                                                              routing))
  return header + gin.config_str()


def import_hf(hf_dir, model_dir, routing="hf", out=print):
  """Converts a Hugging Face directory into a new switch_mtf model dir;
  returns its Architecture."""
  config = hf_files.read_config(hf_dir)
  reader = hf_files.WeightReader(hf_dir)
  arch = architecture_from_hf(config, reader.names())
  entries = tensor_map(arch)
  check_hf_weights(entries, reader, arch.tied)
  gin_text = operative_gin(arch, routing, os.path.abspath(hf_dir))
  with hf_files.staged_directory(model_dir, "--model_dir") as scratch:
    writer = checkpoint_io.CheckpointWriter(
        os.path.join(scratch, "model.ckpt-0"))
    for entry in entries:
      if entry.experts:
        for e, name in enumerate(entry.hf):
          writer.add_slice(entry.ours, entry.shape, e, reader.get(name).T)
      else:
        value = reader.get(entry.hf[0])
        writer.add(entry.ours, value.T if entry.transpose else value)
    # The Estimator's eval and predict restore the step too.
    writer.add("global_step", 0, dtype=np.int64)
    writer.close()
    with open(os.path.join(scratch, "operative_config.gin"), "w") as f:
      f.write(gin_text)
  out("converted %s (%d tensors, %d experts, %s) into %s/model.ckpt-0 and "
      "its operative_config.gin" % (
          hf_dir, sum(len(t.hf) for t in entries), arch.num_experts,
          "gated-GELU" if arch.gated else arch.activation, model_dir))
  return arch


# ---------------------------------------------------------------------------
# switch_mtf -> Hugging Face


def _block_indices(shapes, stack):
  return sorted({var_names.block_index(n) for n in shapes
                 if n.startswith(stack + "/")
                 and var_names.block_index(n) is not None})


_DECLARED = object()


def _declared_default(name):
  """The default that switch_mtf's code declares for ``SwitchFFN.<field>``
  (SwitchConfig) or ``SwitchRouter.<argument>``: one source for both."""
  import inspect  # pylint: disable=g-import-not-at-top
  from switch_mtf.moe import layers  # pylint: disable=g-import-not-at-top
  from switch_mtf.moe import routing  # pylint: disable=g-import-not-at-top
  configurable, _, setting = name.partition(".")
  if configurable == "SwitchFFN":
    return {f.name: f.default
            for f in dataclasses.fields(layers.SwitchConfig)}[setting]
  if configurable == "SwitchRouter":
    return inspect.signature(routing.SwitchRouter).parameters[setting].default
  raise ValueError("no declared default for %s: pass one" % name)


def _gin_value(name, default=_DECLARED):
  """What the model ran with: gin's binding (the encoder's first), else
  ``default``, else the default switch_mtf's code declares."""
  from switch_mtf import config  # pylint: disable=g-import-not-at-top
  for scoped in ("encoder/" + name, name):
    value = config.query(scoped)
    if value is not None:
      return value
  return _declared_default(name) if default is _DECLARED else default


def architecture_from_checkpoint(shapes, expert_capacity=None):
  """Architecture of a switch_mtf checkpoint ({name: shape}) and the gin
  config parsed for it (activations, router settings, capacity)."""
  if var_names.SHARED_EMBEDDING not in shapes:
    raise ConfigError("the checkpoint has no %s: only encoder-decoder models "
                      "with one embedding export" % var_names.SHARED_EMBEDDING)
  vocab, d = shapes[var_names.SHARED_EMBEDDING]
  first = var_names.child_scope(var_names.layer_scope("encoder", 0, 0),
                             var_names.SELF_ATTENTION)
  bias = var_names.attention_variable(first, var_names.RELATIVE_BIAS)
  if bias not in shapes:
    raise ConfigError("the checkpoint has no %s: only T5-style shared "
                      "relative position biases export" % bias)
  heads, buckets = shapes[bias]
  q_name = var_names.attention_variable(first, "q")
  q = shapes.get(q_name)
  if q is None or len(q) != 2:
    raise ConfigError("the checkpoint has no 2-D %s: only T5 attention "
                      "layers export" % q_name)
  layers = {s: _block_indices(shapes, s) for s in ("encoder", "decoder")}
  sparse = {s: tuple(i for i in layers[s] if any(
      n.startswith(var_names.block_prefix(s, i))
      and var_names.in_switch_ffn(n) for n in shapes)) for s in layers}
  routers = [n for n in shapes
             if var_names.in_switch_ffn(n) and var_names.is_router(n)]
  experts = shapes[routers[0]][1] if routers else 0
  wi, wi_0 = var_names.ffn_kernel("", "wi"), var_names.ffn_kernel("", "wi_0")
  gated = any(n.endswith(wi_0) for n in shapes)
  hidden = {shapes[n][-1] for n in shapes if n.endswith((wi, wi_0))}
  if len(hidden) != 1:
    raise ConfigError("the checkpoint's feed-forward layers have sizes %s: "
                      "Hugging Face has one d_ff" % sorted(hidden))
  activation = _gin_value("SwitchFFN.activation")
  activation = "gelu" if activation in ("gelu", "gated_gelu") else activation
  if expert_capacity is None:
    expert_capacity = _gin_value("SwitchFFN.expert_capacity")
  if expert_capacity is None:
    # Hugging Face has one capacity per sequence: the eval capacity of a
    # group of one input sequence.
    lengths = _gin_value("utils.run.sequence_length", {"inputs": 512})
    expert_capacity = capacity_lib.expert_capacity(
        lengths["inputs"], max(experts, 1),
        _gin_value("SwitchFFN.capacity_factor_eval"),
        _gin_value("SwitchFFN.min_expert_capacity"))
  return Architecture(
      vocab_size=vocab, d_model=d, d_kv=q[1] // heads, d_ff=hidden.pop(),
      num_heads=heads, encoder_layers=len(layers["encoder"]),
      decoder_layers=len(layers["decoder"]), num_experts=experts,
      encoder_sparse=sparse["encoder"], decoder_sparse=sparse["decoder"],
      gated=gated, activation=activation,
      tied=var_names.logits("decoder") not in shapes, num_buckets=buckets,
      expert_capacity=int(expert_capacity),
      # Hugging Face jitters whenever router_jitter_noise > 0; ours only
      # with the input_jitter policy.
      router_jitter_noise=float(
          _gin_value("SwitchRouter.jitter_eps")
          if _gin_value("SwitchRouter.policy_train") == "input_jitter"
          else 0.0),
      router_aux_loss_coef=float(_gin_value("SwitchRouter.aux_loss_coef")),
      router_z_loss_coef=float(_gin_value("SwitchRouter.z_loss_coef")),
      dropout_rate=float(_gin_value("dropout_rate", 0.1)))


def hf_config(arch):
  """config.json of ``arch`` for Hugging Face's SwitchTransformers."""
  config = {
      "architectures": ["SwitchTransformersForConditionalGeneration"],
      "model_type": MODEL_TYPE, "vocab_size": arch.vocab_size,
      "d_model": arch.d_model, "d_kv": arch.d_kv, "d_ff": arch.d_ff,
      "num_heads": arch.num_heads, "num_layers": arch.encoder_layers,
      "num_decoder_layers": arch.decoder_layers,
      "num_sparse_encoder_layers": _num_sparse_for_hf(
          arch.encoder_layers, arch.encoder_sparse, "encoder"),
      "num_sparse_decoder_layers": _num_sparse_for_hf(
          arch.decoder_layers, arch.decoder_sparse, "decoder"),
      "num_experts": max(arch.num_experts, 1),
      "expert_capacity": arch.expert_capacity, "router_bias": False,
      "router_jitter_noise": arch.router_jitter_noise,
      "router_dtype": "float32", "router_ignore_padding_tokens": False,
      "relative_attention_num_buckets": arch.num_buckets,
      "relative_attention_max_distance": 128,
      "dropout_rate": arch.dropout_rate, "layer_norm_epsilon": 1e-6,
      "router_z_loss_coef": arch.router_z_loss_coef,
      "router_aux_loss_coef": arch.router_aux_loss_coef,
      "initializer_factor": 1.0,
      "dense_act_fn": "gelu_new" if arch.activation == "gelu" else "relu",
      "is_encoder_decoder": True, "tie_word_embeddings": arch.tied,
      "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
      "dtype": "float32"}
  if arch.gated:
    # Hugging Face's Switch model cannot run these; T5's name for them.
    config["feed_forward_proj"] = "gated-gelu"
  return config


def _check_exportable(entries, shapes):
  mapped = {t.ours: t.shape for t in entries}
  for name, shape in mapped.items():
    if tuple(shapes.get(name, ())) != shape:
      raise ConfigError("cannot export: %s should have shape %s but the "
                        "checkpoint has %s" % (name, list(shape),
                                               shapes.get(name, "nothing")))
  extra = sorted(n for n in shapes if n not in mapped
                 and n != "global_step" and not n.startswith("teacher/")
                 and not n.endswith(_NOT_EXPORTED))
  if extra:
    raise ConfigError("cannot export %s (and %d more): Hugging Face's "
                      "SwitchTransformers has no such weight"
                      % (extra[0], len(extra) - 1))


def export_hf(model_dir, hf_dir, expert_capacity=None,
              max_shard_bytes=1 << 30, out=print):
  """Writes the latest checkpoint of ``model_dir`` as a new Hugging Face
  directory; returns its config dict."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from switch_mtf import config as config_lib  # pylint: disable=g-import-not-at-top
  # The configurables a training run's operative config names (t5's
  # dataset functions and MtfModel).
  from switch_mtf.train import run  # noqa: F401  pylint: disable=unused-import
  prefix = tf.train.latest_checkpoint(model_dir) if os.path.isdir(
      model_dir) else None
  if prefix is None:
    raise ConfigError("no checkpoint in --model_dir=%s" % model_dir)
  operative = os.path.join(model_dir, "operative_config.gin")
  config_lib.parse([operative] if os.path.isfile(operative) else [])
  reader = checkpoint_io.CheckpointReader(prefix)
  arch = architecture_from_checkpoint(reader.shapes, expert_capacity)
  entries = tensor_map(arch)
  _check_exportable(entries, reader.shapes)
  config = hf_config(arch)
  plan, sources = [], {}
  for entry in entries:
    for e, name in enumerate(entry.hf):
      plan.append((name, entry.hf_shape()))
      sources[name] = (entry, e)
  if not arch.tied:
    # Untied, transformers 5 reads the stacks' input embeddings from their
    # own tensors (missing ones would be initialized at random): the same
    # table under each name.
    for copy in _TIED_COPIES:
      plan.append((copy, sources["shared.weight"][0].hf_shape()))
      sources[copy] = sources["shared.weight"]

  def produce(name):
    entry, e = sources[name]
    value = (reader.read_slice(entry.ours, e) if entry.experts
             else reader.read(entry.ours))
    return value.T if entry.transpose else value

  with hf_files.staged_directory(hf_dir, "--to_hf") as scratch:
    files = hf_files.write_safetensors(scratch, plan, produce,
                                       max_shard_bytes)
    with open(os.path.join(scratch, hf_files.CONFIG), "w") as f:
      json.dump(config, f, indent=1, sort_keys=True)
  out("exported %s (%d tensors, expert_capacity %d per sequence) as %s in %s"
      % (prefix, len(plan), arch.expert_capacity, ", ".join(files), hf_dir))
  if arch.gated:
    out("note: Hugging Face's SwitchTransformers cannot run gated-GELU "
        "experts; the weights use T5's wi_0/wi_1 names")
  return config
