"""Our models and Hugging Face's, trained side by side on the same batches.

For each gin model: trains it with ``switch-mtf train``'s code (one CPU
device, seed fixed), then trains Hugging Face's model of the same shapes
(``switch_mtf.hf.peer``) from our step-0 checkpoint on exactly the batches
ours consumed, with Mesh TF's Adafactor and loss; both are scored on the
same fixed validation examples at the same steps.  Writes a Markdown table,
a plot and the raw numbers to ``--output_dir``/``--name``.

Hugging Face routes each sequence as one group with a fixed capacity, so
unless ``--paper_routing_ours`` our side is configured the same way
(``SwitchFFN.route_per_sequence``, ``expert_capacity``): the comparison
then isolates the implementations.  A variant with our usual routing
(groups of up to ``group_size`` tokens, capacity factors) shows the effect
of routing on our side against the same peer.

  .venv/bin/python benchmarks/peer_quality.py --steps 2000 --evals 4 \\
      --model models/small/dense --model models/small/switch_8 --name hf_routing
"""
import argparse
import json
import os
import platform
import sys
import time

import switch_mtf  # noqa: F401  (compat patches before Mesh TF)
import numpy as np
import tensorflow.compat.v1 as tf

from switch_mtf import checkpoint_io
from switch_mtf import config
from switch_mtf.train import evaluation
from switch_mtf.reproduction import runs as experiments
from switch_mtf.hf import conversion as hf_conversion
from switch_mtf.hf import peer as hf_peer
from switch_mtf.tasks import embedded

HERE = os.path.dirname(os.path.abspath(__file__))


def _capacities(lengths, experts, factor):
  """Per-sequence slots per expert (Hugging Face's expert_capacity) for a
  capacity factor, per stack."""
  return {stack: max(4, int(lengths[key] * factor / max(experts, 1)))
          for stack, key in (("encoder", "inputs"), ("decoder", "targets"))}


def _ours(args, model, capacity, task, root):
  params = list(args.gin_param)
  if capacity and not args.paper_routing_ours:
    params += ["SwitchFFN.route_per_sequence = True",
               "encoder/SwitchFFN.expert_capacity = %d" % capacity["encoder"],
               "decoder/SwitchFFN.expert_capacity = %d" % capacity["decoder"]]
  spec = experiments.RunSpec(
      name=os.path.basename(model), model=model, params=tuple(params),
      steps=args.steps, evals=args.evals, seed=args.seed)
  return experiments.execute(spec, root, task, log_every=10,
                             out=lambda line: print("  ours %s: %s" % (
                                 spec.name, line), flush=True))


def _peer(args, model, capacity, record, root, batches, examples):
  directory = experiments.model_dir(root, os.path.basename(model))
  checkpoint = os.path.join(directory, "model.ckpt-0")
  config.parse([model, "layouts/cpu_1"], args.gin_param)
  reader = checkpoint_io.CheckpointReader(checkpoint)
  arch = hf_conversion.architecture_from_checkpoint(reader.shapes)
  settings = hf_peer.PeerSettings(
      expert_capacity=capacity or {"encoder": 0, "decoder": 0},
      jitter=args.peer_jitter,
      jitter_eps=float(config.query("SwitchRouter.jitter_eps", 0.01) or 0),
      aux_loss_coef=float(config.query("SwitchRouter.aux_loss_coef", 0.01)),
      stacked_expert_statistics=args.peer_stacked, seed=args.seed)
  peer = hf_peer.Peer(checkpoint, arch, settings)
  steps = [e["step"] for e in record["evaluations"]]
  history, evaluations = hf_peer.train(
      peer, batches, args.steps, evaluate_at=steps, examples=examples,
      every=10, log_every=200, out=lambda line: print(
          "  hf %s: %s" % (os.path.basename(model), line), flush=True))
  return dict(history=history,
              evaluations=[dict(step=s, neg_log_perplexity=v)
                           for s, v in sorted(evaluations.items())],
              settings=dict(vars(settings)), architecture=vars(arch))


def _window_mean(history, step, key="mean_loss", width=100):
  values = [h[key] for h in history if step - width < h["step"] <= step]
  return sum(values) / len(values) if values else None


def _report(args, results, out_dir, seconds):
  lines = ["# Our models and Hugging Face's, side by side (%s)" % args.name,
           "",
           "Command: `%s`  " % " ".join(["benchmarks/peer_quality.py"]
                                        + sys.argv[1:]),
           "Machine: %s, %d cores; %.0f s in all.  Same initial weights "
           "(our step-0 checkpoint), same batches (seed %d), Mesh TF's "
           "Adafactor and loss on both sides; validation: the same %d fixed "
           "examples (negative log perplexity, nats per target token)." % (
               platform.processor() or platform.machine(), os.cpu_count(),
               seconds, args.seed, results["examples"]),
           "Our routing: %s.  Hugging Face: per-sequence groups, capacity "
           "%s; jitter %s; Adafactor statistics %s." % (
               "the paper's (groups, capacity factors)"
               if args.paper_routing_ours else
               "per sequence with the same fixed capacity",
               results["capacity"], args.peer_jitter,
               "over all experts of a layer" if args.peer_stacked
               else "per expert"),
           "Training loss: mean of the last 100 steps' training objective "
           "(cross entropy + output z-loss + alpha x router loss).", ""]
  header = ["model", "step", "ours: train loss", "HF: train loss",
            "ours: validation", "HF: validation", "ours - HF (validation)"]
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for name, pair in results["models"].items():
    ours, theirs = pair["ours"], pair["hf"]
    hf_valid = {e["step"]: e["neg_log_perplexity"]
                for e in theirs["evaluations"]}
    for e in ours["evaluations"]:
      step, mine = e["step"], e["neg_log_perplexity"]
      other = hf_valid.get(step)
      lines.append("| %s | %d | %.4f | %.4f | %.4f | %s | %s |" % (
          name, step, _window_mean(ours["history"], step),
          _window_mean(theirs["history"], step), mine,
          "-" if other is None else "%.4f" % other,
          "-" if other is None else "%+.4f" % (mine - other)))
  lines += ["", "![curves](curves.png)", ""]
  with open(os.path.join(out_dir, "table.md"), "w") as f:
    f.write("\n".join(lines))
  print("\n".join(lines))
  _plot(results, os.path.join(out_dir, "curves.png"))


