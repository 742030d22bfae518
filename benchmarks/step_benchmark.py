"""Training speed of the small presets, ours and Hugging Face's, and
start-up costs (issue 19).

Measured in one run, on this machine, so that ratios compare like with like:

- our steady training speed (tokens/s from the progress lines after the
  first window) of ``models/small/dense`` and ``switch_{8,32,64}`` on
  ``layouts/cpu_1`` and ``cpu_ep_2``, through ``switch-mtf train`` in a
  child process, the median of ``--repeats`` runs; ReLU feed-forward layers
  (``--activation relu``, the default here) so that Hugging Face's Switch
  model, which has no gated experts, computes the same FLOPs;
- Hugging Face's T5 / SwitchTransformers of the same shapes in torch on the
  same batches, with Mesh TF's Adafactor (``switch_mtf.hf.peer``);
- start-up: seconds from the command to the first progress line (step 10,
  after the first steps' graph optimizations), one evaluation of the
  validation split (first and repeated), ``--help`` and ``info``.

  .venv/bin/python benchmarks/step_benchmark.py [--steps 200] [--repeats 3]

Writes ``benchmarks/results/step_benchmark.{md,json}``.  With ``--profile
MODEL`` it instead traces a few training steps of one model in this process
and prints where the time goes, by op type and by name scope.
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLI = [sys.executable, "-m", "switch_mtf.cli"]
ACTIVATIONS = {
    "relu": ["transformer_layers.DenseReluDense.activation = 'relu'",
             "SwitchFFN.activation = 'relu'"],
    "gated_gelu": [],
}


def _timed(args, **kwargs):
  start = time.time()
  result = subprocess.run(args, capture_output=True, text=True, cwd=ROOT,
                          check=False, **kwargs)
  return time.time() - start, result


def train_speed(model, layout, steps, params, env, extra_args=()):
  """(steady tokens/s, seconds from the command to the first step line,
  training seconds) of one ``switch-mtf train`` (``extra_args``: more
  flags, e.g. ``--cluster``)."""
  with tempfile.TemporaryDirectory() as model_dir:
    args = CLI + ["train", "--gin_file=" + model, "--gin_file=" + layout,
                  "--model_dir", model_dir, "--steps", str(steps),
                  "--log_every", "10", "--router_every", "0",
                  "--save_checkpoints_steps", str(steps)]
    args += ["--gin_param=" + p for p in params] + list(extra_args)
    start = time.time()
    process = subprocess.Popen(args, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
                               env=env)
    first = None
    speeds = []
    for line in process.stdout:
      match = re.match(r"step (\d+)/\d+ .* ([0-9.]+) steps/s  (\d+) tokens/s",
                       line)
      if match:
        if first is None:
          first = time.time() - start
        elif int(match.group(1)) > 10:
          speeds.append(float(match.group(3)))
    process.wait()
    if process.returncode:
      raise RuntimeError("%s failed" % " ".join(args))
    return statistics.median(speeds), first, time.time() - start


def _hf_speed(model, steps, activation, extra=()):
  """Hugging Face's tokens/s for the same shapes (in this process)."""
  import switch_mtf  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  from switch_mtf import config  # pylint: disable=g-import-not-at-top
  from switch_mtf.hf import conversion as hf_conversion  # pylint: disable=g-import-not-at-top
  from switch_mtf.hf import peer as hf_peer  # pylint: disable=g-import-not-at-top
  from switch_mtf.train import run as run_lib  # pylint: disable=g-import-not-at-top
  from switch_mtf.tasks import embedded  # pylint: disable=g-import-not-at-top
  tf.disable_eager_execution()
  task = embedded.register()
  config.parse([model, "layouts/cpu_1"],
               list(ACTIVATIONS[activation]) + list(extra))
  lengths = config.query("utils.run.sequence_length")
  with tempfile.TemporaryDirectory() as model_dir:
    net = run_lib.make_model(model_dir, 8, lengths)
    # The step-0 checkpoint only (weights to start from).
    run_lib.train(net, task.name, 1, out=lambda line: None)
    checkpoint = os.path.join(model_dir, "model.ckpt-0")
    from switch_mtf import checkpoint_io  # pylint: disable=g-import-not-at-top
    arch = hf_conversion.architecture_from_checkpoint(
        checkpoint_io.CheckpointReader(checkpoint).shapes)
    experts = config.query("SwitchFFN.num_experts", 0) or 1
    peer = hf_peer.Peer(checkpoint, arch, hf_peer.PeerSettings(
        expert_capacity={"encoder": int(lengths["inputs"] * 1.25 / experts),
                         "decoder": max(4, int(lengths["targets"] * 1.25
                                               / experts))}))
  batches = hf_peer.export_batches(task.name, lengths, 8, steps, 0)
  tokens = 8 * sum(lengths.values())
  warm = 10
  start = None
  for step in range(steps):
    if step == warm:
      start = time.time()
    peer.train_step({k: v[step] for k, v in batches.items()})
  return (steps - warm) * tokens / (time.time() - start)


