"""Hugging Face SwitchTransformers <-> switch_mtf conversion (issue 7).

The reference is Hugging Face's own model (transformers pinned in
constraints.txt; 5.24 enforces the per-sequence capacity and gives dropped
tokens 0), built small and random inside the tests, in float32 and eval
mode (no jitter, no dropout), on unpadded sequences (Hugging Face routes
padding tokens, switch_mtf does not)."""
import json
import os
import re

import mesh_tensorflow as mtf
import numpy as np
import pytest
import tensorflow.compat.v1 as tf
import torch
import transformers
from transformers.models.switch_transformers import (
    modeling_switch_transformers as hf_switch)
from transformers.models.t5 import modeling_t5

import helpers
from switch_mtf import checkpoint_io
from switch_mtf import cli
from switch_mtf import config
from switch_mtf.hf import conversion as hf_conversion
from switch_mtf.train import mesh_program
from switch_mtf.moe import models
from switch_mtf.train import run  # noqa: F401  (what operative configs name)
from switch_mtf.errors import ConfigError

VOCAB = 128
BATCH, INPUTS, TARGETS = 4, 12, 6
SMALL = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_heads=4,
             num_layers=4, num_decoder_layers=2, num_sparse_encoder_layers=2,
             num_sparse_decoder_layers=1, num_experts=4, expert_capacity=64,
             dropout_rate=0.0, router_jitter_noise=0.01,
             decoder_start_token_id=0)


def test_reference_router_enforces_capacity():
  """The parity tests below assume Hugging Face drops the tokens beyond an
  expert's capacity (transformers 5.0-5.2x did not; before PR 37123 dropped
  tokens passed through): every token prefers expert 1, capacity 3, so
  exactly the first 3 tokens of each sequence are dispatched."""
  config = transformers.SwitchTransformersConfig(
      d_model=4, num_experts=2, expert_capacity=3, router_jitter_noise=0.0)
  router = hf_switch.SwitchTransformersTop1Router(config).eval()
  with torch.no_grad():
    router.classifier.weight.copy_(torch.tensor([[0.0] * 4, [1.0] * 4]))
    dispatch, _, _ = router(torch.ones(2, 5, 4))
  assert dispatch[:, :, 0].sum() == 0
  np.testing.assert_array_equal(dispatch[:, :, 1].numpy(),
                                [[1, 1, 1, 0, 0]] * 2)


def _hf_model(path, gated=False, seed=0, **overrides):
  """A random Hugging Face model saved at ``path``; gated=True swaps in
  T5's gated-GELU feed-forward modules (Hugging Face's Switch model has
  none), dense and expert, as the reference for switch-xxl's experts."""
  torch.manual_seed(seed)
  params = dict(SMALL, **overrides)
  if gated:
    params["dense_act_fn"] = "gelu_new"
  model = transformers.SwitchTransformersForConditionalGeneration(
      transformers.SwitchTransformersConfig(**params)).eval()
  if gated:
    t5_config = transformers.T5Config(
        d_model=params["d_model"], d_ff=params["d_ff"], dropout_rate=0.0,
        dense_act_fn="gelu_new", is_gated_act=True)

    def gated_ffn():
      ffn = modeling_t5.T5DenseGatedActDense(t5_config)
      for linear in (ffn.wi_0, ffn.wi_1, ffn.wo):
        torch.nn.init.normal_(linear.weight, std=params["d_model"] ** -0.5)
      return ffn

    for stack in (model.encoder, model.decoder):
      for block in stack.block:
        mlp_layer = block.layer[-1]
        if isinstance(mlp_layer.mlp, hf_switch.SwitchTransformersSparseMLP):
          for e in range(params["num_experts"]):
            mlp_layer.mlp.experts["expert_%d" % e] = gated_ffn()
        else:
          mlp_layer.mlp = gated_ffn()
    model.eval()
  if not params.get("tie_word_embeddings", True):
    # transformers 5 initializes the stacks' input embeddings apart from
    # ``shared`` in untied models; a real (T5X / Mesh TF) checkpoint holds
    # one table, which is what the copies carry.
    with torch.no_grad():
      for stack in (model.encoder, model.decoder):
        stack.embed_tokens.weight.copy_(model.shared.weight)
  model.save_pretrained(path)
  if gated:
    with open(os.path.join(path, "config.json")) as f:
      saved = json.load(f)
    saved["feed_forward_proj"] = "gated-gelu"
    with open(os.path.join(path, "config.json"), "w") as f:
      json.dump(saved, f)
  return model


