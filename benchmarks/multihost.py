"""Step time of ``models/small/switch_8`` in one process against the same
mesh spread over TensorFlow gRPC tasks on this machine (issue 16).

  .venv/bin/python benchmarks/multihost.py [--steps 100] [--repeats 1]

For each mesh size N (2 and 4: 3 devices cannot split 8 experts), one
``switch-mtf train`` on ``layouts/cpu_ep_N`` (N virtual devices in one
process), then on ``layouts/multihost_ep`` with ``--cluster`` of N tasks on
127.0.0.1 (the client as task 0 and N-1 ``switch-mtf worker`` processes).
On one machine this measures the runtime's overhead (serialization, gRPC,
one process per device sharing the same cores), not a speed-up: there is no
extra compute.  Writes ``benchmarks/results/multihost.{md,json}``.
"""
import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys

import step_benchmark

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = "models/small/switch_8"


def _addresses(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  addresses = ["127.0.0.1:%d" % s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return addresses


def _on_cluster(tasks, steps, env):
  addresses = _addresses(tasks)
  workers = []
  try:
    for task in range(1, tasks):
      workers.append(subprocess.Popen(
          step_benchmark.CLI + ["worker", "--cluster", ",".join(addresses),
                                "--task", str(task), "--lifetime_s", "1800"],
          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
          cwd=step_benchmark.ROOT, env=env))
    for worker in workers:
      worker.stdout.readline()   # serving
    return step_benchmark.train_speed(
        MODEL, "layouts/multihost_ep", steps, [], env,
        extra_args=["--cluster", ",".join(addresses)])
  finally:
    for worker in workers:
      worker.send_signal(signal.SIGKILL)
      worker.wait()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--sizes", default="2,4")
  parser.add_argument("--output",
                      default=os.path.join(HERE, "results", "multihost"))
  args = parser.parse_args()
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  rows = []
  for size in [int(s) for s in args.sizes.split(",")]:
    for kind in ("one process", "cluster"):
      runs = [step_benchmark.train_speed(MODEL, "layouts/cpu_ep_%d" % size,
                                         args.steps, [], env)
              if kind == "one process" else _on_cluster(size, args.steps, env)
              for _ in range(args.repeats)]
      tokens = statistics.median(r[0] for r in runs)
      rows.append(dict(devices=size, kind=kind, tokens_per_second=tokens,
                       step_ms=1280 / tokens * 1000,
                       first_step_seconds=statistics.median(
                           r[1] for r in runs), runs=runs))
      print(rows[-1], flush=True)
  _write(args, rows)


def _write(args, rows):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  lines = [
      "# switch_8 on one process vs TensorFlow gRPC tasks (one machine)", "",
      "Command: `benchmarks/multihost.py %s`  " % " ".join(sys.argv[1:]),
      "Machine: %s, %d cores; TensorFlow %s, Python %s.  %d steps, batch 8 "
      "(1,280 tokens per step), median of %d runs, tokens/s after the "
      "first 10 steps." % (
          platform.processor() or platform.machine(), os.cpu_count(),
          tf.__version__, platform.python_version(), args.steps,
          args.repeats), "",
      "All tasks share this machine's cores, so this is the overhead of the "
      "runtime (one process per mesh device, tensors serialized over gRPC "
      "on loopback), not a speed-up: there is no extra compute.  Mesh "
      "`batch:N` with experts and batch split N ways (`cpu_ep_N` in one "
      "process; `multihost_ep` with `--cluster` of N tasks: the client and "
      "N-1 `switch-mtf worker` processes).", "",
      "| mesh devices | where | tokens/s | step ms | vs one process | "
      "command to first step |", "|---|---|---|---|---|---|"]
  base = {r["devices"]: r for r in rows if r["kind"] == "one process"}
  for row in rows:
    lines.append("| %d | %s | %.0f | %.0f | %.2fx | %.1f s |" % (
        row["devices"], "one process" if row["kind"] == "one process"
        else "%d tasks" % row["devices"], row["tokens_per_second"],
        row["step_ms"], row["step_ms"] / base[row["devices"]]["step_ms"],
        row["first_step_seconds"]))
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  with open(args.output + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(args.output + ".json", "w") as f:
    json.dump(dict(rows=rows, args=vars(args)), f, indent=1)
  print("\n".join(lines))


if __name__ == "__main__":
  main()
