"""switch-mtf train / eval through t5's MtfModel (part of the training issue):
train on a 2-device expert-parallel mesh, resume from the last checkpoint,
evaluate the checkpoint on a 1-device layout, and the bad-input paths."""
import os
import re
import subprocess
import sys

import pytest

MODEL = ["--gin_file=models/small/switch_8",
         "--gin_param=utils.run.sequence_length = "
         "{'inputs': 64, 'targets': 16}"]


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "switch_mtf.cli"] + list(args),
                        capture_output=True, text=True, check=False)


def _losses(output):
  return [float(v) for v in re.findall(r"tf_loss\[([0-9.naninf]+)\]", output)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp("model"))
  first = _cli("train", *MODEL, "--gin_file=layouts/cpu_ep_2",
               "--model_dir", model_dir, "--steps", "4",
               "--save_checkpoints_steps", "2")
  assert first.returncode == 0, first.stderr[-3000:]
  return model_dir, first


def test_train_writes_checkpoints_and_config(trained):
  model_dir, first = trained
  files = os.listdir(model_dir)
  assert "model.ckpt-4.index" in files and "model.ckpt-2.index" in files
  assert "operative_config.gin" in files
  with open(os.path.join(model_dir, "operative_config.gin")) as f:
    assert "SwitchFFN.num_experts = 8" in f.read()
  losses = _losses(first.stderr + first.stdout)
  assert len(losses) == 4 and losses[-1] < losses[0]


def test_train_writes_router_health_to_tensorboard(trained):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  model_dir, _ = trained
  tags = set()
  for name in os.listdir(model_dir):
    if name.startswith("events.out.tfevents"):
      for event in tf.compat.v1.train.summary_iterator(
          os.path.join(model_dir, name)):
        tags.update(v.tag for v in event.summary.value)
  for stack, layer in (("encoder", "layer_001"), ("decoder", "layer_002")):
    for metric in ("fraction_dropped", "aux_loss", "max_expert_load",
                   "router_entropy"):
      assert "%s/block_001/%s/SwitchFFN/router/%s" % (
          stack, layer, metric) in tags


def test_resume_continues_from_the_last_checkpoint(trained):
  model_dir, first = trained
  second = _cli("train", *MODEL, "--gin_file=layouts/cpu_ep_2",
                "--model_dir", model_dir, "--steps", "6",
                "--save_checkpoints_steps", "2")
  assert second.returncode == 0, second.stderr[-3000:]
  assert "resuming from the checkpoint at step 4" in second.stdout
  assert "model.ckpt-6.index" in os.listdir(model_dir)
  resumed = _losses(second.stderr + second.stdout)
  assert len(resumed) == 2   # steps 5 and 6 only
  assert resumed[0] < _losses(first.stderr + first.stdout)[0]


def test_eval_on_another_layout(trained):
  model_dir, _ = trained
  result = _cli("eval", *MODEL, "--gin_file=layouts/cpu_1",
                "--model_dir", model_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  match = re.search(r"validation neg_log_perplexity (-?[0-9.]+) \((\d+) "
                    r"examples, (\d+) target tokens\)", result.stdout)
  assert match, result.stdout
  assert -7.0 < float(match.group(1)) < 0.0
  assert int(match.group(2)) > 100


@pytest.mark.parametrize("args,message", [
    (["eval", "--gin_file=layouts/cpu_1"], "no checkpoint in --model_dir"),
    (["train", "--gin_file=layouts/cpu_1", "--task=no_such_task",
      "--steps=1"], "unknown task or mixture 'no_such_task'"),
    (["train", "--gin_file=layouts/cpu_1", "--steps=1",
      "--gin_param=SwitchFFN.num_expert = 4"],
     "doesn't have a parameter named 'num_expert'"),
    (["train", "--steps=1"], "no mesh: add a layout"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
  result = _cli(*(args[:1] + MODEL + args[1:]),
                "--model_dir", str(tmp_path / "m"))
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("switch-mtf: error:") and message in last, last


def test_finetune_from_the_checkpoint_with_expert_dropout(trained, tmp_path):
  model_dir, _ = trained
  new_dir = str(tmp_path / "finetuned")
  result = _cli("finetune", *MODEL, "--gin_file=layouts/cpu_ep_2",
                "--pretrained_model_dir", model_dir, "--model_dir", new_dir,
                "--steps", "2", "--save_checkpoints_steps", "2")
  assert result.returncode == 0, result.stderr[-3000:]
  pretrained = max(int(f.split("-")[1].split(".")[0])
                   for f in os.listdir(model_dir) if f.endswith(".index"))
  assert "model.ckpt-%d.index" % (pretrained + 2) in os.listdir(new_dir)
  with open(os.path.join(new_dir, "operative_config.gin")) as f:
    operative = f.read()
  assert "encoder/SwitchFFN.expert_dropout_rate = 0.4" in operative
  assert "\ndropout_rate = 0.1" in operative


def test_predict_decodes_each_input_line(trained, tmp_path):
  model_dir, _ = trained
  inputs = tmp_path / "inputs.txt"
  inputs.write_text("Gazios Gidaen was a merchant born in\nThe city of\n")
  outputs = tmp_path / "outputs.txt"
  result = _cli("predict", *MODEL, "--gin_file=layouts/cpu_1",
                "--model_dir", model_dir, "--input_file", str(inputs),
                "--output_file", str(outputs))
  assert result.returncode == 0, result.stderr[-3000:]
  written = [p for p in os.listdir(tmp_path) if p.startswith("outputs.txt")]
  assert written
  with open(tmp_path / written[0]) as f:
    assert len(f.read().splitlines()) == 2


def test_a_checkpoint_of_another_model_is_one_line_and_kept(trained):
  model_dir, _ = trained

  def checkpoint_state():
    state = {}
    for name in os.listdir(model_dir):
      if name.startswith("model.ckpt") or name in ("checkpoint",
                                                   "operative_config.gin"):
        with open(os.path.join(model_dir, name), "rb") as f:
          state[name] = f.read()
    return state

  before = checkpoint_state()
  result = _cli("train", "--gin_file=models/small/switch_4",
                "--gin_param=utils.run.sequence_length = "
                "{'inputs': 64, 'targets': 16}",
                "--gin_file=layouts/cpu_ep_2", "--model_dir", model_dir,
                "--steps", "20")
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert "written by a different model" in last and "[8," in last, last
  assert "Traceback" not in result.stderr
  assert checkpoint_state() == before   # no checkpoint written or changed


def test_score_writes_one_log_likelihood_per_line(trained, tmp_path):
  model_dir, _ = trained
  (tmp_path / "in.txt").write_text("Gazios Gidaen was\nThe city of\n")
  (tmp_path / "out.txt").write_text("a merchant\nKistaezi\n")
  scores = tmp_path / "scores.txt"
  result = _cli("score", *MODEL, "--gin_file=layouts/cpu_1",
                "--model_dir", model_dir,
                "--inputs_file", str(tmp_path / "in.txt"),
                "--targets_file", str(tmp_path / "out.txt"),
                "--output_file", str(scores))
  assert result.returncode == 0, result.stderr[-3000:]
  values = [float(v) for v in scores.read_text().split()]
  assert len(values) == 2 and all(v < 0 for v in values)