def _batch(seed=1):
  rng = np.random.RandomState(seed)
  return (rng.randint(2, VOCAB, size=(BATCH, INPUTS)),
          rng.randint(2, VOCAB, size=(BATCH, TARGETS)))


def _hf_outputs(model, inputs, targets):
  """Encoder output, logits and the number of tokens the routers drop."""
  dropped = []

  def count(module, args, output):
    del module, args
    dropped.append(int((output[0].sum(-1) == 0).sum()))

  hooks = [m.register_forward_hook(count) for m in model.modules()
           if isinstance(m, hf_switch.SwitchTransformersTop1Router)]
  with torch.no_grad():
    out = model(input_ids=torch.tensor(inputs),
                labels=torch.tensor(targets))
  for hook in hooks:
    hook.remove()
  return (out.encoder_last_hidden_state.numpy(), out.logits.numpy(),
          sum(dropped))


def _our_outputs(model_dir, inputs, targets, layout_file=None):
  """Encoder output and logits of the converted model (eval mode)."""
  files = [os.path.join(model_dir, "operative_config.gin")]
  config.parse(files + ([layout_file] if layout_file else []))
  mesh_shape, layout = config.mesh_and_layout() if layout_file else ("", "")
  reader = checkpoint_io.CheckpointReader(tf.train.latest_checkpoint(
      model_dir))
  with mesh_program.MeshProgram(mesh_shape, layout) as p:
    model = models.build_model("bitransformer", VOCAB, layout, mesh_shape)
    captured = {}
    encode = model.encoder.call_simple

    def spy(*args, **kwargs):
      result = encode(*args, **kwargs)
      captured["encoder"] = result[0]
      return result

    model.encoder.call_simple = spy
    batch = mtf.Dimension("batch", BATCH)
    features = [p.import_array(a.astype(np.int32),
                               [batch, mtf.Dimension("length", a.shape[1])])
                for a in (inputs, targets)]
    logits, _ = model.call_simple(
        inputs=features[0], targets=features[1], compute_loss=False,
        mode="eval", variable_dtype=mesh_program.FLOAT32)
    values = {v.name: reader.read(v.name)
              for v in p.graph.trainable_variables}
    out = p.run({"logits": logits, "encoder": captured["encoder"]},
                variable_values=values)
  return out["encoder"], out["logits"]


def _assert_close(ours, theirs):
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("capacity,layout", [
    (64, None),                        # room for every token
    (2, "layouts/cpu_ep_2.gin")])      # 12 tokens, 4 experts, 2 slots each
def test_import_gives_hugging_face_outputs(tmp_path, capacity, layout):
  hf_dir, model_dir = str(tmp_path / "hf"), str(tmp_path / "converted")
  model = _hf_model(hf_dir, expert_capacity=capacity)
  hf_conversion.import_hf(hf_dir, model_dir, out=lambda line: None)
  inputs, targets = _batch()
  hf_encoder, hf_logits, dropped = _hf_outputs(model, inputs, targets)
  if capacity == 64:
    assert dropped == 0
  else:                            # the same tokens must be dropped
    assert dropped > 10
  encoder, logits = _our_outputs(model_dir, inputs, targets, layout)
  _assert_close(encoder, hf_encoder)
  _assert_close(logits, hf_logits)


