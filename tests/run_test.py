"""switch-mtf train / eval through t5's MtfModel (part of the training issue):
train on a 2-device expert-parallel mesh, resume from the last checkpoint,
evaluate the checkpoint on a 1-device layout, and the bad-input paths."""
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
import tensorflow as tf

import helpers

MODEL = ["--gin_file=models/small/switch_8",
         "--gin_param=utils.run.sequence_length = "
         "{'inputs': 64, 'targets': 16}"]


def _checkpoint_state(model_dir):
  state = {}
  for name in os.listdir(model_dir):
    if name.startswith("model.ckpt") or name == "checkpoint":
      with open(os.path.join(model_dir, name), "rb") as f:
        state[name] = f.read()
  return state


TRAIN = ["train", *MODEL, "--gin_file=layouts/cpu_ep_2", "--log_every=1",
         "--router_every=3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp("model"))
  first = helpers.cli(*TRAIN, "--model_dir", model_dir, "--steps", "6",
                      "--save_checkpoints_steps", "2")
  assert first.returncode == 0, first.stderr[-3000:]
  return model_dir, first


def test_train_writes_checkpoints_and_config(trained):
  model_dir, first = trained
  files = os.listdir(model_dir)
  assert "model.ckpt-6.index" in files and "model.ckpt-2.index" in files
  assert "operative_config.gin" in files
  # No graph files beside the checkpoints (graph.pbtxt, model.ckpt-N.meta:
  # seconds per start, 10 MB per checkpoint); TensorBoard's graph is in the
  # events file, once (upstream wrote it twice and two MetaGraphs), and the
  # scalar summaries of step 1 are there too.
  assert not [f for f in files if f == "graph.pbtxt" or f.endswith(".meta")]
  events = [event for name in files if name.startswith("events.out.tfevents")
            for event in tf.compat.v1.train.summary_iterator(
                os.path.join(model_dir, name))]
  assert sum(bool(event.graph_def) for event in events) == 1
  assert not any(event.meta_graph_def for event in events)
  assert {"loss"} <= {value.tag for event in events if event.step == 1
                      for value in event.summary.value}
  with open(os.path.join(model_dir, "operative_config.gin")) as f:
    assert "SwitchFFN.num_experts = 8" in f.read()
  losses = helpers.losses(first.stdout)
  assert sorted(losses) == [1, 2, 3, 4, 5, 6] and losses[6] < losses[1]



def test_eval_reads_an_operative_config_written_before_the_move(trained,
                                                                 tmp_path):
  """A model dir of before the subpackage move: its operative_config.gin
  (tests/data, written by switch_mtf 0c2f8ae for this very model) imports
  switch_mtf.layers, .models, .routing and .distillation, which now live in
  switch_mtf.moe and switch_mtf.train.  It still parses and evaluates."""
  model_dir, _ = trained
  old_config = os.path.join(os.path.dirname(__file__), "data",
                            "operative_config_2026_12.gin")
  with open(old_config) as f:
    assert "import switch_mtf.layers as" in f.read()
  copy = str(tmp_path / "old_model_dir")
  shutil.copytree(model_dir, copy)
  shutil.copy(old_config, os.path.join(copy, "operative_config.gin"))
  result = helpers.cli(
      "eval", "--gin_file=" + os.path.join(copy, "operative_config.gin"),
      "--gin_file=layouts/cpu_1", "--model_dir", copy)
  assert result.returncode == 0, result.stderr[-3000:]
  assert re.search(r"^step \d+: validation neg_log_perplexity -\d+\.\d+ ",
                   result.stdout, re.M), result.stdout

def test_train_prints_progress_and_router_health(trained):
  _, first = trained
  line = re.search(r"^step 3/6  loss [0-9.]+  aux ([0-9.]+)  [0-9.]+ steps/s"
                   r"  [0-9]+ tokens/s  ETA \dm\d\ds$", first.stdout, re.M)
  assert line, first.stdout
  assert 0.9 < float(line.group(1)) < 4.0   # N * sum(f * P): 1 if balanced
  health = re.findall(r"^  router (\S+): dropped ([0-9.]+)%, expert load max "
                      r"([0-9.]+) min ([0-9.]+), entropy ([0-9.]+)",
                      first.stdout, re.M)
  # Two Switch layers (encoder and decoder), at steps 3 and 6.
  assert len(health) == 4, first.stdout
  for _, dropped, high, low, entropy in health:
    assert 0 <= float(dropped) < 100
    assert 0 <= float(low) <= 1 / 8 <= float(high) <= 1
    assert 0 < float(entropy) <= 2.08   # at most ln(8)


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


def test_sigkill_then_resume_gives_the_uninterrupted_losses(trained,
                                                            tmp_path):
  """Same seed, same losses; killed with SIGKILL right after its first
  checkpoint and started again, training continues exactly as the
  uninterrupted run (data skipped, step-keyed noise, float32 checkpoints)."""
  _, first = trained
  reference = helpers.losses(first.stdout)
  model_dir = str(tmp_path / "killed")
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  process = subprocess.Popen(
      [*helpers.CLI, *TRAIN, "--model_dir", model_dir, "--steps", "1000",
       "--save_checkpoints_steps", "1"],
      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
  deadline = time.time() + 300
  index = os.path.join(model_dir, "checkpoint")
  while time.time() < deadline and process.poll() is None:
    # Step 0's checkpoint is written at the start; step 1's line is printed
    # after step 1's checkpoint: wait for step 2's.
    if os.path.exists(index) and re.search(
        r'^model_checkpoint_path: "model.ckpt-([2-9]|\d\d+)"',
        open(index).read(), re.M):
      break
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  killed_output = process.communicate()[0]
  assert process.returncode == -signal.SIGKILL
  killed = helpers.losses(killed_output)
  shared = [s for s in killed if s in reference]
  assert shared and all(killed[s] == reference[s] for s in shared)
  start = max(int(f.split("-")[1].split(".")[0])
              for f in os.listdir(model_dir) if f.endswith(".index"))
  if start + 2 > max(reference):
    # The kill came late (a slow machine): extend the uninterrupted
    # reference rather than skip.
    longer = helpers.cli(*TRAIN, "--model_dir", str(tmp_path / "reference"),
                         "--steps", str(start + 2))
    assert longer.returncode == 0, longer.stderr[-3000:]
    reference = helpers.losses(longer.stdout)
  restored = [os.path.join(model_dir, name) for name in os.listdir(model_dir)
              if name.startswith("model.ckpt-%d." % start)]
  written = {path: (os.stat(path).st_ino, os.stat(path).st_mtime_ns)
             for path in restored}
  resumed = helpers.cli(*TRAIN, "--model_dir", model_dir, "--steps",
                        str(start + 2), "--save_checkpoints_steps", "1")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming from the checkpoint at step %d" % start in resumed.stdout
  # The checkpoint it restored is not written again at the start (compat 7).
  assert len(written) >= 2 and written == {
      path: (os.stat(path).st_ino, os.stat(path).st_mtime_ns)
      for path in restored}
  losses = helpers.losses(resumed.stdout)
  assert sorted(losses) == [start + 1, start + 2]
  for step, loss in losses.items():
    assert loss == reference[step], (step, loss, reference[step])


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(trained,
                                                               tmp_path):
  model_dir = str(tmp_path / "diverged")
  shutil.copytree(trained[0], model_dir)
  before = _checkpoint_state(model_dir)
  result = helpers.cli(*TRAIN, "--model_dir", model_dir, "--steps", "10",
                       "--save_checkpoints_steps", "1",
                       "--learning_rate", "inf")
  assert result.returncode == 1, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("switch-mtf: error:") and "NaN" in last, last
  assert "Traceback" not in result.stderr
  assert _checkpoint_state(model_dir) == before


def test_eval_on_another_layout(trained):
  model_dir, _ = trained
  result = helpers.cli("eval", *MODEL, "--gin_file=layouts/cpu_1",
                       "--model_dir", model_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  match = re.search(r"validation neg_log_perplexity (-?[0-9.]+) \((\d+) "
                    r"examples, (\d+) target tokens\)", result.stdout)
  assert match, result.stdout
  assert -12.0 < float(match.group(1)) < 0.0   # a few steps: see cli_test
  assert int(match.group(2)) > 100


@pytest.mark.parametrize("args,message", [
    (["eval", "--gin_file=layouts/cpu_1"], "no checkpoint in --model_dir"),
    (["train", "--gin_file=layouts/cpu_1", "--task=no_such_task",
      "--steps=1"], "unknown task or mixture 'no_such_task'"),
    (["train", "--gin_file=layouts/cpu_1", "--steps=1",
      "--gin_param=SwitchFFN.num_expert = 4"],
     "doesn't have a parameter named 'num_expert'"),
    (["train", "--steps=1"], "no mesh: add a layout"),
    (["train", "--gin_file=layouts/cpu_1", "--steps=1", "--gin_param="
      "utils.get_variable_dtype.activation_dtype = 'bfloat16'"],
     "activation dtype bfloat16 needs GPU or TPU devices"),
    (["train", "--gin_file=layouts/cpu_1", "--steps=1",
      "--module_import=empty_task", "--task=switch_mtf_test_empty"],
     "split of task 'switch_mtf_test_empty' has no examples"),
    (["train", "--gin_file=layouts/cpu_1", "--steps=1",
      "--module_import=no_such_module"], "--module_import=no_such_module"),
    (["train", "--gin_file=layouts/cpu_1", "--steps=1", "--task=glue_mrpc",
      "--vocabulary=embedded", "--tfds_data_dir=/nonexistent/tfds"],
     "TFDS dataset glue/mrpc:2.0.0 is not prepared in /nonexistent/tfds"),
    (["train", "--gin_file=layouts/cpu_1", "--steps=1",
      "--task=local_span_corruption", "--vocabulary=bytes",
      "--gin_param=local_data.pretraining = {'train': '/nonexistent/*.json'}"],
     "no file matches '/nonexistent/*.json'"),
    (["train", "--gin_file=layouts/cpu_1", "--steps=1", "--task=glue_mrpc",
      "--vocabulary=/nonexistent/spm.model"],
     "cannot read the SentencePiece vocabulary /nonexistent/spm.model"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
  result = helpers.cli(*(args[:1] + MODEL + args[1:]),
                       "--model_dir", str(tmp_path / "m"), env=env)
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("switch-mtf: error:") and message in last, last


QA = "--task=switch_mtf_embedded_closed_book_qa"


def test_finetune_on_qa_with_expert_dropout_then_task_metrics(trained,
                                                             tmp_path):
  model_dir, _ = trained
  new_dir = str(tmp_path / "finetuned")
  result = helpers.cli("finetune", *MODEL, "--gin_file=layouts/cpu_ep_2", QA,
                       "--pretrained_model_dir", model_dir,
                       "--model_dir", new_dir, "--steps", "2",
                       "--save_checkpoints_steps", "2")
  assert result.returncode == 0, result.stderr[-3000:]
  pretrained = max(int(f.split("-")[1].split(".")[0])
                   for f in os.listdir(model_dir) if f.endswith(".index"))
  assert "model.ckpt-%d.index" % (pretrained + 2) in os.listdir(new_dir)
  with open(os.path.join(new_dir, "operative_config.gin")) as f:
    operative = f.read()
  assert "encoder/SwitchFFN.expert_dropout_rate = 0.4" in operative
  assert "\ndropout_rate = 0.1" in operative
  # eval decodes the validation questions and applies the task's metric.
  result = helpers.cli("eval", *MODEL, "--gin_file=layouts/cpu_1", QA,
                       "--model_dir", new_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  match = re.search(r"^step (\d+): validation "
                    r"switch_mtf_embedded_closed_book_qa em ([0-9.]+)$",
                    result.stdout, re.M)
  assert match, result.stdout
  eval_dir = os.path.join(new_dir, "validation_eval")
  name = "switch_mtf_embedded_closed_book_qa_%s_predictions" % match.group(1)
  # t5 writes the lines joined by "\n", with no newline after the last.
  with open(os.path.join(eval_dir, name)) as f:
    predictions = f.read().split("\n")
  with open(os.path.join(eval_dir,
                         "switch_mtf_embedded_closed_book_qa_targets")) as f:
    targets = f.read().split("\n")
  from switch_mtf.tasks import corpus  # pylint: disable=g-import-not-at-top
  count = len(corpus.closed_book_qa()["validation"])
  assert len(predictions) == len(targets) == count
  # SQuAD exact match: answers compared after normalization.
  from t5.evaluation import qa_utils  # pylint: disable=g-import-not-at-top
  expected = 100 * sum(
      qa_utils.normalize_squad(p) == qa_utils.normalize_squad(t)
      for p, t in zip(predictions, targets)) / count
  assert float(match.group(2)) == pytest.approx(expected, abs=1e-3)
  with open(os.path.join(eval_dir, "results-%s.json" % match.group(1))) as f:
    results = json.load(f)
  qa = results["metrics"]["switch_mtf_embedded_closed_book_qa"]
  assert qa["em"] == pytest.approx(expected, abs=1e-3)
  assert 0 <= qa["f1"] <= 100
  assert results["examples"] == count and results["neg_log_perplexity"] < 0


def test_predict_decodes_each_input_line(trained, tmp_path):
  model_dir, _ = trained
  inputs = tmp_path / "inputs.txt"
  inputs.write_text("Gazios Gidaen was a merchant born in\nThe city of\n")
  outputs = tmp_path / "outputs.txt"
  result = helpers.cli("predict", *MODEL, "--gin_file=layouts/cpu_1",
                       "--model_dir", model_dir, "--input_file", str(inputs),
                       "--output_file", str(outputs))
  assert result.returncode == 0, result.stderr[-3000:]
  written = [p for p in os.listdir(tmp_path) if p.startswith("outputs.txt")]
  assert written
  with open(tmp_path / written[0]) as f:
    assert len(f.read().splitlines()) == 2


def test_a_checkpoint_of_another_model_is_one_line_and_kept(trained):
  model_dir, _ = trained

  before = _checkpoint_state(model_dir)
  result = helpers.cli("train", "--gin_file=models/small/switch_4",
                       "--gin_param=utils.run.sequence_length = "
                       "{'inputs': 64, 'targets': 16}",
                       "--gin_file=layouts/cpu_ep_2", "--model_dir", model_dir,
                       "--steps", "20")
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert "written by a different model" in last, last
  assert "[128, 8] in the checkpoint, [128, 4] in this model" in last, last
  assert "Traceback" not in result.stderr
  assert _checkpoint_state(model_dir) == before   # nothing written/changed


def test_score_writes_one_log_likelihood_per_line(trained, tmp_path):
  model_dir, _ = trained
  (tmp_path / "in.txt").write_text("Gazios Gidaen was\nThe city of\n")
  (tmp_path / "out.txt").write_text("a merchant\nKistaezi\n")
  scores = tmp_path / "scores.txt"
  result = helpers.cli("score", *MODEL, "--gin_file=layouts/cpu_1",
                       "--model_dir", model_dir,
                       "--inputs_file", str(tmp_path / "in.txt"),
                       "--targets_file", str(tmp_path / "out.txt"),
                       "--output_file", str(scores))
  assert result.returncode == 0, result.stderr[-3000:]
  values = [float(v) for v in scores.read_text().split()]
  assert len(values) == 2 and all(v < 0 for v in values)


def test_train_with_serialized_microbatches(tmp_path):
  """A batch over Mesh TF's 2048 tokens per microbatch is trained as a loop
  over microbatches; the router summaries made inside that loop must not
  break the Estimator's summary merge (they did: a crash at the start)."""
  result = helpers.cli(*TRAIN, "--model_dir", str(tmp_path / "m"),
                       "--steps", "2", "--batch_size", "32")
  assert result.returncode == 0, result.stderr[-3000:]
  losses = helpers.losses(result.stdout)
  assert sorted(losses) == [1, 2] and all(0 < v < 20 for v in losses.values())


def test_a_gpu_layout_under_tensorflows_cpu_build_is_one_error(tmp_path):
  """bin/'s default TensorFlow is tensorflow-cpu: a GPU layout would run on
  the CPU (soft placement), so it is refused with the way to the CUDA
  build; cluster devices are the workers' and are not judged here."""
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  from switch_mtf import config  # pylint: disable=g-import-not-at-top
  from switch_mtf.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from switch_mtf.train import run  # pylint: disable=g-import-not-at-top
  if tf.test.is_built_with_cuda():
    pytest.skip("TensorFlow's CUDA build: GPU layouts are allowed")
  config.parse(["models/small/switch_8", "layouts/gpu_1"])
  with pytest.raises(ConfigError, match=r"places the mesh on gpu:0, but "
                     r"this TensorFlow is its CPU build \(tensorflow-cpu\): "
                     r"install the CUDA build with SWITCH_MTF_TENSORFLOW=gpu"):
    run.make_model(str(tmp_path), 4, {"inputs": 16, "targets": 4})
  run._check_gpu_build(  # pylint: disable=protected-access
      ["cpu:0", "/job:worker/replica:0/task:1/device:GPU:0"])
