"""The switch-mtf command line: the demo job end to end, and bad input."""
import json
import os
import subprocess
import sys


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "switch_mtf.cli"] + list(args),
                        capture_output=True, text=True, check=False)


def test_demo_trains_evaluates_and_writes_results(tmp_path):
  result = _cli("demo", "--steps", "4", "--output_dir", str(tmp_path))
  assert result.returncode == 0, result.stderr[-2000:]
  assert "validation neg. log perplexity" in result.stdout
  with open(os.path.join(tmp_path, "demo_results.json")) as f:
    summary = json.load(f)["summary"]
  assert summary["steps"] == 4
  assert summary["final_loss"] < summary["first_loss"]
  assert len(summary["validation_expert_load"]) == 8
  assert abs(sum(summary["validation_expert_load"]) - 1.0) < 1e-3
  assert os.path.getsize(os.path.join(tmp_path, "demo_curves.png")) > 1000


def test_impossible_layout_is_one_line_and_exit_2(tmp_path):
  result = _cli("demo", "--steps", "1", "--experts", "3", "--devices", "2",
                "--output_dir", str(tmp_path))
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("switch-mtf: error:") and "'experts' (size 3)" in last