def _startup(env):
  help_s, _ = _timed(CLI + ["--help"], env=env)
  info_s, _ = _timed(CLI + ["info", "--gin_file=models/switch_base_128",
                            "--gin_file=layouts/tpu_v3_32_ep_dp"], env=env)
  return dict(help_seconds=help_s, info_seconds=info_s)


def _evaluation_seconds(model):
  """(first, repeated) seconds of one validation evaluation of a 1-step
  checkpoint, in process (examples built, scoring graph built)."""
  import switch_mtf  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  from switch_mtf import config  # pylint: disable=g-import-not-at-top
  from switch_mtf.train import run as run_lib  # pylint: disable=g-import-not-at-top
  from switch_mtf.tasks import embedded  # pylint: disable=g-import-not-at-top
  tf.disable_eager_execution()
  task = embedded.register()
  config.parse([model, "layouts/cpu_1"])
  lengths = config.query("utils.run.sequence_length")
  with tempfile.TemporaryDirectory() as model_dir:
    net = run_lib.make_model(model_dir, 8, lengths)
    run_lib.train(net, task.name, 1, out=lambda line: None)
    times = []
    for _ in range(2):
      start = time.time()
      run_lib.neg_log_perplexity(net, task.name)
      times.append(time.time() - start)
  return times


def _profile(model, layout, activation, steps=20, params=()):
  """Traces ``steps`` training steps after 10 warm-up steps; prints the
  op time by type and by name scope."""
  import collections  # pylint: disable=g-import-not-at-top
  import switch_mtf  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  from switch_mtf import config  # pylint: disable=g-import-not-at-top
  from switch_mtf.train import run as run_lib  # pylint: disable=g-import-not-at-top
  from switch_mtf.tasks import embedded  # pylint: disable=g-import-not-at-top
  tf.disable_eager_execution()
  task = embedded.register()
  config.parse([model, layout], ACTIVATIONS[activation] + list(params))
  lengths = config.query("utils.run.sequence_length")
  by_type, by_scope = collections.Counter(), collections.Counter()
  in_switch = collections.Counter()
  wall = []

  class Trace(tf.train.SessionRunHook):
    step = 0

    def before_run(self, run_context):
      self.step += 1
      self._start = time.time()
      if self.step > 10:
        return tf.train.SessionRunArgs(None, options=tf.RunOptions(
            trace_level=tf.RunOptions.FULL_TRACE))
      return None

    def after_run(self, run_context, run_values):
      if self.step <= 10:
        return
      wall.append(time.time() - self._start)
      for device in run_values.run_metadata.step_stats.dev_stats:
        for node in device.node_stats:
          micros = node.all_end_rel_micros
          name = node.node_name.split(":")[0]
          kind = node.timeline_label.split("=")[-1].split("(")[0].strip()
          by_type[kind.split(" ")[0] or name] += micros
          parts = name.split("/")
          scope = "/".join(p for p in parts[:4] if not p.startswith("_"))
          by_scope[re.sub(r"_\d+$", "", scope)] += micros
          if "SwitchFFN" in name:
            inner = parts[parts.index("SwitchFFN") + 1:][:2]
            in_switch["%s (%s)" % ("/".join(inner), kind.split(" ")[0])] += (
                micros)

  with tempfile.TemporaryDirectory() as model_dir:
    net = run_lib.make_model(model_dir, 8, lengths,
                             save_checkpoints_steps=10 ** 6)
    from switch_mtf.train import training  # pylint: disable=g-import-not-at-top
    _train_with_hook(training, net, task.name, 10 + steps, Trace())
  total = sum(by_type.values())
  print("%s on %s: %.1f ms/step wall (traced), op time %.1f ms/step" % (
      model, layout, 1000 * statistics.median(wall), total / 1000 / steps))
  for title, counter in (("by op type", by_type), ("by scope", by_scope),
                         ("inside the Switch layers", in_switch)):
    print("  %s:" % title)
    for key, micros in counter.most_common(25):
      print("    %6.2f ms/step  %5.1f%%  %s" % (
          micros / 1000 / steps, 100 * micros / total, key))