def test_import_of_gated_gelu_experts_matches_t5_gated_modules(tmp_path):
  hf_dir, model_dir = str(tmp_path / "hf"), str(tmp_path / "converted")
  model = _hf_model(hf_dir, gated=True, expert_capacity=3)
  arch = hf_conversion.import_hf(hf_dir, model_dir, out=lambda line: None)
  assert arch.gated and arch.activation == "gelu"
  with open(os.path.join(model_dir, "operative_config.gin")) as f:
    operative = f.read()
  assert "SwitchFFN.activation = 'gated_gelu'" in operative
  inputs, targets = _batch(seed=2)
  hf_encoder, hf_logits, dropped = _hf_outputs(model, inputs, targets)
  assert dropped > 0
  encoder, logits = _our_outputs(model_dir, inputs, targets)
  _assert_close(encoder, hf_encoder)
  _assert_close(logits, hf_logits)


def _state(path):
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  out = {}
  for name in sorted(os.listdir(path)):
    if name.endswith(".safetensors"):
      out.update(safetensors_numpy.load_file(os.path.join(path, name)))
  return out


@pytest.mark.parametrize("gated", [False, True])
def test_import_then_export_gives_back_every_tensor(tmp_path, gated):
  hf_dir = str(tmp_path / "hf")
  _hf_model(hf_dir, gated=gated, tie_word_embeddings=not gated)
  hf_conversion.import_hf(hf_dir, str(tmp_path / "ours"),
                          out=lambda line: None)
  # Shards of ~40 KB: several files and an index.
  hf_conversion.export_hf(str(tmp_path / "ours"), str(tmp_path / "back"),
                          max_shard_bytes=40000, out=lambda line: None)
  assert os.path.isfile(str(tmp_path / "back" /
                            "model.safetensors.index.json"))
  original, back = _state(hf_dir), _state(str(tmp_path / "back"))
  # Tied, the copies of the shared table are left out (Hugging Face ties
  # them); untied, every tensor is written.
  tied = ({"encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
           "lm_head.weight"} if not gated else set())
  assert set(back) == set(original) - tied
  for name, value in back.items():
    np.testing.assert_array_equal(value, original[name], err_msg=name)
  with open(str(tmp_path / "back" / "config.json")) as f:
    exported = json.load(f)
  for key in ("d_model", "d_ff", "num_layers", "num_decoder_layers",
              "num_sparse_encoder_layers", "num_sparse_decoder_layers",
              "num_experts", "expert_capacity", "tie_word_embeddings"):
    assert exported[key] == transformers.SwitchTransformersConfig(
        **SMALL, tie_word_embeddings=not gated).to_dict()[key], key


def test_settings_gin_leaves_unbound_are_the_code_defaults():
  """What export writes for a setting the model's gin does not bind is the
  default the layer and the router declare (one source of defaults)."""
  import gin  # pylint: disable=g-import-not-at-top
  from switch_mtf.moe import layers  # pylint: disable=g-import-not-at-top
  from switch_mtf.moe import routing  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    router, layer = routing.SwitchRouter(), layers.SwitchConfig()
    for setting in ("jitter_eps", "aux_loss_coef", "z_loss_coef",
                    "policy_train"):
      assert hf_conversion._gin_value("SwitchRouter." + setting) == getattr(  # pylint: disable=protected-access
          router, setting), setting
    for setting in ("activation", "capacity_factor_eval",
                    "min_expert_capacity", "expert_capacity"):
      assert hf_conversion._gin_value("SwitchFFN." + setting) == getattr(  # pylint: disable=protected-access
          layer, setting), setting
    assert router.jitter_eps > 0   # the converter's own fallback was 0.0
    gin.bind_parameter("SwitchRouter.jitter_eps", 0.05)
    assert hf_conversion._gin_value("SwitchRouter.jitter_eps") == 0.05  # pylint: disable=protected-access
  finally:
    gin.clear_config()


