"""Where the start-up of `switch-mtf train` goes, phase by phase (issue 19).

  .venv/bin/python benchmarks/startup_phases.py [--repeats 3]
      [--model small/switch_8] [--layout layouts/cpu_ep_2]
      [--against DIR] [--label NAME]

Runs ``switch-mtf train --steps=1`` in fresh processes.  Each process marks
the end of every phase by wrapping library functions from the outside
(nothing in switch_mtf changes; the wrappers only read the clock):

- imports: the interpreter, TensorFlow, Mesh TF, seqio and t5 (until the
  CLI starts parsing the gin files);
- gin and tasks: the gin files parsed, the tasks registered;
- model object: t5's ``MtfModel`` made;
- input check: the train split's pipeline built and one element pulled
  (``run.check_nonempty``);
- input pipeline: the Estimator's input function (the training pipeline);
- Mesh TF graph: the model, its gradients and the optimizer as Mesh TF ops;
- lowering: the Mesh TF graph lowered to TensorFlow ops;
- session set-up: saver, hooks, session, variable initialization, the
  first checkpoint and the input iterator, up to the first step's run;
- first step: the first training step (TensorFlow optimizes the step's
  graph first).

Also the session runs before the first step (the emptiness check's, the
initialization, readiness checks, restore copy, step-0 checkpoint, global
step reads, the input iterator): their number and seconds, summed (each
new set of fetches costs TensorFlow a pruning and optimization of the
whole graph).

Median seconds per phase over ``--repeats`` processes, and the medians of
the time to the end of each phase.  ``--against DIR`` also runs the
checkout DIR (for example a clone of an older commit) with this
environment's Python, alternating process by process, and reports the
median of the paired differences per phase: the machine's speed drifts by
seconds within minutes, so whole start-ups cannot resolve a change of half
a second; the phase it is in, paired, often can.  Writes
``benchmarks/results/startup_phases.{md,json}`` (``startup_phases_<label>``
with ``--label``).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import startup  # benchmarks/startup.py

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PHASES = ("imports", "gin and tasks", "model object", "input check",
          "input pipeline", "Mesh TF graph", "lowering", "session set-up",
          "first step")
_MARK = "startup_phases mark "
_RUNS = "startup_phases session runs "
RUNS = "session runs before step 1"


def _mark(phase):
  sys.stderr.write("%s%s\t%.6f\n" % (_MARK, phase, time.time()))
  sys.stderr.flush()


def _ending(phase, function):
  def wrapped(*args, **kwargs):
    out = function(*args, **kwargs)
    _mark(phase)
    return out
  return wrapped


def _starting(phase, function):
  def wrapped(*args, **kwargs):
    _mark(phase)
    return function(*args, **kwargs)
  return wrapped


def _child(cli_args):
  """Runs the CLI with the marks in place (in the process being timed)."""
  from switch_mtf import cli  # pylint: disable=g-import-not-at-top
  prepare = cli._prepare  # pylint: disable=protected-access

  def prepare_marked(args):
    # The stack is imported as _prepare would (first thing it does, with
    # its garbage collection settings); the wrappers go in before use.
    if hasattr(cli, "_import_stack"):   # older checkouts: imported already
      cli._import_stack()  # pylint: disable=protected-access
    _mark("imports")
    import mesh_tensorflow as mtf  # pylint: disable=g-import-not-at-top
    from tensorflow_estimator.python.estimator.tpu import tpu_estimator  # pylint: disable=g-import-not-at-top
    from switch_mtf.train import run  # pylint: disable=g-import-not-at-top
    from switch_mtf.train import training  # pylint: disable=g-import-not-at-top
    run.check_nonempty = _ending("input check", _starting(
        "model object", run.check_nonempty))
    estimator = tpu_estimator.TPUEstimator
    estimator._call_input_fn = _ending(  # pylint: disable=protected-access
        "input pipeline", estimator._call_input_fn)  # pylint: disable=protected-access
    lowering_init = mtf.Lowering.__init__
    mtf.Lowering.__init__ = _ending("lowering", _starting(
        "Mesh TF graph", lowering_init))
    hook = training.ProgressHook
    before_run, after_run = hook.before_run, hook.after_run
    from tensorflow.python.client import session as tf_session  # pylint: disable=g-import-not-at-top
    session_run = tf_session.BaseSession.run
    runs = []

    def timed_run(self, *args, **kwargs):
      started = time.time()
      try:
        return session_run(self, *args, **kwargs)
      finally:
        runs.append(time.time() - started)
    tf_session.BaseSession.run = timed_run

    def before_first_run(self, context):
      _mark("session set-up")
      tf_session.BaseSession.run = session_run
      sys.stderr.write("%s%d\t%.6f\n" % (_RUNS, len(runs), sum(runs)))
      hook.before_run = before_run
      return before_run(self, context)

    def after_first_run(self, context, values):
      out = after_run(self, context, values)
      _mark("first step")
      hook.after_run = after_run
      return out
    hook.before_run, hook.after_run = before_first_run, after_first_run
    out = prepare(args)
    _mark("gin and tasks")
    return out

  cli._prepare = prepare_marked  # pylint: disable=protected-access
  sys.exit(cli.main(cli_args))


def _phases(checkout, model, layout):
  """({phase: seconds}, {phase: seconds from the command to its end}) of
  one fresh process running ``checkout``'s switch_mtf."""
  with tempfile.TemporaryDirectory() as model_dir:
    command = [sys.executable, os.path.abspath(__file__), "--child", "--",
               "train", "--gin_file=models/" + model, "--gin_file=" + layout,
               "--model_dir", model_dir, "--steps=1", "--log_every=1"]
    started = time.time()
    done = subprocess.run(command, cwd=checkout, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=checkout),
                          check=False)
  if done.returncode:
    raise RuntimeError("train failed: %s" % done.stderr[-2000:])
  ends, runs = {}, None
  for line in done.stderr.splitlines():
    if line.startswith(_MARK):
      phase, at = line[len(_MARK):].split("\t")
      ends[phase] = float(at) - started
    elif line.startswith(_RUNS):
      runs = [float(v) for v in line[len(_RUNS):].split("\t")]
  missing = [p for p in PHASES if p not in ends]
  if missing:
    raise RuntimeError("no mark for %s" % ", ".join(missing))
  seconds, previous = {}, 0.0
  for phase in PHASES:
    seconds[phase] = ends[phase] - previous
    previous = ends[phase]
  if runs:   # (count, seconds)
    seconds[RUNS], ends[RUNS] = runs[1], runs[0]
  return seconds, ends


