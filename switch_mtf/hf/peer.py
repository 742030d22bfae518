"""Hugging Face's model, trained side by side with ours (a peer check).

A Switch model that trails its dense baseline may be a property of the
scale or a defect; only an implementation nobody here wrote can tell the
two apart.  This module trains Hugging Face's ``T5ForConditionalGeneration``
(dense) or ``SwitchTransformersForConditionalGeneration`` (Switch) in torch
on exactly the batches ``switch-mtf train`` consumed, starting from our
step-0 checkpoint (the same initial weights, mapped by
``hf_conversion.tensor_map``), with Mesh TF's Adafactor and loss re-written
in torch, and scores it on the same fixed validation examples as
``evaluation.Scorer``.  ``benchmarks/peer_quality.py`` drives it.

What is Hugging Face's here: the model (embeddings, attention with T5's
relative position buckets, RMS norms, feed-forward and expert modules, the
top-1 router with its per-sequence groups and fixed ``expert_capacity``,
its load-balancing loss function).  What is matched to Mesh TF by us, and
stated so: packed sequences (attention masks per segment, decoder inputs
shifted within a segment, as Mesh TF does), the loss (cross entropy summed
over target tokens and divided by batch x length, plus Mesh TF's default
output z-loss 1e-4, plus alpha x the router loss of each Switch layer),
Adafactor (``MeshTFAdafactor``), gated-GELU experts (T5's
``DenseGatedActDense`` modules; Hugging Face's Switch model has none) and,
optionally, the paper's jitter (on the router input only; Hugging Face
also perturbs the experts' input, its issue 33969).

torch and transformers are imported here only: they are test extras.
"""
import dataclasses
import math
import time
import typing

import numpy as np

from switch_mtf import checkpoint_io
from switch_mtf.hf import conversion as hf_conversion

# Mesh TF's Unitransformer.z_loss default (on the output logits, training).
OUTPUT_Z_LOSS = 1e-4
PACKED_FEATURES = ("inputs", "inputs_segmentation", "targets",
                   "targets_segmentation")


def export_batches(task_name, lengths, batch_size, steps, seed):
  """The first ``steps`` training batches of ``switch-mtf train --seed``:
  {feature: int32 [steps, batch, length]} (packed: with segment ids)."""
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  from switch_mtf.train import training  # pylint: disable=g-import-not-at-top
  columns = {k: [] for k in PACKED_FEATURES}
  with tf.Graph().as_default():
    # The Estimator's graph has this graph-level seed (compat 6), which the
    # pipeline's seeded shuffles and preprocessors combine with theirs.
    tf.set_random_seed(seed)
    dataset = training.train_dataset(task_name, lengths, batch_size, seed)
    nxt = tf.data.make_one_shot_iterator(dataset.take(steps)).get_next()
    with tf.Session() as session:
      for _ in range(steps):
        batch = session.run(nxt)
        for k in columns:
          columns[k].append(batch[k].astype(np.int32))
  return {k: np.stack(v) for k, v in columns.items()}


@dataclasses.dataclass(frozen=True)
class PeerSettings:
  """How the Hugging Face side is configured and trained.

  Attributes:
    expert_capacity: Hugging Face's slots per expert and sequence, per
      stack: {"encoder": C, "decoder": C}.
    jitter: "paper" (router input only), "hf" (Hugging Face's in-place
      jitter) or "none".
    jitter_eps: the jitter's epsilon.
    aux_loss_coef: alpha.
    learning_rate: None for T5's 1/sqrt(max(step, 10^4)), else constant.
    stacked_expert_statistics: Adafactor's parameter scale and update
      clipping over all experts of a layer together, as Mesh TF computes
      them for its one [experts, ...] variable (True), or per expert (the
      natural choice for per-expert modules; False).
    seed: torch seed (jitter).
  """
  expert_capacity: typing.Dict[str, int]
  jitter: str = "paper"
  jitter_eps: float = 0.01
  aux_loss_coef: float = 0.01
  learning_rate: typing.Optional[float] = None
  stacked_expert_statistics: bool = False
  seed: int = 0