def test_converted_checkpoint_finetunes_and_exports_back(tmp_path):
  # The embedded task's byte vocabulary: 259 ids, 384 rows in Mesh TF.
  hf_dir = str(tmp_path / "hf")
  _hf_model(hf_dir, vocab_size=384, expert_capacity=16)
  converted, tuned = str(tmp_path / "converted"), str(tmp_path / "tuned")
  result = helpers.cli("convert", "--from_hf", hf_dir,
                       "--model_dir", converted)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "converted" in result.stdout
  lengths = ("--gin_param=utils.run.sequence_length = "
             "{'inputs': 32, 'targets': 16}")
  # It evaluates as converted, with its gin file (step 0).
  gin_file = os.path.join(converted, "operative_config.gin")
  result = helpers.cli("eval", "--gin_file", gin_file,
                       "--gin_file=layouts/cpu_1", lengths,
                       "--model_dir", converted)
  assert result.returncode == 0, result.stderr[-3000:]
  assert re.search(r"^step 0: validation neg_log_perplexity -[0-9.]+ ",
                   result.stdout, re.M), result.stdout
  result = helpers.cli("finetune", "--gin_file=layouts/cpu_ep_2", lengths,
                       "--pretrained_model_dir", converted,
                       "--model_dir", tuned, "--steps", "12",
                       "--log_every", "1", "--learning_rate",
                       "0.003", "--save_checkpoints_steps", "12")
  assert result.returncode == 0, result.stderr[-3000:]
  losses = list(helpers.losses(result.stdout).values())
  assert len(losses) == 12, result.stdout
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses
  # Export the fine-tuned checkpoint (optimizer slots and all): Hugging
  # Face loads it and computes what switch_mtf computes.
  back = str(tmp_path / "back")
  result = helpers.cli("convert", "--to_hf", back, "--model_dir", tuned)
  assert result.returncode == 0, result.stderr[-3000:]
  model = transformers.SwitchTransformersForConditionalGeneration\
      .from_pretrained(back).eval()
  assert model.config.expert_capacity == 16
  rng = np.random.RandomState(3)
  inputs, targets = (rng.randint(2, 259, size=(BATCH, INPUTS)),
                     rng.randint(2, 259, size=(BATCH, TARGETS)))
  global VOCAB  # pylint: disable=global-statement
  saved, VOCAB = VOCAB, 384
  try:
    encoder, logits = _our_outputs(tuned, inputs, targets)
  finally:
    VOCAB = saved
  hf_encoder, hf_logits, _ = _hf_outputs(model, inputs, targets)
  _assert_close(encoder, hf_encoder)
  _assert_close(logits, hf_logits)


def _error(capsys, *argv):
  code = cli.main(list(argv))
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1, err
  return err[0]


