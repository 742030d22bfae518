"""The reproduction (switch_mtf/reproduction/plan.py, report.py, runs.py):
the analysis on hand-made records, and `switch-mtf reproduce` end to end on
a local text corpus (not the embedded one), resumed from its records."""
import json
import os

import numpy as np
import pytest

import helpers
from switch_mtf.reproduction import plan as rp


def _record(evaluations, seconds_per_step, steps=100, loss0=4.0, slope=0.01):
  history = [dict(step=s, mean_loss=loss0 - slope * s,
                  seconds=s * seconds_per_step)
             for s in range(10, steps + 1, 10)]
  return dict(evaluations=[dict(step=s, neg_log_perplexity=v)
                           for s, v in evaluations], history=history)


def test_crossing_step_interpolates_between_evaluations():
  evaluations = _record([(50, -3.0), (100, -2.5)], 1)["evaluations"]
  assert rp.crossing_step(evaluations, -2.75) == pytest.approx(75)
  assert rp.crossing_step(evaluations, -3.5) == 50    # already at the first
  assert rp.crossing_step(evaluations, -2.0) is None   # never


def test_speedups_in_steps_and_time():
  records = {
      "dense": _record([(50, -3.0), (100, -2.8)], 0.1),
      # reaches the dense final -2.8 at step 45 (-3.2 at 25, -2.7 at 50),
      # twice as slow per step (9 s against the dense 10 s).  The dense
      # smoothed training loss ends at 4 - 0.01 * 80 = 3.2; this one's
      # (mean of the last 5 windows) is 4.19 - 0.02 * (s - 20): below 3.2
      # from step 70.
      "switch_8": _record([(25, -3.2), (50, -2.7), (100, -2.4)], 0.2,
                          slope=0.02, loss0=4.19),
  }
  row = rp.speedups(records)["switch_8"]
  assert row["steps_to_dense"] == pytest.approx(45)
  assert row["step_speedup"] == pytest.approx(100 / 45)
  assert row["time_speedup"] == pytest.approx(10 / 9)
  assert row["loss_steps_to_dense"] == 70
  assert row["loss_step_speedup"] == pytest.approx(100 / 70)