def _train_with_hook(training, model, task_name, steps, hook):
  """training.train with one more session hook (profiling only)."""
  from t5.models import mesh_transformer  # pylint: disable=g-import-not-at-top
  from switch_mtf import compat  # pylint: disable=g-import-not-at-top
  vocabulary = mesh_transformer.get_vocabulary(task_name)
  estimator = compat.seed_estimator(model.estimator(vocabulary), 0)
  lengths = model._sequence_length  # pylint: disable=protected-access

  def input_fn(params):
    del params
    return training.train_dataset(task_name, lengths, model.batch_size, 0)
  estimator.train(input_fn=input_fn, max_steps=steps,
                  hooks=[training.StepOrderHook(), hook])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--activation", choices=sorted(ACTIVATIONS),
                      default="relu")
  parser.add_argument("--models", default="dense,switch_8,switch_32,"
                      "switch_64")
  parser.add_argument("--layouts", default="cpu_1,cpu_ep_2")
  parser.add_argument("--no_hf", action="store_true")
  parser.add_argument("--profile", default=None,
                      help="a model (e.g. models/small/switch_8): trace it "
                      "instead of benchmarking")
  parser.add_argument("--profile_layout", default="layouts/cpu_1")
  parser.add_argument("--gin_param", action="append", default=[],
                      help="with --profile: extra gin bindings")
  parser.add_argument("--output", default=os.path.join(HERE, "results",
                                                       "step_benchmark"))
  args = parser.parse_args()
  if args.profile:
    _profile(args.profile, args.profile_layout, args.activation,
             params=args.gin_param)
    return
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  params = list(ACTIVATIONS[args.activation])
  models = {}
  for name in args.models.split(","):
    model = "models/small/" + name
    extra = ["SwitchFFN.num_experts = %s" % name.split("_")[1]] if (
        name.startswith("switch_") and name.split("_")[1] not in (
            "2", "4", "8", "16", "32")) else []
    if extra:
      model = "models/small/switch_32"
    models[name] = (model, extra)
  rows = {}
  for layout in args.layouts.split(","):
    for name, (model, extra) in models.items():
      runs = [train_speed(model, "layouts/" + layout, args.steps,
                           params + extra, env)
              for _ in range(args.repeats)]
      rows[(name, layout)] = dict(
          tokens_per_second=statistics.median(r[0] for r in runs),
          first_step_seconds=statistics.median(r[1] for r in runs),
          runs=runs)
      print(name, layout, rows[(name, layout)], flush=True)
  hf = {}
  if not args.no_hf:
    # Every model: Hugging Face's optimizer also updates every expert's
    # parameters at every step, so its Switch/dense ratios show the part of
    # ours that is the parameter count's, not our code's.
    for name, (model, extra) in models.items():
      hf[name] = statistics.median(
          _hf_speed(model, args.steps, args.activation, extra)
          for _ in range(args.repeats))
      print("hf", name, hf[name], flush=True)
  startup = _startup(env)
  evaluation = _evaluation_seconds("models/small/switch_8")
  _write(args, rows, hf, startup, evaluation)


def _write(args, rows, hf, startup, evaluation):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  layouts = args.layouts.split(",")
  lines = ["# Training speed of the small presets (%s FFNs)" % args.activation,
           "", "Command: `benchmarks/step_benchmark.py %s`  " % " ".join(
               sys.argv[1:]),
           "Machine: %s, %d cores; TensorFlow %s, torch %s.  Median of %d "
           "runs of %d steps, batch 8 (1,280 tokens per step), tokens/s "
           "after the first 10 steps." % (
               platform.processor() or platform.machine(), os.cpu_count(),
               tf.__version__, torch.__version__, args.repeats, args.steps),
           ""]
  header = ["model"] + ["%s tokens/s" % l for l in layouts] + [
      "%s step vs dense" % l for l in layouts] + [
          "Hugging Face tokens/s", "Hugging Face step vs dense",
          "ours / HF (cpu_1)",
          "command to step 10 (%s)" % layouts[0]]
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for name in args.models.split(","):
    cells = [name]
    cells += ["%.0f" % rows[(name, l)]["tokens_per_second"] for l in layouts]
    cells += ["%.2fx" % (rows[("dense", l)]["tokens_per_second"]
                         / rows[(name, l)]["tokens_per_second"])
              if ("dense", l) in rows else "-" for l in layouts]
    ours = rows.get((name, "cpu_1"), {}).get("tokens_per_second")
    cells += ["%.0f" % hf[name] if name in hf else "-",
              "%.2fx" % (hf["dense"] / hf[name])
              if name in hf and "dense" in hf else "-",
              "%.2f" % (ours / hf[name]) if name in hf and ours else "-",
              "%.1f s" % rows[(name, layouts[0])]["first_step_seconds"]]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "Start-up: `switch-mtf --help` %.2f s, `switch-mtf info` "
            "(switch_base_128, tpu_v3_32_ep_dp) %.2f s; one evaluation of the "
            "validation split (switch_8, in process): first %.1f s (examples "
            "and scoring graph built), then %.1f s." % (
                startup["help_seconds"], startup["info_seconds"],
                evaluation[0], evaluation[1]), ""]
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  with open(args.output + ".md", "w") as f:
    f.write("\n".join(lines))
  with open(args.output + ".json", "w") as f:
    json.dump(dict(rows={"%s/%s" % k: v for k, v in rows.items()}, hf=hf,
                   startup=startup, evaluation=evaluation,
                   args=vars(args)), f, indent=1)
  print("\n".join(lines))


if __name__ == "__main__":
  main()
