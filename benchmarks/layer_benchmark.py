"""Switch layer benchmark: one training step against a dense FFN.

One training step = forward, backward and an SGD update of the layer, for
8192 tokens, d_model 512, d_ff 2048 (dense d_ff = each expert's d_ff, so the
layers have equal FLOPs per token up to the capacity factor), capacity factor
1.25; E = 8 and 32 at group sizes 256 and 1024 (``--configs`` for others,
e.g. E = 64 and 128, or group sizes 128 to 2048).  Variants, timed side by
side in the same process:

  dense            two dense layers with ReLU (the FLOP-matched baseline)
  upstream moe.py  mesh_tensorflow.transformer.moe, moe_gating="switch"
  einsum           switch_mtf, the paper's one-hot dispatch
  gather           switch_mtf, index-based dispatch

All on a 1-device mesh on this machine's CPU, float32, input jitter.  Writes a
Markdown table and the raw numbers (JSON) to benchmarks/results/.

``--breakdown`` times instead the gather path's forward pass, forward and
backward, and whole step against dense's, and a step of the experts' kernels
alone with one token per expert: the work per parameter that no routing can
save (results/layer_benchmark_breakdown.md).

  .venv/bin/python benchmarks/layer_benchmark.py [--steps 5] [--quick]
      [--configs 64:1024,128:1024] [--variants gather] [--breakdown]
"""
import argparse
import json
import os
import platform
import statistics
import time

import switch_mtf  # noqa: F401  (compat patches before Mesh TF)
import mesh_tensorflow as mtf
from mesh_tensorflow.transformer import moe
import numpy as np
import tensorflow.compat.v1 as tf

from switch_mtf.moe import layers
from switch_mtf.train import mesh_program
from switch_mtf.moe import routing

TOKENS, D_MODEL, D_FF, CF = 8192, 512, 2048, 1.25
# (experts, group size): the paper's two group sizes at E = 8 and 32.
# --configs 64:1024,128:1024,32:128,32:512,32:2048 adds many experts and
# other group sizes (results/layer_benchmark_many_experts.md).
DEFAULT_CONFIGS = [(8, 1024), (32, 1024), (8, 256), (32, 256)]
VARIANTS = ("upstream", "einsum", "gather")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _dense(x):
  ff_dim = mtf.Dimension("d_ff", D_FF)
  h = mtf.layers.dense(x, ff_dim, reduced_dims=x.shape.dims[-1:],
                       use_bias=False, activation=mtf.relu,
                       variable_dtype=mesh_program.FLOAT32, name="wi")
  return mtf.layers.dense(h, x.shape.dims[-1], reduced_dims=[ff_dim],
                          use_bias=False, variable_dtype=mesh_program.FLOAT32,
                          name="wo"), None


def _upstream(x, experts, group):
  hparams = moe.MoE1D(num_experts=experts, hidden_size=D_FF, group_size=group,
                      capacity_factor_train=CF, moe_gating="switch",
                      switch_policy_train="input_jitter",
                      activation="relu")._hparams
  nonpadding = mtf.ones(x.mesh, x.shape.dims[:-1])  # upstream needs one
  return moe.transformer_moe_layer_v1(
      x, x.shape.dims[-1], hparams, True, mesh_program.FLOAT32,
      layout="", mesh_shape="", nonpadding=nonpadding, activation="relu")


def _ours(x, experts, group, dispatch):
  config = layers.SwitchConfig(num_experts=experts, hidden_size=D_FF,
                               group_size=group, capacity_factor_train=CF,
                               dispatch=dispatch)
  y, result = layers.switch_feed_forward(
      x, config, routing.SwitchRouter(), True, mesh_program.FLOAT32)
  return y, result.loss


PARTS = ("forward", "backward", "step")


def time_step(build, steps, length=1024, part="step"):
  """Median seconds of one training step of the layer ``build`` makes.

  ``part``: "step" (forward, backward, SGD update), "backward" (forward
  and the gradients, summed into a scalar instead of applied) or "forward"
  (the loss only)."""
  batch = TOKENS // length
  dims = [mtf.Dimension("batch", batch), mtf.Dimension("length", length),
          mtf.Dimension("d_model", D_MODEL)]
  rng = np.random.RandomState(0)
  with mesh_program.MeshProgram(seed=0) as p:
    x = p.import_array(rng.randn(batch, length, D_MODEL).astype(np.float32),
                       dims)
    probe = p.import_array(
        rng.randn(batch, length, D_MODEL).astype(np.float32), dims)
    y, aux = build(x)
    loss = mtf.reduce_sum(y * probe) * (1.0 / TOKENS)
    if aux is not None:
      loss += aux
    variables = p.graph.trainable_variables
    # What runs each step: the fetches are read only after the last one.
    sink = mtf.get_variable(x.mesh, "sink", mtf.Shape([]), trainable=False)
    if part == "forward":
      updates = [mtf.assign(sink, loss)]
    else:
      grads = mtf.gradients([loss], [v.outputs[0] for v in variables])
      if part == "backward":
        updates = [mtf.assign(sink, mtf.add_n(
            [mtf.reduce_sum(g) for g in grads]))]
      else:
        updates = mtf.optimize.SgdOptimizer(0.01).apply_grads(grads,
                                                              variables)
    stamps = []
    p.run({"loss": loss}, extra_ops=updates, steps=steps + 2,
          on_step=lambda step, out: stamps.append(time.perf_counter()))
  durations = np.diff(stamps)[1:]  # the first two steps warm up
  return statistics.median(durations)