def test_scaled_keeps_the_proportions():
  full = rp.FULL
  scale = rp.scaled(full, full.steps // 2)
  assert (scale.steps, scale.short_steps, scale.cost_steps,
          scale.finetune_steps) == (full.steps // 2, full.short_steps // 2,
                                    full.cost_steps // 2,
                                    full.finetune_steps // 2)
  assert scale.experts == full.experts and scale.seeds == full.seeds
  assert rp.scaled(rp.QUICK, 4).cost_steps == 2   # at least 2 steps


def test_shared_runs_are_identical_specs():
  for scale in (rp.QUICK, rp.FULL):
    runs = {}
    for name in rp.EXPERIMENTS:
      for spec in rp.specs(name, scale):
        assert runs.setdefault(spec.name, spec) == spec, spec.name


def test_unknown_experiment_is_a_config_error():
  from switch_mtf.errors import ConfigError  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match="unknown experiment 'speed'"):
    rp.reproduce(["speed"], output_dir="/nonexistent")


WORDS = ("river stone lamp market winter garden copper violin harbor maple "
         "tower ribbon lantern meadow signal orbit canvas feather").split()


def _corpus(directory, lines, seed):
  rng = np.random.RandomState(seed)
  with open(directory, "w") as f:
    for _ in range(lines):
      f.write(" ".join(rng.choice(WORDS, 40)) + ".\n")


def test_reproduce_on_a_local_corpus_then_resume(tmp_path):
  """Natural text in miniature: the user's own text files, a SentencePiece
  vocabulary trained on them, the experiments, then a rerun that reuses
  every finished run."""
  _corpus(tmp_path / "train.txt", 400, 0)
  _corpus(tmp_path / "validation.txt", 20, 1)
  out = tmp_path / "report"
  args = ["reproduce", "--quick",
          "--steps", "12", "--experiments",
          "experts,balance,cost,distill,upcycle",
          "--task", "local_span_corruption", "--vocabulary", "trained",
          "--gin_param", "local_data.pretraining = {'train': '%s', "
          "'validation': '%s'}" % (tmp_path / "train.txt",
                                   tmp_path / "validation.txt"),
          "--output_dir", str(out)]
  cache = tmp_path / "cache"
  result = helpers.cli(*args, env=dict(os.environ, XDG_CACHE_HOME=str(cache)))
  assert result.returncode == 0, result.stderr[-3000:]
  # The vocabulary was trained on the training file and cached.
  models = list((cache / "switch_mtf").glob("local_spm_*.model"))
  assert len(models) == 1
  import sentencepiece  # pylint: disable=g-import-not-at-top
  pieces = sentencepiece.SentencePieceProcessor(model_file=str(models[0]))
  assert pieces.piece_to_id("▁lantern") > 2   # a word of the text
  report = (out / "report.md").read_text()
  for heading in ("## 1. Scaling with experts", "## 3. Load balancing",
                  "## 6. Cost against experts", "## 8. Distilling",
                  "## 9. Sparse upcycling"):
    assert heading in report
  assert "## 2." not in report and "## 7." not in report
  for image in ("experts_curves.png", "experts_speedup.png",
                "balance_load.png", "cost_experts.png"):
    assert os.path.getsize(out / image) > 1000
  with open(out / "results.json") as f:
    results = json.load(f)["results"]
  assert set(results["experts"]) == {"dense", "switch_8"}
  assert set(results["balance"]) == {"switch_8", "switch_8_alpha0"}
  assert set(results["cost"]) == {"dense", "switch_8", "cost_switch_64"}
  # The workflows (switch_mtf/train/workflows.py) through the reproduction: a
  # student distilled from switch_8, a Switch model upcycled from dense.
  assert set(results["distill"]) == {"dense", "switch_8",
                                     "distill_dense_init"}
  assert set(results["upcycle"]) == {"dense", "dense_continued",
                                     "upcycled_switch_8"}
  for run in (results["distill"]["distill_dense_init"],
              results["upcycle"]["upcycled_switch_8"]):
    assert run["evaluations"][-1]["neg_log_perplexity"] < 0
  assert (out / "runs" / "upcycled_switch_8" / "upcycled" /
          "model.ckpt-0.index").exists()
  assert (out / "runs" / "distill_dense_init" / "distill_init" /
          "model.ckpt-0.index").exists()
  dense, switch = results["experts"]["dense"], results["experts"]["switch_8"]
  assert dense["spec"]["pretraining_task"] == "local_span_corruption"
  assert [e["step"] for e in dense["evaluations"]] == [6, 12]
  # Each evaluation also wrote the results file `switch-mtf eval` writes.
  with open(out / "runs" / "dense" / "validation_eval" /
            "results-12.json") as f:
    assert json.load(f)["neg_log_perplexity"] == \
        dense["evaluations"][-1]["neg_log_perplexity"]
  assert all(e["neg_log_perplexity"] < 0 for e in dense["evaluations"])
  assert switch["flops_per_token"] == dense["flops_per_token"]
  assert switch["parameters"] > 2 * dense["parameters"]
  # Per-expert load summaries: 8 shares per Switch layer, summing to 1.
  layers = switch["history"][-1]["router"]
  assert len(layers) == 2
  for metrics in layers.values():
    shares = [metrics["expert_load_%02d" % i] for i in range(8)]
    assert sum(shares) == pytest.approx(1.0, abs=1e-5)
    assert max(shares) == pytest.approx(metrics["max_expert_load"])
  alpha0 = results["balance"]["switch_8_alpha0"]
  assert "SwitchRouter.aux_loss_coef = 0.0" in alpha0["spec"]["params"]
  # Each record holds the settings gin resolved for the run.
  assert alpha0["settings"]["SwitchRouter.aux_loss_coef"] == 0.0
  assert switch["settings"]["SwitchRouter.aux_loss_coef"] == 0.01
  assert switch["settings"]["SwitchFFN.num_experts"] == 8
  assert dense["settings"]["SwitchFFN.num_experts"] is None
  assert switch["history"][-1]["loss"] != alpha0["history"][-1]["loss"]
  # Run again: every run is reused from its record, the report rewritten.
  os.remove(out / "report.md")
  again = helpers.cli(*args, env=dict(os.environ,
                                     XDG_CACHE_HOME=str(cache)))
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count("done before") == 7
  assert "trained steps" not in again.stdout
  assert (out / "report.md").read_text().splitlines()[4:] == \
      report.splitlines()[4:]


def test_settings_come_from_the_record_over_the_params():
  record = {"settings": {"SwitchFFN.num_experts": 16,
                         "SwitchFFN.capacity_factor_train": None},
            "spec": {"params": ["SwitchFFN.num_experts = 8",
                                "SwitchFFN.capacity_factor_train = 2.0"]}}
  assert rp.bound(record, "SwitchFFN.num_experts") == 16
  assert rp.bound(record, "SwitchFFN.capacity_factor_train", 1.25) == 1.25
  # A record of before the settings: what its params bound.
  del record["settings"]
  assert rp.bound(record, "SwitchFFN.num_experts") == "8"
  assert rp.bound(record, "SwitchRouter.aux_loss_coef", 0.01) == 0.01


def test_resolved_settings_read_the_gin_files_not_the_run_name():
  from switch_mtf import config  # pylint: disable=g-import-not-at-top
  from switch_mtf.reproduction import runs  # pylint: disable=g-import-not-at-top
  config.parse(["models/small/switch_4", "layouts/cpu_1"],
               ["SwitchFFN.router = @routing.Top2Router()"])
  settings = runs.resolved_settings()
  assert settings["SwitchFFN.num_experts"] == 4   # from switch_4.gin
  assert settings["SwitchFFN.router"] == "Top2Router"
  assert settings["SwitchFFN.capacity_factor_train"] == 1.25
  config.parse(["models/small/dense", "layouts/cpu_1"], [])
  assert runs.resolved_settings()["SwitchFFN.num_experts"] is None


def test_distillation_and_upcycling_runs():
  runs = {r.name: r for r in rp.specs("distill", rp.FULL)
          + rp.specs("upcycle", rp.FULL)}
  assert runs["distill_dense_init"].distill_from == "switch_8"
  assert runs["distill_dense_init"].student_init
  assert not runs["distill_dense_random"].student_init
  # The students and their dense baseline train equally long; the teacher
  # is the fully trained Switch model.
  assert runs["distill_dense_init"].steps == runs["dense_600"].steps == 600
  assert runs["switch_8"].steps == rp.FULL.steps
  assert runs["dense_continued"].continue_from == "dense"
  assert runs["upcycled_switch_8"].upcycle_from == "dense"
  assert (runs["dense_continued"].steps == runs["upcycled_switch_8"].steps
          == rp.FULL.side_steps // 2)


def test_distillation_report_gives_the_share_of_the_teacher_gain(tmp_path):
  from switch_mtf.reproduction import report  # pylint: disable=g-import-not-at-top
  def record(value, student_init=True, teacher=None):
    return dict(evaluations=[dict(step=10, neg_log_perplexity=value)],
                parameters=1, spec=dict(steps=10, student_init=student_init,
                                        distill_from=teacher))
  records = {"dense_10": record(-3.0), "switch_8": record(-2.6),
             "distill_dense_init": record(-2.88, teacher="switch_8"),
             "distill_dense_random": record(-2.96, False, "switch_8")}
  lines = report._distill(records, str(tmp_path))  # pylint: disable=protected-access
  rows = {line.split(" | ")[0].strip("| "): line for line in lines
          if line.startswith("| distill")}
  assert rows["distill_dense_init"].endswith("| 30% |")
  assert rows["distill_dense_random"].endswith("| 10% |")


def test_training_cross_entropy_leaves_out_the_aux_losses():
  entry = dict(mean_loss=3.0, router={"encoder/x/SwitchFFN": {"aux_loss": 1.0},
                                      "decoder/y/SwitchFFN": {"aux_loss": 1.2}})
  switch = dict(spec=dict(params=["SwitchFFN.num_experts = 8"]),
                history=[dict(entry, step=10)])
  alpha0 = dict(spec=dict(params=["SwitchRouter.aux_loss_coef = 0.0"]),
                history=[dict(entry, step=10)])
  assert rp.aux_loss_coefficient(switch) == 0.01
  assert rp.aux_loss_coefficient(alpha0) == 0.0
  assert rp.smoothed_losses(switch) == [(10, pytest.approx(3.0 - 0.022))]
  assert rp.smoothed_losses(alpha0) == [(10, 3.0)]
