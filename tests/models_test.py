"""Model presets, layouts and accounting (the models issue's tests)."""
import glob
import os

import mesh_tensorflow as mtf
import numpy as np
import pytest

from switch_mtf.moe import accounting
from switch_mtf.train import cluster
from switch_mtf.moe import layers
from switch_mtf import config
from switch_mtf.moe import layout as layout_lib
from switch_mtf.train import mesh_program
from switch_mtf.moe import models
from switch_mtf.errors import ConfigError

GIN = config.gin_dir()
INCLUDES = {"models/common.gin", "models/switch.gin",
            "models/released/common.gin"}
PRESETS = sorted(
    os.path.relpath(p, GIN) for p in glob.glob(os.path.join(GIN, "models",
                                                           "**", "*.gin"),
                                               recursive=True)
    if os.path.relpath(p, GIN) not in INCLUDES)
LAYOUTS = sorted(os.path.relpath(p, GIN)
                 for p in glob.glob(os.path.join(GIN, "layouts", "*.gin")))
SPAN = {"inputs": 512, "targets": 114}
# Pod layouts and the Table 9 model each is meant for (the others: Base).
LAYOUT_MODELS = {
    "layouts/tpu_v3_512_ep_mp_dp.gin": "models/switch_xxl_128.gin",
    "layouts/tpu_v3_2048_ep_dp.gin": "models/switch_c_2048.gin",
}


def _count(files, *params, vocab=32100, lengths=None, batch=128):
  config.parse([files] if isinstance(files, str) else files, params)
  mesh_shape, layout = config.mesh_and_layout()
  return accounting.count(config.query("utils.run.model_type"), vocab,
                          lengths or SPAN, batch, layout=layout,
                          mesh_shape=mesh_shape)


@pytest.mark.parametrize("preset,params,flops", [
    ("models/t5_base.gin", 223e6, 124e9),
    ("models/t5_large.gin", 739e6, 425e9),
    ("models/t5_xxl.gin", 11e9, 6.3e12),
    ("models/switch_base_128.gin", 7.4e9, 124e9),
    ("models/switch_xxl_128.gin", 395e9, 6.3e12),
    ("models/switch_c_2048.gin", 1571e9, 890e9),
])
def test_table_9_within_2_percent(preset, params, flops):
  report = _count(preset)
  assert report.total_parameters == pytest.approx(params, rel=0.02)
  assert report.flops_per_sequence == pytest.approx(flops, rel=0.02)


def test_switch_large_is_about_26_to_27_billion():
  report = _count("models/switch_large_128.gin")
  assert 26e9 <= report.total_parameters <= 27.5e9
  assert report.flops_per_sequence == pytest.approx(425e9, rel=0.02)


def test_switch_xxl_uses_128_experts_at_every_other_layer():
  report = _count("models/switch_xxl_128.gin")
  assert report.switch_layers == 24
  wi = [v for v in report.variables if v.name.endswith("SwitchFFN/wi_0/kernel")]
  assert {v.dims[0].size for v in wi} == {128}


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_parses_and_builds(preset):
  config.parse([preset])
  model_type = config.query("utils.run.model_type")
  model = models.build_model(model_type, 32100)
  names = [name for name, _ in models.stacks(model)]
  assert names == (["encoder", "decoder"] if model_type == "bitransformer"
                   else ["decoder"])
  for _, stack in models.stacks(model):
    assert stack.model_dim.size == config.query("%d_model")
    kinds = [type(layer).__name__ for layer in stack.layer_stack._layers]  # pylint: disable=protected-access
    # One feed-forward (dense or Switch) per block, every block attends.
    assert (kinds.count("DenseReluDense") + kinds.count("SwitchFFN")
            == config.query("%num_layers")), kinds
    assert kinds.count("SelfAttention") + kinds.count(
        "SwitchSelfAttention") == config.query("%num_layers"), kinds
    # Our stack (it draws the attention kernels with the gin init scale).
    assert isinstance(stack.layer_stack, models.SparseLayerStack)