def parameter_floor(experts, steps):
  """Median seconds of a training step of the experts' kernels alone with
  one token per expert: the matmuls' FLOPs are nil, what is left is the
  work every step does per parameter whatever the tokens (reading the
  kernels forward and backward, writing their gradients, the SGD update
  as Mesh TF lowers it: a multiply and an assign_sub)."""
  graph = tf.Graph()
  rng = np.random.RandomState(0)
  with graph.as_default():
    x = tf.constant(rng.randn(experts, 1, D_MODEL).astype(np.float32))
    wi = tf.Variable(tf.random.normal([experts, D_MODEL, D_FF], seed=0))
    wo = tf.Variable(tf.random.normal([experts, D_FF, D_MODEL], seed=1))
    y = tf.matmul(tf.nn.relu(tf.matmul(x, wi)), wo)
    grads = tf.gradients(tf.reduce_sum(y * x), [wi, wo])
    step = tf.group(*[tf.assign_sub(w, g * 0.01)
                      for w, g in zip([wi, wo], grads)])
    with tf.Session(graph=graph) as session:
      session.run(tf.global_variables_initializer())
      durations = []
      for _ in range(steps + 2):
        started = time.perf_counter()
        session.run(step)
        durations.append(time.perf_counter() - started)
  return statistics.median(durations[2:])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=8,
                      help="timed steps per variant (after 2 warm-up steps)")
  parser.add_argument("--quick", action="store_true",
                      help="only E=8, group 1024")
  parser.add_argument("--configs", default="",
                      help="experts:group pairs, comma-separated (default: "
                      "all of DEFAULT_CONFIGS)")
  parser.add_argument("--variants", default=",".join(VARIANTS),
                      help="which of upstream, einsum, gather to time")
  parser.add_argument("--breakdown", action="store_true",
                      help="instead: the gather path's forward, backward "
                      "and update against dense's, and the per-parameter "
                      "floor (default output layer_benchmark_breakdown)")
  parser.add_argument("--output", default=None,
                      help="results path, without .md/.json")
  args = parser.parse_args()
  args.output = args.output or os.path.join(RESULTS, _default_name(args))
  if args.configs:
    configs = [tuple(int(v) for v in c.split(":"))
               for c in args.configs.split(",")]
  else:
    configs = [(8, 1024)] if args.quick else DEFAULT_CONFIGS
  variants = args.variants.split(",")
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown:
    parser.error("--variants: unknown %s (known: %s)" % (
        ", ".join(unknown), ", ".join(VARIANTS)))
  if args.breakdown:
    _breakdown(configs, args)
    return
  rows = []
  for experts, group in configs:
    # Dense is timed again next to every configuration, so that slow drifts
    # of the machine's speed cancel out in the ratios.
    print("timing dense FFN ...", flush=True)
    row = dict(experts=experts, group=group,
               dense=time_step(_dense, args.steps))
    for name, build in (
        ("upstream", lambda x: _upstream(x, experts, group)),
        ("einsum", lambda x: _ours(x, experts, group, "einsum")),
        ("gather", lambda x: _ours(x, experts, group, "gather"))):
      if name not in variants:
        continue
      print("timing E=%d group=%d %s ..." % (experts, group, name), flush=True)
      row[name] = time_step(build, args.steps)
    rows.append(row)
    print("  dense %.3fs  %s" % (row["dense"], "  ".join(
        "%s %.2fx" % (v, row[v] / row["dense"]) for v in variants)),
          flush=True)
  _write(rows, args)


def _default_name(args):
  return "layer_benchmark" + ("_breakdown" if args.breakdown else "")


