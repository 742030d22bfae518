"""How long `switch-mtf` takes before it does anything useful (issue 17).

  .venv/bin/python benchmarks/startup.py [--repeats 3] [--checkout DIR]

Three wall times, each the median of ``--repeats`` fresh processes:
``switch-mtf --help``, ``switch-mtf info`` on a Table 9 preset
(``models/switch_base_128``), and the time from ``switch-mtf train`` of
``models/small/switch_8`` on ``layouts/cpu_ep_2`` to its first progress
line (``step 1/``).  ``--checkout`` measures another checkout of the
project (for example a clone of an older commit) with this environment's
Python.  Writes ``benchmarks/results/startup.{md,json}`` (or
``startup_<label>`` with ``--label``).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _command(checkout, *args):
  return [sys.executable, "-m", "switch_mtf.cli", *args], dict(
      os.environ, PYTHONPATH=checkout)


def _wall(checkout, *args):
  command, env = _command(checkout, *args)
  started = time.time()
  done = subprocess.run(command, env=env, cwd=checkout, capture_output=True,
                        text=True, check=False)
  if done.returncode:
    raise RuntimeError("%s failed: %s" % (" ".join(args), done.stderr[-2000:]))
  return time.time() - started


def _to_first_step(checkout):
  """Seconds from the command to its first progress line."""
  with tempfile.TemporaryDirectory() as model_dir:
    command, env = _command(
        checkout, "train", "--gin_file=models/small/switch_8",
        "--gin_file=layouts/cpu_ep_2", "--model_dir", model_dir,
        "--steps=2", "--log_every=1")
    started = time.time()
    process = subprocess.Popen(command, env=env, cwd=checkout,
                               stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    seconds = None
    for line in process.stdout:
      if seconds is None and line.startswith("step 1/"):
        seconds = time.time() - started
    if process.wait() or seconds is None:
      raise RuntimeError("train did not print its first step")
    return seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--checkout", default=ROOT)
  parser.add_argument("--label", default="")
  args = parser.parse_args()
  checkout = os.path.abspath(args.checkout)
  measures = {
      "--help": lambda: _wall(checkout, "--help"),
      "info models/switch_base_128": lambda: _wall(
          checkout, "info", "--gin_file=models/switch_base_128"),
      "train small/switch_8 cpu_ep_2 to step 1": lambda: _to_first_step(
          checkout),
  }
  results = {}
  for name, measure in measures.items():
    times = [measure() for _ in range(args.repeats)]
    results[name] = dict(median_s=round(statistics.median(times), 2),
                         all_s=[round(t, 2) for t in times])
    print("%s: %.2f s (median of %s)" % (name, results[name]["median_s"],
                                         results[name]["all_s"]))
  commit = subprocess.run(["git", "-C", checkout, "rev-parse", "--short",
                           "HEAD"], capture_output=True, text=True,
                          check=False).stdout.strip()
  meta = dict(commit=commit, machine=platform.platform(),
              cpus=os.cpu_count(), python=platform.python_version(),
              repeats=args.repeats, command=" ".join(sys.argv))
  name = "startup" + ("_" + args.label if args.label else "")
  out = os.path.join(HERE, "results", name)
  with open(out + ".json", "w") as f:
    json.dump(dict(meta=meta, results=results), f, indent=1)
  with open(out + ".md", "w") as f:
    f.write("# Start-up times (%s)\n\n" % commit)
    f.write("Machine: %s, %d CPUs, Python %s; median of %d fresh processes; "
            "command: `%s`.\n\n" % (meta["machine"], meta["cpus"],
                                   meta["python"], args.repeats,
                                   meta["command"]))
    f.write("| command | median s | all runs s |\n| --- | --- | --- |\n")
    for key, value in results.items():
      f.write("| `%s` | %.2f | %s |\n" % (key, value["median_s"],
                                         ", ".join("%.2f" % t
                                                   for t in value["all_s"])))
  print("wrote %s.md" % out)


if __name__ == "__main__":
  main()
