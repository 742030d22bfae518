"""How long `switch-mtf` takes before it does anything useful (issue 17).

  .venv/bin/python benchmarks/startup.py [--repeats 3] [--checkout DIR]
      [--against DIR] [--label NAME]

Wall times, each the median of ``--repeats`` fresh processes:
``switch-mtf --help``, ``switch-mtf info`` on a Table 9 preset
(``models/switch_base_128``), and the time from ``switch-mtf train`` of
``models/small/switch_8`` on ``layouts/cpu_ep_2`` to its progress lines of
steps 1 and 2 (``--log_every=1``; a second step whose fetches differed from
the first's would optimize the graph again).  ``--checkout`` measures another
checkout of the project (for example a clone of an older commit) with this
environment's Python; ``--against DIR`` also times the train start-up of the
checkout DIR, alternating run by run with the measured one, and reports the
median of the paired differences (the machine's speed drifts by seconds
within an hour; pairs taken side by side cancel most of it).  Writes
``benchmarks/results/startup.{md,json}`` (or ``startup_<label>`` with
``--label``).
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


def _to_steps(checkout):
  """{step: seconds from the command to its progress line} for steps 1, 2."""
  with tempfile.TemporaryDirectory() as model_dir:
    command, env = _command(
        checkout, "train", "--gin_file=models/small/switch_8",
        "--gin_file=layouts/cpu_ep_2", "--model_dir", model_dir,
        "--steps=2", "--log_every=1")
    started = time.time()
    process = subprocess.Popen(command, env=env, cwd=checkout,
                               stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    seconds = {}
    for line in process.stdout:
      for step in (1, 2):
        if line.startswith("step %d/" % step):
          seconds[step] = time.time() - started
    if process.wait() or len(seconds) != 2:
      raise RuntimeError("train did not print its steps 1 and 2")
    return seconds


def commit_of(checkout):
  """The checkout's commit, "-dirty" if it has uncommitted changes."""
  return subprocess.run(["git", "-C", checkout, "describe", "--always",
                         "--dirty", "--abbrev=7"], capture_output=True,
                        text=True, check=False).stdout.strip()


def save_json(stem, label, commit, repeats, results):
  """Writes ``results`` with the machine's description to
  ``benchmarks/results/<stem>[_<label>].json``; returns the path without
  its extension and the description."""
  meta = dict(commit=commit, machine=platform.platform(),
              cpus=os.cpu_count(), python=platform.python_version(),
              repeats=repeats, command=" ".join(sys.argv))
  out = os.path.join(HERE, "results", stem + ("_" + label if label else ""))
  with open(out + ".json", "w") as f:
    json.dump(dict(meta=meta, results=results), f, indent=1)
  return out, meta


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--checkout", default=ROOT)
  parser.add_argument("--label", default="")
  parser.add_argument("--against", default="",
                      help="another checkout whose train start-up is timed "
                      "alternately with this one's, in pairs")
  args = parser.parse_args()
  checkout = os.path.abspath(args.checkout)
  measures = {
      "--help": lambda: _wall(checkout, "--help"),
      "info models/switch_base_128": lambda: _wall(
          checkout, "info", "--gin_file=models/switch_base_128"),
  }
  train = "train small/switch_8 cpu_ep_2 to step %d"
  times = {name: [measure() for _ in range(args.repeats)]
           for name, measure in measures.items()}
  against = os.path.abspath(args.against) if args.against else None
  runs, others = [], []
  for _ in range(args.repeats):
    runs.append(_to_steps(checkout))
    if against:
      others.append(_to_steps(against))
  times.update({train % step: [run[step] for run in runs] for step in (1, 2)})
  if against:
    other = commit_of(against)
    for step in (1, 2):
      times[(train % step) + ", " + other] = [o[step] for o in others]
      times["difference to %s, step %d, pair by pair" % (other, step)] = [
          r[step] - o[step] for r, o in zip(runs, others)]
  results = {}
  for name, values in times.items():
    results[name] = dict(median_s=round(statistics.median(values), 2),
                         all_s=[round(t, 2) for t in values])
    print("%s: %.2f s (median of %s)" % (name, results[name]["median_s"],
                                         results[name]["all_s"]))
  commit = commit_of(checkout)
  out, meta = save_json("startup", args.label, commit, args.repeats, results)
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