def test_bad_input_is_one_line_and_leaves_no_output(tmp_path, capsys):
  out = str(tmp_path / "out")
  empty = tmp_path / "empty"
  empty.mkdir()
  assert "has no config.json" in _error(
      capsys, "convert", "--from_hf", str(empty), "--model_dir", out)
  hf_dir = tmp_path / "hf"
  _hf_model(str(hf_dir))
  capsys.readouterr()   # Hugging Face's progress bars
  config_path = hf_dir / "config.json"
  original = json.loads(config_path.read_text())

  def with_config(**changes):
    config_path.write_text(json.dumps(dict(original, **changes)))
    return _error(capsys, "convert", "--from_hf", str(hf_dir),
                  "--model_dir", out)

  assert "not a Switch Transformer checkpoint: config.json has " \
      "model_type='t5'" in with_config(model_type="t5")
  assert ("config/weights mismatch: shared.weight has shape [128, 32] but "
          "config.json implies [128, 40]") in with_config(d_model=40)
  assert "config/weights mismatch" in with_config(num_experts=8)
  # A sharded checkpoint with a shard missing.
  config_path.write_text(json.dumps(original))
  weights = hf_dir / "model.safetensors"
  (hf_dir / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {"shared.weight": "model-00001-of-00002.safetensors"}}))
  os.rename(weights, hf_dir / "model-00002-of-00002.safetensors")
  assert "shard model-00001-of-00002.safetensors is missing" in _error(
      capsys, "convert", "--from_hf", str(hf_dir), "--model_dir", out)
  # A truncated weights file: found before anything is written.
  os.remove(hf_dir / "model.safetensors.index.json")
  data = (hf_dir / "model-00002-of-00002.safetensors").read_bytes()
  weights.write_bytes(data[:len(data) // 2])
  assert "is truncated" in _error(
      capsys, "convert", "--from_hf", str(hf_dir), "--model_dir", out)
  assert not os.path.exists(out)
  assert not [n for n in os.listdir(tmp_path) if ".partial" in n]
  # An existing non-empty output is never overwritten.
  weights.write_bytes(data)
  taken = tmp_path / "taken"
  taken.mkdir()
  (taken / "keep").write_text("x")
  assert "already exists and is not empty" in _error(
      capsys, "convert", "--from_hf", str(hf_dir), "--model_dir", str(taken))
  assert os.listdir(taken) == ["keep"]
  assert "no checkpoint in --model_dir" in _error(
      capsys, "convert", "--to_hf", out, "--model_dir", str(empty))


def test_sparse_layers_follow_both_rules():
  assert hf_conversion.hf_sparse_layers(12, 6) == (1, 3, 5, 7, 9, 11)
  assert hf_conversion.hf_sparse_layers(4, 4) == (0, 1, 2, 3)
  # Hugging Face's "no sparse layer" still makes layer 1 sparse.
  assert hf_conversion.hf_sparse_layers(4, 0) == (1,)
  arch = hf_conversion.Architecture(
      vocab_size=128, d_model=8, d_kv=2, d_ff=8, num_heads=4,
      encoder_layers=4, decoder_layers=4, num_experts=2,
      encoder_sparse=(1, 3), decoder_sparse=())
  assert "encoder/SparseLayerStack.expert_every = 2" in (
      hf_conversion.gin_bindings(arch))
  with pytest.raises(ConfigError, match="decoder's Switch "
                     r"layers \[\] cannot be expressed"):
    hf_conversion.hf_config(arch)
  arch.decoder_sparse = (1, 2)   # HF step 3 would be (1,); ours has no (1, 2)
  with pytest.raises(ConfigError, match="no SparseLayerStack"):
    hf_conversion.gin_bindings(arch)


def _checkpoint_values(model_dir):
  reader = checkpoint_io.CheckpointReader(
      tf.train.latest_checkpoint(model_dir))
  return {name: reader.read(name) for name in reader.shapes}


def test_pytorch_pickles_and_bfloat16_safetensors_import(tmp_path):
  model = _hf_model(str(tmp_path / "hf"))
  expected = _checkpoint_values(_imported(tmp_path, "hf"))
  # The same weights as pytorch_model.bin (read with torch, lazily).
  (tmp_path / "bin").mkdir()
  torch.save(model.state_dict(), str(tmp_path / "bin" / "pytorch_model.bin"))
  os.link(str(tmp_path / "hf" / "config.json"),
          str(tmp_path / "bin" / "config.json"))
  from_bin = _checkpoint_values(_imported(tmp_path, "bin"))
  assert sorted(from_bin) == sorted(expected)
  for name, value in expected.items():
    np.testing.assert_array_equal(from_bin[name], value, err_msg=name)
  # bfloat16 safetensors (the larger released models): read exactly.
  model.to(torch.bfloat16).save_pretrained(str(tmp_path / "bf16"))
  from_bf16 = _checkpoint_values(_imported(tmp_path, "bf16"))
  rounded = model.shared.weight.detach().float().numpy()
  np.testing.assert_array_equal(from_bf16["shared/embedding"], rounded)
  assert not np.array_equal(rounded, expected["shared/embedding"])
  np.testing.assert_allclose(from_bf16["shared/embedding"],
                             expected["shared/embedding"], rtol=1e-2)


def _imported(tmp_path, name):
  out = str(tmp_path / (name + "_converted"))
  hf_conversion.import_hf(str(tmp_path / name), out, out=lambda line: None)
  return out


@pytest.mark.parametrize("preset,hub_config", [
    # google/switch-base-8's config.json (the fields that shape the model).
    ("models/released/switch_base_8", dict(
        d_model=768, d_kv=64, d_ff=3072, num_heads=12, num_layers=12,
        num_decoder_layers=12, num_sparse_encoder_layers=6,
        num_sparse_decoder_layers=6, num_experts=8, dense_act_fn="relu")),
    # switch-xxl-128: gated GELU, a separate output layer.
    ("models/released/switch_xxl_128", dict(
        d_model=4096, d_kv=64, d_ff=10240, num_heads=64, num_layers=24,
        num_decoder_layers=24, num_sparse_encoder_layers=12,
        num_sparse_decoder_layers=12, num_experts=128,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False))])
def test_released_configs_map_onto_our_released_presets(preset, hub_config):
  from switch_mtf.moe import accounting  # pylint: disable=g-import-not-at-top
  names = ["x.wi_0.weight"] if "feed_forward_proj" in hub_config else []
  arch = hf_conversion.architecture_from_hf(
      dict(hub_config, model_type="switch_transformers", vocab_size=32128),
      names)
  config.parse([preset])
  counted = accounting.count("bitransformer", 32100,
                             {"inputs": 16, "targets": 16}, 1)
  preset_variables = {v.name: tuple(d.size for d in v.dims)
                      for v in counted.variables}
  assert preset_variables == {t.ours: t.shape
                              for t in hf_conversion.tensor_map(arch)}
  # Hugging Face's routing by default; the paper's capacity factors on
  # request.
  assert "SwitchFFN.expert_capacity = 64" in hf_conversion.gin_bindings(arch)
  paper = hf_conversion.gin_bindings(arch, routing="paper")
  assert not [b for b in paper if "route_per_sequence" in b
              or "expert_capacity" in b]


def test_untied_checkpoints_convert_exactly_both_ways(tmp_path):
  """Untied (T5 v1.1-style, as switch-xxl): the export loads into Hugging
  Face with no missing tensor and gives the original model's outputs; an
  input embedding copy that differs from ``shared`` is refused in one
  line, not skipped."""
  hf_dir = str(tmp_path / "hf")
  model = _hf_model(hf_dir, tie_word_embeddings=False, expert_capacity=64)
  hf_conversion.import_hf(hf_dir, str(tmp_path / "ours"),
                          out=lambda line: None)
  hf_conversion.export_hf(str(tmp_path / "ours"), str(tmp_path / "back"),
                          out=lambda line: None)
  back, info = (
      transformers.SwitchTransformersForConditionalGeneration.from_pretrained(
          str(tmp_path / "back"), output_loading_info=True))
  assert not info["missing_keys"], info["missing_keys"]
  inputs, targets = _batch()
  expected = _hf_outputs(model, inputs, targets)
  got = _hf_outputs(back.eval(), inputs, targets)
  for want, have in zip(expected[:2], got[:2]):
    np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-6)

  damaged = str(tmp_path / "damaged")
  with torch.no_grad():
    model.decoder.embed_tokens.weight.add_(0.01)
  model.save_pretrained(damaged)
  with pytest.raises(ConfigError, match="decoder.embed_tokens.weight differs "
                     "from shared.weight"):
    hf_conversion.import_hf(damaged, str(tmp_path / "refused"),
                            out=lambda line: None)
  assert not os.path.exists(str(tmp_path / "refused"))