def _breakdown(configs, args):
  """Where the gather path's step time goes, against dense's: forward,
  backward and update timed cumulatively, and the per-parameter floor."""
  rows = []
  for experts, group in configs:
    row = dict(experts=experts, group=group)
    for part in PARTS:
      print("timing E=%d group=%d %s ..." % (experts, group, part),
            flush=True)
      row["dense_" + part] = time_step(_dense, args.steps, part=part)
      row["gather_" + part] = time_step(
          lambda x: _ours(x, experts, group, "gather"), args.steps, part=part)
    row["floor"] = parameter_floor(experts, args.steps)
    rows.append(row)
  lines = _header(args, "where the time of one training step goes") + [
      "Times are cumulative: the forward pass (the loss), forward and "
      "backward (the gradients, summed into a scalar instead of applied), "
      "the whole step (with the SGD update).  Parameter floor: a step of "
      "the experts' kernels alone with one token per expert (no FLOPs to "
      "speak of; reading the kernels forward and backward, writing their "
      "gradients, the update); the dense layer's is nil.  Bound: (dense "
      "step + floor) / dense step, the least step ratio that anything built "
      "from these kernels that keeps E kernels and updates them every step "
      "can reach here, with no router at all.", "",
      "| experts | group | dense: forward, +backward, step | gather: "
      "forward, +backward, step | gather / dense: forward, backward, update "
      "| parameter floor | bound | gather / dense step |",
      "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  def alone(t):
    # Each part alone from the cumulative times: forward, backward (minus
    # forward), update (minus forward and backward).
    return [t[0], t[1] - t[0], t[2] - t[1]]

  for r in rows:
    dense = [r["dense_" + p] for p in PARTS]
    ours = [r["gather_" + p] for p in PARTS]
    lines.append("| %d | %d | %s | %s | %s | %.3f s | %.2f× | %.2f× |" % (
        r["experts"], r["group"], ", ".join("%.3f" % t for t in dense),
        ", ".join("%.3f" % t for t in ours), ", ".join(
            "%+.3f s" % (o - d) for o, d in zip(alone(ours), alone(dense))),
        r["floor"], (dense[2] + r["floor"]) / dense[2], ours[2] / dense[2]))
  _save(lines, rows, args)


def _machine():
  return "%s, %d CPU cores, TensorFlow %s" % (
      platform.processor() or platform.machine(), os.cpu_count(),
      tf.__version__)


def _header(args, title):
  return [
      "# Switch layer benchmark" + (": " + title if title else ""),
      "",
      "One training step (forward, backward, SGD update) of one layer: %d "
      "tokens, d_model %d, d_ff %d per expert and dense, capacity factor "
      "%.2f, float32, input jitter, 1-device mesh.  Median of %d steps after "
      "2 warm-up steps; the dense FFN is timed next to each configuration.  "
      "Machine: %s.  Command: `.venv/bin/python "
      "benchmarks/layer_benchmark.py%s`." % (
          TOKENS, D_MODEL, D_FF, CF, args.steps, _machine(), "".join(
              " " + a for a in _flags(args))),
      ""]


def _save(lines, rows, args):
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(args.output + ".json", "w") as f:
    json.dump(dict(rows=rows, machine=_machine(), steps=args.steps,
                   flags=_flags(args)), f, indent=1)
  print("\n".join(lines))


def _flags(args):
  flags = ["--quick"] if args.quick else []
  if args.breakdown:
    flags.append("--breakdown")
  if args.steps != 8:
    flags.append("--steps %d" % args.steps)
  if args.configs:
    flags.append("--configs " + args.configs)
  if args.variants != ",".join(VARIANTS):
    flags.append("--variants " + args.variants)
  if os.path.abspath(args.output) != os.path.join(RESULTS,
                                                  _default_name(args)):
    flags.append("--output " + os.path.relpath(args.output, os.getcwd()))
  return flags


def _write(rows, args):
  lines = _header(args, "") + [
      "| experts | group | dense | upstream moe.py | switch_mtf einsum | "
      "switch_mtf gather |",
      "| --- | --- | --- | --- | --- | --- |",
  ]
  for r in rows:
    d = r["dense"]
    cells = ["%.2f× (%.3f s)" % (r[v] / d, r[v]) if v in r else "-"
             for v in VARIANTS]
    lines.append("| %d | %d | %.3f s | %s |" % (
        r["experts"], r["group"], d, " | ".join(cells)))
  lines += ["", "Ratios are step time / dense step time.  Computing every "
            "expert slot costs the capacity factor (1.25) times the dense "
            "FLOPs, plus the router; the gather path computes no empty slot "
            "beyond the busiest expert's load: every expert runs over as "
            "many rows as the busiest one holds (between 1.0 and 1.25 x dense "
            "FLOPs), plus the router and its gathers."]
  _save(lines, rows, args)


if __name__ == "__main__":
  main()