def _torch():
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(max(1, torch.get_num_threads()))
  return torch


# ---------------------------------------------------------------------------
# The model, from our checkpoint


def build_model(arch, settings):
  """Hugging Face's model of ``arch`` (eager attention, no dropout)."""
  torch = _torch()
  import transformers  # pylint: disable=g-import-not-at-top
  from transformers.models.switch_transformers import modeling_switch_transformers as hf_switch  # pylint: disable=g-import-not-at-top
  from transformers.models.t5 import modeling_t5  # pylint: disable=g-import-not-at-top
  act = "gelu_new" if arch.activation == "gelu" else "relu"
  common = dict(
      vocab_size=arch.vocab_size, d_model=arch.d_model, d_kv=arch.d_kv,
      d_ff=arch.d_ff, num_heads=arch.num_heads, num_layers=arch.encoder_layers,
      num_decoder_layers=arch.decoder_layers,
      relative_attention_num_buckets=arch.num_buckets,
      relative_attention_max_distance=128, dropout_rate=0.0,
      layer_norm_epsilon=1e-6, tie_word_embeddings=arch.tied,
      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  if not arch.num_experts:
    config = transformers.T5Config(
        feed_forward_proj=("gated-gelu" if arch.gated else act), **common)
    config._attn_implementation = "eager"  # pylint: disable=protected-access
    return transformers.T5ForConditionalGeneration(config)
  config = transformers.SwitchTransformersConfig(
      num_experts=arch.num_experts, expert_capacity=64,
      num_sparse_encoder_layers=hf_conversion._num_sparse_for_hf(  # pylint: disable=protected-access
          arch.encoder_layers, arch.encoder_sparse, "encoder"),
      num_sparse_decoder_layers=hf_conversion._num_sparse_for_hf(  # pylint: disable=protected-access
          arch.decoder_layers, arch.decoder_sparse, "decoder"),
      router_jitter_noise=(settings.jitter_eps if settings.jitter == "hf"
                           else 0.0),
      router_aux_loss_coef=settings.aux_loss_coef, router_z_loss_coef=0.0,
      router_bias=False, dense_act_fn=act, **common)
  config._attn_implementation = "eager"  # pylint: disable=protected-access
  model = transformers.SwitchTransformersForConditionalGeneration(config)
  if arch.gated:
    t5_config = transformers.T5Config(
        d_model=arch.d_model, d_ff=arch.d_ff, dropout_rate=0.0,
        dense_act_fn=act, is_gated_act=True)
    for stack in (model.encoder, model.decoder):
      for block in stack.block:
        layer = block.layer[-1]
        if isinstance(layer.mlp, hf_switch.SwitchTransformersSparseMLP):
          for e in range(arch.num_experts):
            layer.mlp.experts["expert_%d" % e] = (
                modeling_t5.T5DenseGatedActDense(t5_config))
        else:
          layer.mlp = modeling_t5.T5DenseGatedActDense(t5_config)
  for name, stack in (("encoder", model.encoder), ("decoder", model.decoder)):
    for router in _routers(stack):
      router.expert_capacity = settings.expert_capacity[name]
  del torch
  return model


def _routers(module):
  from transformers.models.switch_transformers import modeling_switch_transformers as hf_switch  # pylint: disable=g-import-not-at-top
  return [m for m in module.modules()
          if isinstance(m, hf_switch.SwitchTransformersTop1Router)]


def _hf_name(name, dense):
  # T5's feed-forward module is "DenseReluDense" where Switch's is "mlp".
  return name.replace(".mlp.", ".DenseReluDense.") if dense else name


def load_checkpoint(model, checkpoint, arch):
  """Copies every variable of our ``checkpoint`` into ``model``."""
  torch = _torch()
  reader = checkpoint_io.CheckpointReader(checkpoint)
  params = dict(model.named_parameters())
  dense = not arch.num_experts
  done = set()
  with torch.no_grad():
    for entry in hf_conversion.tensor_map(arch):
      value = reader.read(entry.ours)
      pieces = ([value[e] for e in range(len(entry.hf))] if entry.experts
                else [value])
      for name, piece in zip(entry.hf, pieces):
        name = _hf_name(name, dense)
        piece = piece.T if entry.transpose else piece
        params[name].copy_(torch.from_numpy(np.ascontiguousarray(piece)))
        done.add(name)
  tied = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
  if arch.tied:
    tied.add("lm_head.weight")
  missing = sorted(set(params) - done - tied)
  if missing:
    raise ValueError("not loaded from %s: %s" % (checkpoint, missing[:5]))


# ---------------------------------------------------------------------------
# Mesh TF's Adafactor in torch


class MeshTFAdafactor(object):
  """``mesh_tensorflow.optimize.AdafactorOptimizer`` with its defaults
  (beta1 0, factored second moments over the two largest dims when both
  are >= 128, decay 1 - (t+1)^-0.8, update clipping at RMS 1, updates
  scaled by max(RMS(parameter), 1e-3)), for torch parameters.

  ``groups`` is a list of lists of parameters: the statistics that Mesh TF
  computes over a whole variable (parameter scale, clipping) are computed
  over a group, the second moments per parameter (per expert, as Mesh TF's
  factored moments of an [experts, ...] variable keep the experts apart).
  """

  def __init__(self, groups, learning_rate=None, decay_exponent=0.8,
               clipping_threshold=1.0, epsilon1=1e-30, epsilon2=1e-3,
               min_dim_size_to_factor=128):
    self.groups = groups
    self.learning_rate = learning_rate
    self.decay_exponent = decay_exponent
    self.clipping_threshold = clipping_threshold
    self.epsilon1, self.epsilon2 = epsilon1, epsilon2
    self.min_dim_size_to_factor = min_dim_size_to_factor
    self.step_count = 0
    self.state = {}

  def _factored_dims(self, shape):
    if len(shape) < 2:
      return None
    order = sorted(range(len(shape)), key=lambda d: -shape[d])
    if shape[order[1]] < self.min_dim_size_to_factor:
      return None
    return order[0], order[1]

  def rate(self):
    if self.learning_rate is not None:
      return self.learning_rate
    return 1.0 / math.sqrt(max(float(self.step_count), 1e4))

  def step(self):
    torch = _torch()
    t = self.step_count
    decay = 1.0 - (t + 1.0) ** -self.decay_exponent
    rate = self.rate()
    with torch.no_grad():
      for group in self.groups:
        updates = []
        for p in group:
          g = p.grad if p.grad is not None else torch.zeros_like(p)
          g2 = g * g + self.epsilon1
          dims = self._factored_dims(tuple(p.shape))
          state = self.state.setdefault(p, {})
          if dims:
            d0, d1 = dims
            vr = state.setdefault("vr", torch.zeros(
                [s for i, s in enumerate(p.shape) if i != d0]))
            vc = state.setdefault("vc", torch.zeros(
                [s for i, s in enumerate(p.shape) if i != d1]))
            vr.mul_(decay).add_(g2.mean(dim=d0), alpha=1 - decay)
            vc.mul_(decay).add_(g2.mean(dim=d1), alpha=1 - decay)
            # vr lacks d0; its mean over d1 (index shifts if d1 > d0).
            d1_in_vr = d1 - 1 if d1 > d0 else d1
            long_term = vr.mean(dim=d1_in_vr, keepdim=True)
            r = torch.rsqrt(vr / long_term).unsqueeze(d0)
            c = torch.rsqrt(vc).unsqueeze(d1)
            updates.append(g * r * c)
          else:
            v = state.setdefault("v", torch.zeros_like(p))
            v.mul_(decay).add_(g2, alpha=1 - decay)
            updates.append(g * torch.rsqrt(v))
        count = sum(u.numel() for u in updates)
        rms = torch.sqrt(sum((u * u).sum() for u in updates) / count)
        clip = torch.clamp(rms / self.clipping_threshold, min=1.0)
        scale = torch.sqrt(sum((p * p).sum() for p in group)
                           / sum(p.numel() for p in group))
        scale = torch.clamp(scale, min=self.epsilon2) * rate
        for p, u in zip(group, updates):
          p.sub_(u / clip * scale)
    self.step_count += 1


def optimizer_groups(model, stacked_expert_statistics):
  """One group per parameter, or per Switch layer kernel (all experts'
  ``wi``/``wi_0``/``wi_1``/``wo`` together) when stacked."""
  groups, stacked = [], {}
  seen = set()
  for name, p in model.named_parameters():
    if id(p) in seen:
      continue
    seen.add(id(p))
    if stacked_expert_statistics and ".experts.expert_" in name:
      prefix, rest = name.split(".experts.expert_", 1)
      key = prefix + "/" + rest.split(".", 1)[1]
      stacked.setdefault(key, []).append(p)
      if len(stacked[key]) == 1:
        groups.append(stacked[key])
    else:
      groups.append([p])
  return groups


# ---------------------------------------------------------------------------
# Packed sequences and the loss


def _shift_within_segments(targets, segments):
  """Mesh TF's autoregressive_inputs: targets shifted right by one, 0 at
  the start of every segment."""
  shifted = np.zeros_like(targets)
  shifted[:, 1:] = targets[:, :-1]
  same = np.zeros_like(targets, dtype=bool)
  same[:, 1:] = segments[:, 1:] == segments[:, :-1]
  return np.where(same, shifted, 0)


def _additive(visible):
  torch = _torch()
  mask = torch.zeros(visible.shape, dtype=torch.float32)
  mask[~torch.from_numpy(visible)] = torch.finfo(torch.float32).min
  return mask[:, None]


def attention_masks(inputs_segmentation, targets_segmentation):
  """Additive [batch, 1, q, k] masks: encoder self-attention within a
  segment; decoder self-attention within a segment and causal; decoder to
  encoder within the same segment (Mesh TF's masks for packed examples;
  padding, segment 0, sees padding)."""
  enc, dec = inputs_segmentation, targets_segmentation
  causal = np.tril(np.ones((dec.shape[1], dec.shape[1]), dtype=bool))
  return (_additive(enc[:, :, None] == enc[:, None, :]),
          _additive((dec[:, :, None] == dec[:, None, :]) & causal[None]),
          _additive(dec[:, :, None] == enc[:, None, :]))


class _Masks(object):
  """Forward pre-hooks that give every block of the model our masks."""

  def __init__(self, model):
    self.encoder = self.decoder = self.cross = None
    self._hooks = []
    for stack, is_decoder in ((model.encoder, False), (model.decoder, True)):
      for block in stack.block:
        self._hooks.append(block.register_forward_pre_hook(
            self._hook(is_decoder), with_kwargs=True))

  def _hook(self, is_decoder):
    def hook(module, args, kwargs):
      del module
      args = list(args)
      args[1] = self.decoder if is_decoder else self.encoder
      if is_decoder:
        args[4] = self.cross
      return tuple(args), kwargs
    return hook


class Peer(object):
  """Hugging Face's model of our checkpoint, trained on our batches."""

  def __init__(self, checkpoint, arch, settings):
    torch = _torch()
    torch.manual_seed(settings.seed)
    self.arch, self.settings = arch, settings
    self.model = build_model(arch, settings)
    load_checkpoint(self.model, checkpoint, arch)
    self._masks = _Masks(self.model)
    self._router_logits = []
    for router in _routers(self.model):
      router.register_forward_hook(self._capture_router)
      if settings.jitter == "paper":
        router.classifier.register_forward_pre_hook(self._jitter)
    self.optimizer = MeshTFAdafactor(
        optimizer_groups(self.model, settings.stacked_expert_statistics),
        learning_rate=settings.learning_rate)

  def _capture_router(self, module, args, output):
    del module, args
    self._router_logits.append(output[2])

  def _jitter(self, module, args):
    if not module.training:
      return None
    torch = _torch()
    eps = self.settings.jitter_eps
    (x,) = args
    return (x * torch.empty_like(x).uniform_(1.0 - eps, 1.0 + eps),)

  def _forward(self, batch):
    """(logits, [router logits per Switch layer]) of a packed batch."""
    torch = _torch()
    inputs = batch["inputs"]
    targets = batch["targets"]
    enc_seg = batch.get("inputs_segmentation", np.minimum(inputs, 1))
    dec_seg = batch.get("targets_segmentation", np.minimum(targets, 1))
    (self._masks.encoder, self._masks.decoder,
     self._masks.cross) = attention_masks(enc_seg, dec_seg)
    self._router_logits = []
    out = self.model(
        input_ids=torch.from_numpy(inputs.astype(np.int64)),
        decoder_input_ids=torch.from_numpy(
            _shift_within_segments(targets, dec_seg).astype(np.int64)))
    return out.logits, list(self._router_logits)

  def loss(self, batch):
    """(total loss, cross entropy per target token) as Mesh TF trains."""
    torch = _torch()
    from transformers.models.switch_transformers import modeling_switch_transformers as hf_switch  # pylint: disable=g-import-not-at-top
    logits, router_logits = self._forward(batch)
    targets = torch.from_numpy(batch["targets"].astype(np.int64))
    weights = (targets > 0).float()
    lse = torch.logsumexp(logits, dim=-1)
    cross_entropy = lse - logits.gather(-1, targets[..., None])[..., 0]
    denominator = float(targets.numel())
    loss = ((cross_entropy * weights).sum()
            + OUTPUT_Z_LOSS * (lse * lse * weights).sum()) / denominator
    for layer_logits in router_logits:
      probs = torch.softmax(layer_logits, dim=-1)
      loss = loss + self.settings.aux_loss_coef * (
          hf_switch.load_balancing_loss_func(probs,
                                             layer_logits.argmax(dim=-1)))
    mean_ce = float((cross_entropy * weights).sum().detach()
                    / weights.sum())
    return loss, mean_ce

  def train_step(self, batch):
    self.model.train()
    self.model.zero_grad(set_to_none=True)
    loss, mean_ce = self.loss(batch)
    loss.backward()
    self.optimizer.step()
    return float(loss.detach()), mean_ce

  def neg_log_perplexity(self, examples, batch_size=64):
    """Mean log-likelihood per target token on ``evaluation.Examples``."""
    torch = _torch()
    self.model.eval()
    total = 0.0
    with torch.no_grad():
      for batch, _ in examples.batches(batch_size):
        logits, _ = self._forward(batch)
        targets = torch.from_numpy(batch["targets"].astype(np.int64))
        log_probs = torch.log_softmax(logits, dim=-1)
        picked = log_probs.gather(-1, targets[..., None])[..., 0]
        total += float((picked * (targets > 0).float()).sum())
    return total / max(examples.target_tokens, 1)


def train(peer, batches, steps, evaluate_at=(), examples=None, every=10,
          log_every=100, out=None):
  """Trains ``peer`` on the first ``steps`` batches; returns (history,
  evaluations): history has one entry per ``every`` steps (step, mean loss
  and cross entropy of the window, seconds), evaluations {step: value}.
  ``out`` gets a progress line every ``log_every`` steps."""
  history, evaluations = [], {}
  window_loss, window_ce = [], []
  start = time.time()
  for step in range(1, steps + 1):
    batch = {k: v[step - 1] for k, v in batches.items()}
    loss, ce = peer.train_step(batch)
    window_loss.append(loss)
    window_ce.append(ce)
    if step % every == 0 or step == steps:
      history.append(dict(step=step,
                          mean_loss=sum(window_loss) / len(window_loss),
                          mean_cross_entropy=sum(window_ce) / len(window_ce),
                          seconds=time.time() - start))
      window_loss, window_ce = [], []
    if out and (step % log_every == 0 or step == steps):
      out("step %d/%d  loss %.4f  %.0f tokens/s" % (
          step, steps, history[-1]["mean_loss"],
          step * batches["targets"][0].size * (1 + batches["inputs"].shape[-1]
                                               / batches["targets"].shape[-1])
          / max(time.time() - start, 1e-9)))
    if step in evaluate_at and examples is not None:
      evaluations[step] = peer.neg_log_perplexity(examples)
      if out:
        out("step %d: validation neg. log perplexity %.4f"
            % (step, evaluations[step]))
  return history, evaluations