def test_small_presets_are_flop_matched():
  dense = _count("models/small/dense.gin", vocab=512)
  switch = {e: _count("models/small/switch_%d.gin" % e, vocab=512)
            for e in (2, 4, 8, 16, 32)}
  for e, report in switch.items():
    assert report.flops_per_token == dense.flops_per_token, e
    assert report.router_flops_per_token > 0
    assert report.total_parameters > dense.total_parameters
  params = [switch[e].total_parameters for e in (2, 4, 8, 16, 32)]
  assert params == sorted(params)


def test_capacity_and_per_device_numbers():
  report = _count("models/switch_base_128.gin",
                  "utils.run.mesh_shape = 'batch:32'",
                  "utils.run.layout_rules = 'batch:batch,experts:batch'")
  # 128 sequences x 512 input tokens, groups of 1024 (a multiple of 32).
  assert (report.groups_per_batch, report.tokens_per_group) == (64, 1024)
  assert report.expert_capacity == {"train": 10, "eval": 16}
  experts = report.expert_parameters
  assert report.parameters_per_device == pytest.approx(
      report.total_parameters - experts + experts / 32, rel=1e-9)


@pytest.mark.parametrize("layout_file", LAYOUTS)
def test_every_layout_file_is_valid_for_its_mesh(layout_file):
  config.parse([layout_file])
  expanded = []
  if config.query("utils.run.mesh_devices") == "cluster":
    # layouts/multihost_*: as bound for 3 hosts of 2 GPUs (--cluster runs).
    devices = cluster.expand_layout(("h0:2222", "h1:2222", "h2:2222"),
                                    gpus_per_host=2)
    assert len(devices) == 6 and devices[5] == (
        "/job:worker/replica:0/task:2/device:GPU:1")
    expanded = ["utils.run.mesh_shape = %r" % config.query(
        "utils.run.mesh_shape"), "utils.run.mesh_devices = %r" % devices]
  mesh_shape = mtf.convert_to_shape(config.query("utils.run.mesh_shape"))
  rules = config.query("utils.run.layout_rules")
  mesh_names = {d.name for d in mesh_shape.dims}
  for pair in rules.split(","):
    assert pair.split(":")[1] in mesh_names, (layout_file, pair)
  devices = config.query("utils.run.mesh_devices")
  if devices is not None:
    assert len(devices) == mesh_shape.size
  # The model the layout is meant for, with one expert per device of the
  # expert mesh dimension (at least 8, a multiple of it), fits it: every tensor can be laid out.
  ways = layout_lib.split_ways(rules, mesh_shape,
                               mtf.Dimension("experts", 1))
  model = LAYOUT_MODELS.get(layout_file, "models/switch_base_8.gin")
  report = _count([model, layout_file],
                  "SwitchFFN.num_experts = %d" % (ways * -(-8 // ways)),
                  *expanded,
                  batch=mesh_shape.size * 8)
  assert report.mesh_shape == config.query("utils.run.mesh_shape")
  assert report.parameters_per_device <= report.total_parameters


def test_a_mesh_larger_than_its_devices_is_one_clear_error():
  config.parse(["models/switch_base_8.gin", "layouts/cpu_ep_2.gin"],
               ["utils.run.mesh_shape = 'batch:4'"])
  with pytest.raises(ConfigError, match="'batch:4' needs 4 devices but "
                     "utils.run.mesh_devices lists 2"):
    config.mesh_and_layout()


def test_decoder_only_lm_with_switch_layers():
  report = _count("models/small/switch_8.gin", "utils.run.model_type = 'lm'",
                  vocab=VOCAB, lengths={"inputs": 0, "targets": 32}, batch=4)
  assert report.switch_layers == 1
  with mesh_program.MeshProgram() as p:
    model = models.build_model("lm", VOCAB)
    dims = [mtf.Dimension("batch", 4), mtf.Dimension("length", 32)]
    targets = p.import_array(np.ones((4, 32), np.int32), dims)
    model.call_simple(inputs=targets, targets=targets, compute_loss=True,
                      mode="train", variable_dtype=mesh_program.FLOAT32)
    built = {v.name: [d.size for d in v.shape.dims]
             for v in p.graph.trainable_variables}
  assert {v.name: [d.size for d in v.dims] for v in report.variables} == built


def test_impossible_layout_fails_before_any_graph():
  # 8 experts cannot be split over 32 TPU cores.
  with pytest.raises(ConfigError, match="'experts' \\(size 8\\) cannot be "
                     "split 32 ways"):
    _count(["models/switch_base_8.gin", "layouts/tpu_v3_32_ep_dp.gin"])


def test_two_dims_of_one_tensor_on_one_mesh_dim_fail_before_any_graph():
  with pytest.raises(ConfigError, match="both 'experts' and 'expert_hidden' "
                     "on mesh dimension 'model'"):
    _count("models/switch_base_8.gin",
           "utils.run.mesh_shape = 'batch:2,model:2'",
           "utils.run.layout_rules = 'batch:batch,experts:model,"
           "expert_hidden:model'")


# ---------------------------------------------------------------------------
# Against the real graph.

VOCAB = 64
LENGTHS = {"inputs": 32, "targets": 8}


def _model_loss(p, preset_params, batch, layout, mesh_shape, mode="train"):
  model = models.build_model("bitransformer", VOCAB, layout, mesh_shape)
  rng = np.random.RandomState(0)
  feats = {k: p.import_array(
      rng.randint(1, VOCAB, size=(batch, n)).astype(np.int32),
      [mtf.Dimension("batch", batch), mtf.Dimension("length", n)])
           for k, n in LENGTHS.items()}
  del preset_params
  _, loss = model.call_simple(
      inputs=feats["inputs"], targets=feats["targets"], compute_loss=True,
      mode=mode, variable_dtype=mesh_program.FLOAT32)
  return loss


@pytest.mark.parametrize("preset", ["models/small/dense.gin",
                                    "models/small/switch_8.gin"])
def test_accounting_matches_the_built_graph(preset):
  report = _count(preset, vocab=VOCAB, lengths=LENGTHS, batch=4)
  with mesh_program.MeshProgram() as p:
    _model_loss(p, None, 4, "", "")
    built = {v.name: [d.size for d in v.shape.dims]
             for v in p.graph.trainable_variables}
  counted = {v.name: [d.size for d in v.dims] for v in report.variables}
  assert counted == built
  assert report.total_parameters == sum(int(np.prod(s))
                                        for s in built.values())


def test_attention_kernels_follow_the_gin_init_scale():
  """Paper §2.4: Mesh TF's attention kernels (encoder self-attention,
  decoder cross-attention) are truncated normals with std sqrt(s / fan_in)
  (q also x d_kv^-1/2), s the gin scale, like the feed-forward kernels;
  ``attention_init_scale.scale = 1.0`` keeps upstream's std."""
  everywhere = "mesh_tensorflow.layers.VarianceScalingInitializer.scale"
  # case: (attention scale, feed-forward scale, gin bindings)
  cases = {"0.1": (0.1, 0.1, ["%s = 0.1" % everywhere]),
           "1.0": (1.0, 1.0, ["%s = 1.0" % everywhere]),
           "upstream attention": (1.0, 0.1, [
               "%s = 0.1" % everywhere, "attention_init_scale.scale = 1.0"])}
  d_model, inner = 128, 4 * 32   # small/dense: heads 4, d_kv 32
  truncated = 0.8796   # std of a normal truncated at 2 std
  for case, (scale, ffn_scale, bindings) in cases.items():
    config.parse(["models/small/dense.gin"], bindings)
    with mesh_program.MeshProgram() as p:
      loss = _model_loss(p, None, 2, "", "")
      values = p.run({"loss": loss}, fetch_variables=True)["variables"]
    block = "encoder/block_000/layer_000/SelfAttention/"
    cross = "decoder/block_000/layer_001/EncDecAttention/"
    kernels = {block + "q": d_model * 32, block + "k": d_model,
               block + "o": inner, cross + "v": d_model}
    for name, fan_in in kernels.items():
      sigma = (scale / fan_in) ** 0.5
      assert np.std(values[name]) == pytest.approx(truncated * sigma,
                                                   rel=0.03), (case, name)
      assert np.max(np.abs(values[name])) <= 2 * sigma + 1e-7, (case, name)
    # The feed-forward kernels follow VarianceScalingInitializer alone.
    wi = values["encoder/block_000/layer_001/DenseReluDense/wi_0/kernel"]
    assert np.std(wi) == pytest.approx(
        truncated * (ffn_scale / d_model) ** 0.5, rel=0.03), case


SMALL = sorted(p for p in PRESETS if p.startswith("models/small/"))


@pytest.mark.parametrize("preset", SMALL)
def test_small_preset_trains_a_step_on_two_devices(preset):
  config.parse([preset, "layouts/cpu_ep_2.gin"])
  layout, mesh_shape = "batch:batch,experts:batch", "batch:2"
  with mesh_program.MeshProgram(mesh_shape, layout) as p:
    loss = _model_loss(p, None, 4, layout, mesh_shape)
    variables = p.graph.trainable_variables
    grads = mtf.gradients([loss], [v.outputs[0] for v in variables])
    updates = mtf.optimize.AdafactorOptimizer(
        learning_rate=0.01).apply_grads(grads, variables)
    losses = [float(o["loss"]) for o in p.run(
        {"loss": loss}, extra_ops=updates, steps=3)]
  assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_same_loss_on_one_device_and_four_way_expert_parallel():
  # The same groups on 1 and 4 devices: 16 tokens (the decoder's 8 x 8
  # targets are 16 per device), so the same capacity and the same per-group
  # load-balancing losses; no jitter (its random numbers are drawn per
  # slice, so they differ between the meshes by design).
  params = ["SwitchFFN.group_size = 16", "SwitchRouter.policy_train = 'argmax'"]
  config.parse(["models/small/switch_8.gin"], params)
  with mesh_program.MeshProgram() as p:
    loss = _model_loss(p, None, 8, "", "")
    one = p.run({"loss": loss}, fetch_variables=True)
  layout, mesh_shape = "batch:batch,experts:batch", "batch:4"
  config.parse(["models/small/switch_8.gin", "layouts/cpu_ep_4.gin"], params)
  with mesh_program.MeshProgram(mesh_shape, layout) as p:
    loss = _model_loss(p, None, 8, layout, mesh_shape)
    four = p.run({"loss": loss}, variable_values=one["variables"])
  assert float(four["loss"]) == pytest.approx(float(one["loss"]), rel=1e-5)


def test_parsing_a_preset_keeps_the_working_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config.parse(["models/small/switch_8", "layouts/cpu_ep_2"])
  assert os.getcwd() == str(tmp_path)
  assert config.query("SwitchFFN.num_experts") == 8   # its include found


def test_an_older_operative_config_still_builds_its_model():
  """tests/data/operative_config_2026_12.gin: written by `switch-mtf
  reproduce` (small/switch_8) before any module move; its gin imports and
  module-qualified names must keep resolving (distill and eval re-read
  these files from model directories)."""
  from switch_mtf.train import run  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  config.parse([os.path.join(os.path.dirname(__file__), "data",
                             "operative_config_2026_12.gin")])
  model = models.build_model("bitransformer", 260)
  experts = {}
  for name, stack in models.stacks(model):
    experts[name] = [layer.config.num_experts
                     for layer in stack.layer_stack._layers  # pylint: disable=protected-access
                     if isinstance(layer, layers.SwitchFFN)]
  assert experts == {"encoder": [8], "decoder": [8]}