def main():
  if len(sys.argv) > 1 and sys.argv[1] == "--child":
    _child(sys.argv[3:])
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=1,
                      help="unrecorded processes first (of each checkout): "
                      "the first start after a while reads its files cold")
  parser.add_argument("--model", default="small/switch_8")
  parser.add_argument("--layout", default="layouts/cpu_ep_2")
  parser.add_argument("--against", default="",
                      help="another checkout, run alternately with this one")
  parser.add_argument("--label", default="")
  args = parser.parse_args()
  against = os.path.abspath(args.against) if args.against else None
  for _ in range(args.warmup):
    for checkout in [ROOT] + ([against] if against else []):
      _phases(checkout, args.model, args.layout)
  runs, others = [], []
  for _ in range(args.repeats):
    runs.append(_phases(ROOT, args.model, args.layout))
    if against:
      others.append(_phases(against, args.model, args.layout))
  commit = startup.commit_of(ROOT)
  columns = {commit: runs}
  rows = PHASES + ((RUNS,) if all(RUNS in r[0] for r in runs + others)
                   else ())
  if against:
    other = startup.commit_of(against)
    columns[other] = others
    columns["difference to " + other] = [
        tuple({p: mine[i][p] - theirs[i][p] for p in rows}
              for i in (0, 1)) for mine, theirs in zip(runs, others)]
  # For RUNS, "until" holds the number of session runs.
  results = {name: {phase: dict(
      median_s=round(statistics.median(r[0][phase] for r in column), 2),
      all_s=[round(r[0][phase], 2) for r in column],
      median_until_s=round(statistics.median(r[1][phase] for r in column),
                           2)) for phase in rows}
             for name, column in columns.items()}
  out, meta = startup.save_json("startup_phases", args.label, commit,
                                args.repeats, results)
  with open(out + ".md", "w") as f:
    f.write("# Start-up of `train %s %s`, phase by phase\n\n" % (
        args.model, args.layout))
    f.write("Machine: %s, %d CPUs, Python %s; median of %d fresh processes "
            "each; command: `%s`.\n" % (meta["machine"], meta["cpus"],
                                        meta["python"], args.repeats,
                                        meta["command"]))
    if RUNS in rows:
      f.write("\nThe last row sums the session runs before step 1 (they "
              "overlap the phases above); its last column is their number."
              "\n")
    for name, phases in results.items():
      f.write("\n## %s\n\n| phase | median s | all runs s | median s from "
              "the command to its end |\n| --- | --- | --- | --- |\n" % name)
      for phase, value in phases.items():
        f.write("| %s | %.2f | %s | %.2f |\n" % (
            phase, value["median_s"], ", ".join("%.2f" % s
                                                for s in value["all_s"]),
            value["median_until_s"]))
      print("%s:\n%s" % (name, "\n".join(
          "  %-16s %6.2f s (to its end %6.2f s)" % (
              phase, v["median_s"], v["median_until_s"])
          for phase, v in phases.items())))
  print("wrote %s.md" % out)


if __name__ == "__main__":
  main()