def _plot(results, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for i, (name, pair) in enumerate(results["models"].items()):
    for side, style in (("ours", "-"), ("hf", "--")):
      history = pair[side]["history"]
      steps = [h["step"] for h in history]
      smooth = [_window_mean(history, s) for s in steps]
      left.plot(steps, smooth, style, color=colors[i % len(colors)],
                label="%s (%s)" % (name, "ours" if side == "ours" else "HF"))
      ev = pair[side]["evaluations"]
      right.plot([e["step"] for e in ev],
                 [e["neg_log_perplexity"] for e in ev], style + "o",
                 color=colors[i % len(colors)],
                 label="%s (%s)" % (name, "ours" if side == "ours" else "HF"))
  left.set(xlabel="step", ylabel="training loss (100-step mean)",
           title="training")
  lows = [_window_mean(p[s]["history"], p[s]["history"][-1]["step"])
          for p in results["models"].values() for s in ("ours", "hf")]
  left.set_ylim(min(lows) - 0.05, min(lows) + 0.8)
  right.set(xlabel="step", ylabel="validation neg. log perplexity",
            title="validation (fixed examples)")
  for ax in (left, right):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", action="append", default=[])
  parser.add_argument("--gin_param", action="append", default=[],
                      help="extra gin bindings for our side (all models)")
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--evals", type=int, default=4)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--capacity_factor", type=float, default=1.25,
                      help="per-sequence capacity = length x this / experts")
  parser.add_argument("--paper_routing_ours", action="store_true",
                      help="our side keeps the paper's groups and capacity "
                      "factors")
  parser.add_argument("--peer_jitter", choices=["paper", "hf", "none"],
                      default="paper")
  parser.add_argument("--peer_stacked", action="store_true",
                      help="HF side: Adafactor's parameter scale and "
                      "clipping over all experts of a layer together")
  parser.add_argument("--corpus", choices=["default", "before"],
                      default="default",
                      help="the embedded corpus: today's default (held-out "
                      "articles) or the one before issue 14 (held-out "
                      "entities, 2 articles per entity)")
  parser.add_argument("--name", default="peer")
  parser.add_argument("--output_dir",
                      default=os.path.join(HERE, "results", "peer_quality"))
  parser.add_argument("--runs_dir", default="runs/peer_quality")
  args = parser.parse_args()
  models = args.model or ["models/small/dense", "models/small/switch_8"]
  started = time.time()
  tf.disable_eager_execution()
  # The corpus before issue 14 (benchmarks/miniature_search.py's BEFORE).
  task = embedded.register(**(dict(docs_per_entity=2, holdout="entities",
                                   validation_every=50)
                              if args.corpus == "before" else {}))
  config.parse([models[0], "layouts/cpu_1"])
  lengths = config.query("utils.run.sequence_length")
  examples = evaluation.fixed_examples(task.name, "validation", lengths)
  batches_path = os.path.join(args.runs_dir, "batches_%s_seed%d_%d.npz" % (
      args.corpus, args.seed, args.steps))
  if os.path.exists(batches_path):
    batches = dict(np.load(batches_path))
  else:
    batches = hf_peer.export_batches(task.name, lengths, 8, args.steps,
                                     args.seed)
    os.makedirs(args.runs_dir, exist_ok=True)
    np.savez_compressed(batches_path, **batches)
  root = os.path.join(args.runs_dir, args.name)
  results = dict(models={}, examples=examples.num_examples, capacity=None,
                 lengths=lengths)
  for model in models:
    config.parse([model, "layouts/cpu_1"], args.gin_param)
    experts = config.query("SwitchFFN.num_experts", 0)
    capacity = (_capacities(lengths, experts, args.capacity_factor)
                if experts else None)
    results["capacity"] = capacity or results["capacity"]
    record = _ours(args, model, capacity, task.name, root)
    hf = _peer(args, model, capacity, record, root, batches, examples)
    results["models"][os.path.basename(model)] = dict(
        ours=dict(history=record["history"],
                  evaluations=record["evaluations"],
                  train_seconds=record["train_seconds"]),
        hf=hf)
    out_dir = os.path.join(args.output_dir, args.name)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
      json.dump(dict(args=vars(args), **results), f)
    _report(args, results, out_dir, time.time() - started)


if __name__ == "__main__":
  main()
