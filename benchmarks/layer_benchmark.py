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

  .venv/bin/python benchmarks/layer_benchmark.py [--steps 5] [--quick]
      [--configs 64:1024,128:1024] [--variants gather]
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


def time_step(build, steps, length=1024):
  """Median seconds of one training step of the layer ``build`` makes."""
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
    grads = mtf.gradients([loss], [v.outputs[0] for v in variables])
    updates = mtf.optimize.SgdOptimizer(0.01).apply_grads(grads, variables)
    stamps = []
    p.run({"loss": loss}, extra_ops=updates, steps=steps + 2,
          on_step=lambda step, out: stamps.append(time.perf_counter()))
  durations = np.diff(stamps)[1:]  # the first two steps warm up
  return statistics.median(durations)


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
  parser.add_argument("--output", default=os.path.join(
      RESULTS, "layer_benchmark"), help="results path, without .md/.json")
  args = parser.parse_args()
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


def _flags(args):
  flags = ["--quick"] if args.quick else []
  if args.steps != 8:
    flags.append("--steps %d" % args.steps)
  if args.configs:
    flags.append("--configs " + args.configs)
  if args.variants != ",".join(VARIANTS):
    flags.append("--variants " + args.variants)
  if os.path.abspath(args.output) != os.path.join(RESULTS, "layer_benchmark"):
    flags.append("--output " + os.path.relpath(args.output, os.getcwd()))
  return flags


def _write(rows, args):
  machine = "%s, %d CPU cores, TensorFlow %s" % (
      platform.processor() or platform.machine(), os.cpu_count(),
      tf.__version__)
  lines = [
      "# Switch layer benchmark",
      "",
      "One training step (forward, backward, SGD update) of one layer: %d "
      "tokens, d_model %d, d_ff %d per expert and dense, capacity factor "
      "%.2f, float32, input jitter, 1-device mesh.  Median of %d steps after "
      "2 warm-up steps; the dense FFN is timed next to each configuration.  "
      "Machine: %s.  Command: `.venv/bin/python "
      "benchmarks/layer_benchmark.py%s`." % (
          TOKENS, D_MODEL, D_FF, CF, args.steps, machine, "".join(
              " " + a for a in _flags(args))),
      "",
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
            "FLOPs, plus the router; the gather path computes only the slots "
            "that hold a token (about 1.0 x dense FLOPs), plus the router and "
            "its gathers."]
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(args.output + ".json", "w") as f:
    json.dump(dict(rows=rows, machine=machine,
                   steps=args.steps), f, indent=1)
  print("\n".join(lines))


if __name__ == "__main__":
  main()
