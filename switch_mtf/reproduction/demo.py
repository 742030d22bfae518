"""The quick-start job: pre-train and evaluate a small Switch Transformer.

The CLI's own path, with nothing to configure: T5-style span corruption on
the embedded offline corpus, ``models/small/switch_8`` (a Switch layer with
8 experts at every other feed-forward layer) on ``layouts/cpu_ep_N`` (the
experts split over N virtual CPU devices), trained with t5's MtfModel and
``training.train``, then the validation negative log perplexity, a summary
with router health, a results JSON and plots.  Equivalent to
``switch-mtf train_and_eval --gin_file=models/small/switch_8
--gin_file=layouts/cpu_ep_2 --model_dir=runs/demo/model --steps=...``.
"""
import json
import os

from switch_mtf import config
from switch_mtf.moe import router_summaries
from switch_mtf.train import run as run_lib
from switch_mtf.train import workflows
from switch_mtf.errors import ConfigError
from switch_mtf.tasks import embedded


def run(steps=600, num_devices=2, num_experts=8, seed=0,
        output_dir="runs/demo", batch_size=8, log=print):
  """Trains (resuming from ``output_dir``/model), evaluates, prints and
  writes a summary; returns it."""
  layout = "layouts/cpu_ep_%d" % num_devices
  if not os.path.exists(config.resolve(layout)):
    raise ConfigError("--devices=%d: the demo has layouts for 2, 4 or 8 "
                      "devices (gin/layouts/cpu_ep_*.gin)" % num_devices)
  task = embedded.register()
  config.parse(["models/small/switch_8", layout],
               ["SwitchFFN.num_experts = %d" % num_experts])
  lengths = config.query("utils.run.sequence_length")
  model_dir = os.path.join(output_dir, "model")
  log("switch_mtf demo: span corruption on the embedded corpus; "
      "models/small/switch_8 with %d experts split over %d CPU devices "
      "(%s); checkpoints in %s" % (num_experts, num_devices, layout,
                                   model_dir))
  model = run_lib.make_model(model_dir, batch_size, lengths,
                             save_checkpoints_steps=max(steps // 2, 1),
                             keep_checkpoint_max=2)
  progress = run_lib.train(model, task.name, steps, seed=seed,
                           every=max(1, min(25, steps // 10)),
                           router_every=max(steps // 3, 1))
  evaluation = workflows.evaluate(model, task.name, model_dir,
                                  run_lib.latest_step(model_dir),
                                  task_metrics=False, out=log)
  nlp, examples, tokens = (evaluation["neg_log_perplexity"],
                           evaluation["examples"], evaluation["target_tokens"])
  loads = {scope: {"max": round(m["max_expert_load"], 4),
                   "min": round(m["min_expert_load"], 4)}
           for scope, m in router_summaries.by_layer(
               progress.last_values).items()}
  history = progress.history
  summary = dict(
      steps=run_lib.latest_step(model_dir), steps_this_run=progress.
      steps_trained, train_seconds=round(progress.train_seconds, 1),
      tokens_per_second=round(
          progress.steps_trained * batch_size * sum(lengths.values())
          / max(progress.train_seconds, 1e-9)),
      first_loss=history[0]["loss"] if history else None,
      final_loss=history[-1]["loss"] if history else None,
      validation_neg_log_perplexity=nlp, validation_examples=examples,
      validation_target_tokens=tokens,
      final_train_aux_loss=history[-1]["aux_loss"] if history else None,
      final_train_fraction_dropped=(history[-1]["fraction_dropped"]
                                    if history else None),
      final_train_expert_load=loads)
  log("")
  if history:
    log("summary: train loss %.3f -> %.3f over steps %d-%d (%.0f s, %d "
        "tokens/s)" % (summary["first_loss"], summary["final_loss"],
                       history[0]["step"], history[-1]["step"],
                       summary["train_seconds"],
                       summary["tokens_per_second"]))
    log("  aux loss N·Σf·P (1.0 = balanced): %.3f; dropped tokens %.2f%% "
        "(capacity factor 1.25)" % (summary["final_train_aux_loss"],
                                    100 * summary["final_train_fraction_"
                                                  "dropped"]))
    for scope, load in sorted(loads.items()):
      log("  expert load %s: max %.3f min %.3f (ideal %.3f)" % (
          scope, load["max"], load["min"], 1.0 / num_experts))
  log("  validation neg. log perplexity (nats/target token, step %d): %.4f "
      "(%d examples)" % (summary["steps"], nlp, examples))
  if output_dir:
    _write_outputs(output_dir, summary, history, log)
  return summary


def _write_outputs(output_dir, summary, history, log):
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, "demo_results.json"), "w") as f:
    json.dump(dict(summary=summary, history=history), f, indent=1)
  if not history:
    return
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
  steps = [h["step"] for h in history]
  for ax, key, title in zip(
      axes, ("loss", "aux_loss", "fraction_dropped"),
      ("training loss (nats/token)", "aux loss N·Σ f·P", "fraction dropped")):
    ax.plot(steps, [h[key] for h in history])
    ax.set_title(title)
    ax.set_xlabel("step")
  fig.tight_layout()
  fig.savefig(os.path.join(output_dir, "demo_curves.png"), dpi=90)
  log("  wrote %s/demo_results.json and demo_curves.png" % output_dir)
