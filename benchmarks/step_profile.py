"""Where a training step's time goes: dense against Switch (issue 19).

  .venv/bin/python benchmarks/step_profile.py [--layout layouts/cpu_1]
      [--models dense,switch_8] [--steps 25] [--traced 5]

Trains each ``models/small/<model>`` with ``switch-mtf train`` in this
process and traces the last ``--traced`` steps with TensorFlow's step stats
(``RunOptions.FULL_TRACE``).  Per model: the ops executed per step, the sum
of their run times (ms per step, over all threads), and both split by part
of the model (Switch layer: router, dispatch, experts forward and backward,
their Adafactor updates; attention; dense feed-forward).  A Switch step that
costs more than a dense one while its ops' time is the same is paying per
op (scheduling), not per FLOP.  Writes ``benchmarks/results/step_profile.{md,json}``.
Tracing itself slows steps; compare the parts, not the absolute times.
"""
import argparse
import collections
import json
import os
import platform
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

# First match wins (every key in the node's name): a Switch layer's own
# parts, then the rest of the model.
PARTS = (
    ("Switch experts, backward", ("SwitchFFN/expert_feed_forward", "gradients")),
    ("Switch experts, forward", ("SwitchFFN/expert_feed_forward",)),
    ("Switch expert kernels' updates", ("SwitchFFN/wi",)),
    ("Switch expert kernels' updates", ("SwitchFFN/wo",)),
    ("Switch router and its update", ("SwitchFFN/router",)),
    ("Switch dispatch and combine", ("SwitchFFN/",)),
    ("dense feed-forward", ("DenseReluDense",)),
    ("attention", ("Attention",)),
    ("embedding and softmax", ("einsum",)),
)


def part_of(node_name):
  for part, keys in PARTS:
    if all(k in node_name for k in keys):
      return part
  return "other (loss, optimizer scalars, input)"


def profile(model, layout, steps, traced):
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  from switch_mtf import cli  # pylint: disable=g-import-not-at-top
  from switch_mtf.train import training  # pylint: disable=g-import-not-at-top
  times, nodes = collections.Counter(), []
  first = steps - traced
  before, after = training.ProgressHook.before_run, training.ProgressHook.after_run

  def traced_before(self, context):
    args = before(self, context)
    if self._step + 1 > first:  # pylint: disable=protected-access
      options = tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE)
      args = tf.train.SessionRunArgs(args.fetches if args else {},
                                     options=options)
    return args

  def traced_after(self, context, values):
    if self._step + 1 > first and values.run_metadata is not None:  # pylint: disable=protected-access
      count = 0
      for device in values.run_metadata.step_stats.dev_stats:
        for node in device.node_stats:
          times[node.node_name] += (node.op_end_rel_micros
                                    - node.op_start_rel_micros)
          count += 1
      nodes.append(count)
    return after(self, context, values)

  training.ProgressHook.before_run = traced_before
  training.ProgressHook.after_run = traced_after
  try:
    with tempfile.TemporaryDirectory() as model_dir:
      code = cli.main(["train", "--gin_file=models/small/" + model,
                       "--gin_file=" + layout, "--model_dir", model_dir,
                       "--steps", str(steps), "--log_every", str(steps)])
  finally:
    training.ProgressHook.before_run = before
    training.ProgressHook.after_run = after
  if code or not nodes:
    raise RuntimeError("training %s failed" % model)
  parts_ms, parts_ops = collections.Counter(), collections.Counter()
  for name, micros in times.items():
    parts_ms[part_of(name)] += micros / 1000 / len(nodes)
    parts_ops[part_of(name)] += 1
  return dict(ops_per_step=max(nodes),
              op_ms_per_step=round(sum(parts_ms.values()), 1),
              parts={p: dict(ms=round(parts_ms[p], 2), ops=parts_ops[p])
                     for p, _ in parts_ms.most_common()})


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--layout", default="layouts/cpu_1")
  parser.add_argument("--models", default="dense,switch_8")
  parser.add_argument("--steps", type=int, default=25)
  parser.add_argument("--traced", type=int, default=5)
  args = parser.parse_args()
  results = {m: profile(m, args.layout, args.steps, args.traced)
             for m in args.models.split(",")}
  meta = dict(layout=args.layout, steps=args.steps, traced=args.traced,
              machine=platform.platform(), cpus=os.cpu_count(),
              command=" ".join(sys.argv))
  out = os.path.join(HERE, "results", "step_profile")
  with open(out + ".json", "w") as f:
    json.dump(dict(meta=meta, results=results), f, indent=1)
  lines = ["# Step profile (%s)" % args.layout, "",
           "%s, %d CPUs; the last %d of %d steps traced; `%s`.  ms: sum of "
           "the ops' run times per step over all threads; ops: distinct ops "
           "executed." % (meta["machine"], meta["cpus"], args.traced,
                          args.steps, meta["command"]), ""]
  for model, r in results.items():
    lines += ["## %s: %d ops, %.1f ms of op time per step" % (
        model, r["ops_per_step"], r["op_ms_per_step"]), "",
              "| part | ms | ops |", "| --- | --- | --- |"]
    lines += ["| %s | %.2f | %d |" % (p, v["ms"], v["ops"])
              for p, v in r["parts"].items()]
    lines.append("")
  with open(out + ".md", "w") as f:
    f.write("\n".join(lines))
  print("\n".join(lines))


if __name__ == "__main__":
  main()
