"""The reproduction report: Markdown tables, PNG plots and the raw JSON.

``write(output_dir, results, meta)`` writes ``report.md``, ``results.json``
(every run's record) and ``*.png`` for the experiments in ``results``
({experiment: {run: record}}); it is called after each experiment, so an
interrupted reproduction still leaves a report of what finished.
"""
import json
import os

from switch_mtf.reproduction import runs as ex
from switch_mtf.reproduction import plan as rp

_PAPER = {
    "experts": "Quality improves monotonically with experts at equal FLOPs "
               "per token; Switch-Base 64 experts reaches T5-Base's quality "
               "7.5x faster in steps, 8 experts about 1.8x (Fig. 1, 12).",
    "capacity": "Table 1: Switch beats top-2 MoE at equal speed; a lower "
                "capacity factor is faster but drops more tokens (Switch "
                "reaches its quality with capacity factor 1.0-1.25).",
    "balance": "With the auxiliary loss (alpha 0.01) the load stays near "
               "uniform and few tokens are dropped (< 1% after warm-up at "
               "capacity factor 1.25); without it, experts collapse and "
               "drop more.",
    "init": "Table 3: initialization scale 0.1 gives lower loss and a much "
            "lower spread across seeds than 1.0 (-2.72 +- 0.01 against "
            "-3.60 +- 0.68 neg. log perplexity after 3.5k steps).",
    "policy": "Table 11: input jitter and argmax are best; sampling the "
              "expert is worse; input dropout is in between.",
    "cost": "FLOPs per token do not grow with experts; parameters do. Time "
            "per step grows mildly (routing, all-to-all, memory).",
    "knowledge": "Switch models fine-tune to better closed-book QA than "
                 "FLOP-matched dense ones (Table 5: TriviaQA, NQ, WebQA).",
    "distill": "Table 6: a dense student distilled from a Switch teacher "
               "(0.25 teacher probabilities, 0.75 labels) and initialized "
               "with its non-expert weights keeps about 30% of the teacher's "
               "quality gain over the dense baseline (without the "
               "initialization, less).",
    "upcycle": "Not in the paper (Komatsuzaki et al., 2022): a Switch model "
               "started from a trained dense checkpoint improves faster "
               "than the dense model trained on for the same steps.",
}


_MINIATURE = [
    "The data: the embedded encyclopedia (`tasks/corpus.py`), 5,000 "
    "fictional cities and people with three articles each that state the "
    "same facts in different words; validation holds out one article of "
    "every 20th entity, so its text is predictable from what training "
    "showed (facts need parameters, which Switch adds at equal FLOPs).  How "
    "this miniature was chosen, and every configuration tried with its "
    "numbers: `benchmarks/results/miniature_search.md`; our models against "
    "Hugging Face's on the same batches: "
    "`benchmarks/results/peer_quality/`."]


def write(output_dir, results, meta):
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, "results.json"), "w") as f:
    json.dump(dict(meta=meta, results=results), f)
  lines = ["# switch_mtf: the paper in miniature", "",
           "Mode: **%s**; pre-training task `%s`%s; %d s in all "
           "(steps, models: `switch_mtf/reproduction/plan.py`)." % (
               meta["mode"], meta["task"],
               (" with " + ", ".join("`%s`" % p for p in meta["extra_params"])
                if meta["extra_params"] else ""), meta["seconds"]),
           "Models: `gin/models/small` (d_model 128, 2+2 layers; Switch "
           "layers at every other FFN, each expert FLOP-matched to the dense "
           "FFN), batch 8, one CPU device, T5's learning rate (0.01 over "
           "these steps).  Validation: negative log perplexity per target "
           "token (nats, higher is better) on one fixed set of examples "
           "(the split preprocessed once with seed 0: the same tokens for "
           "every model and every evaluation).  Training loss curves are "
           "on batches the model had not seen before (under one epoch).",
           ""]
  if meta["mode"] == "quick":
    lines += ["**Quick mode is too short to show the paper's headline** "
              "(%d steps: the models are still far from converged, and "
              "differences are within run-to-run noise); it checks that "
              "every experiment runs.  `switch-mtf reproduce` (full) is "
              "the reproduction." % meta["scale"]["steps"], ""]
  if meta["task"] == rp.EMBEDDED_TASK:
    lines += _MINIATURE + [""]
  for name in rp.EXPERIMENTS:
    if name in results:
      section = globals()["_" + name](results[name], output_dir)
      lines += ["## " + section[0], "", "Paper: " + _PAPER[name], ""]
      lines += section[1:] + [""]
  with open(os.path.join(output_dir, "report.md"), "w") as f:
    f.write("\n".join(lines))


def _fmt(value, spec="%.3f", none="-"):
  return none if value is None else spec % value


def _table(header, rows):
  out = ["| " + " | ".join(header) + " |",
         "|" + "---|" * len(header)]
  out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return out


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  return pyplot


def _save(fig, output_dir, name):
  fig.tight_layout()
  fig.savefig(os.path.join(output_dir, name), dpi=80)
  _plt().close(fig)
  return "![%s](%s)" % (name, name)


def _experts(records, output_dir):
  speed = rp.speedups(records)
  dense_final = ex.final_neg_log_perplexity(records["dense"])
  rows = []
  for name, r in records.items():
    s = speed.get(name, {})
    rows.append((name, r["parameters"], r["flops_per_token"],
                 _fmt(ex.final_neg_log_perplexity(r), "%.4f"),
                 _fmt(s.get("steps_to_dense"), "%.0f",
                      "-" if name == "dense" else "not reached"),
                 _fmt(r["history"][-1]["seconds"] if name == "dense"
                      else s.get("seconds_to_dense"), "%.0f"),
                 _fmt(s.get("step_speedup"), "%.2fx"),
                 _fmt(s.get("time_speedup"), "%.2fx"),
                 _fmt(s.get("loss_step_speedup"), "%.2fx"),
                 "%.0f" % r["tokens_per_second"]))
  plt = _plt()
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for name, r in records.items():
    steps = [e["step"] for e in r["evaluations"]]
    values = [e["neg_log_perplexity"] for e in r["evaluations"]]
    axes[0].plot(steps, values, "o-", label=name)
    axes[1].plot([rp.seconds_at_step(r, s) for s in steps], values, "o-",
                 label=name)
    curve = rp.smoothed_losses(r)
    axes[2].plot([c[0] for c in curve], [c[1] for c in curve], label=name)
  # The first steps' losses would flatten the rest of the training curves.
  tail = [v for r in records.values()
          for v in [c[1] for c in rp.smoothed_losses(r)][
              len(r["history"]) // 5:]]
  if tail:
    axes[2].set_ylim(min(tail) - 0.02, max(tail) + 0.02)
  for ax, xlabel, title in zip(
      axes, ("step", "training seconds", "step"),
      ("validation neg. log perplexity", "validation against time",
       "training cross entropy (smoothed)")):
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend()
  curves = _save(fig, output_dir, "experts_curves.png")
  fig, ax = plt.subplots(figsize=(5, 3.5))
  experts = [(int(rp.bound(records[n], "SwitchFFN.num_experts")), s)
             for n, s in speed.items()]
  experts.sort()
  ax.plot([e for e, _ in experts],
          [s.get("step_speedup") or 0 for _, s in experts], "o-",
          label="validation (steps)")
  ax.plot([e for e, _ in experts],
          [s.get("loss_step_speedup") or 0 for _, s in experts], "s--",
          label="training loss (steps)")
  ax.axhline(1.0, color="gray", lw=0.5)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("experts")
  ax.set_ylabel("speedup over dense (0: not reached)")
  ax.legend()
  speedup = _save(fig, output_dir, "experts_speedup.png")
  return ["1. Scaling with experts at equal FLOPs per token (Fig. 1, 12)"] + \
      _table(("run", "parameters", "FLOPs/token", "final validation",
              "steps to dense final", "seconds to dense final",
              "speedup (steps)", "speedup (time)",
              "speedup (train loss)", "tokens/s"), rows) + [
          "", "Dense final validation: %s.  Speedup = dense steps (or "
          "seconds) / the Switch model's steps (seconds) to reach it, "
          "interpolated between evaluations; \"train loss\" uses the "
          "training cross entropy (the loss without α·Σ N·Σf·P), every 10 "
          "steps, smoothed over 50." % _fmt(
              dense_final, "%.4f"), "", _verdict(records, speed), "",
      curves, speedup] + _peer_benchmark()


def _verdict(records, speed):
  """One sentence on the headline, from the numbers."""
  reached = sorted((s["step_speedup"], n) for n, s in speed.items()
                   if s.get("step_speedup"))
  missed = [n for n, s in speed.items() if not s.get("step_speedup")]
  steps = records["dense"]["history"][-1]["step"]
  if not reached:
    return ("**Not reproduced here:** no Switch model reaches the dense "
            "model's final validation within %d steps." % steps)
  best, name = reached[-1]
  return ("%d of %d Switch models reach the dense model's final validation "
          "within %d steps (best: %s, %.2fx fewer steps%s)%s." % (
              len(reached), len(speed), steps, name, best,
              ", %.2fx less time" % speed[name]["time_speedup"]
              if speed[name].get("time_speedup") else "",
              "; not reached: " + ", ".join(missed) if missed else ""))


def _peer_benchmark():
  """The Hugging Face side-by-side tables, if committed in this checkout."""
  root = os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "benchmarks", "results", "peer_quality")
  lines = []
  for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    path = os.path.join(root, name, "table.md")
    if os.path.exists(path):
      with open(path) as f:
        table = [l for l in f.read().splitlines() if l.startswith("|")]
      lines += ["", "Our models and Hugging Face's on the same batches "
                "from the same initial weights (`benchmarks/results/"
                "peer_quality/%s/`):" % name, ""] + table
  return lines


def _capacity(records, output_dir):
  del output_dir
  rows = []
  for r in records.values():
    cf = rp.bound(r, "SwitchFFN.capacity_factor_train", "1.25")
    router = ("top-2" if "Top2Router" in (rp.bound(r, "SwitchFFN.router")
                                          or "") else "switch (top-1)")
    rows.append((router, cf, _fmt(ex.final_neg_log_perplexity(r), "%.4f"),
                 "%.0f" % r["tokens_per_second"],
                 _fmt(ex.late_mean(r, "fraction_dropped"), "%.4f")))
  return ["2. Capacity factor, and top-2 routing (Table 1)"] + _table(
      ("router", "capacity factor (train)", "validation at step %d"
       % _steps(records), "tokens/s", "dropped fraction (2nd half)"), rows)


def _steps(records):
  return next(iter(records.values()))["spec"]["steps"]


def _load_series(record):
  """(steps, {layer: [[load of expert i at each step]]})."""
  steps = [h["step"] for h in record["history"]]
  layers = {}
  for h in record["history"]:
    for layer, metrics in h.get("router", {}).items():
      loads = sorted(k for k in metrics if k.startswith("expert_load_"))
      series = layers.setdefault(layer, [[] for _ in loads])
      for i, k in enumerate(loads):
        series[i].append(metrics[k])
  return steps, layers


def _balance(records, output_dir):
  plt = _plt()
  rows = []
  fig, axes = plt.subplots(1, len(records) + 1,
                           figsize=(5 * (len(records) + 1), 3.5))
  for ax, (name, r) in zip(axes, records.items()):
    alpha = "0" if "alpha0" in name else "0.01"
    steps, layers = _load_series(r)
    last = r["history"][-1].get("router", {})
    final = [(m.get("max_expert_load"), m.get("min_expert_load"))
             for m in last.values()]
    rows.append((alpha, _fmt(ex.final_neg_log_perplexity(r), "%.4f"),
                 _fmt(ex.late_mean(r, "fraction_dropped"), "%.4f"),
                 _fmt(ex.late_mean(r, "aux_loss"), "%.3f"),
                 ", ".join("%.3f/%.3f" % f for f in final if None not in f)))
    if layers:
      layer = sorted(layers)[0]
      for i, series in enumerate(layers[layer]):
        ax.plot(steps, series, lw=0.8, label="expert %d" % i)
      ax.set_title("alpha %s: load of %s" % (alpha, layer.split("/")[0]))
      ax.set_xlabel("step")
    axes[-1].plot(steps, [h["fraction_dropped"] for h in r["history"]],
                  label="alpha " + alpha)
  axes[-1].set_title("fraction of tokens dropped")
  axes[-1].set_xlabel("step")
  axes[-1].legend()
  image = _save(fig, output_dir, "balance_load.png")
  return ["3. Load balancing loss (alpha 0.01 against 0)"] + _table(
      ("alpha", "validation at step %d" % _steps(records),
       "dropped (2nd half)", "N·Σf·P (2nd half; 1 = uniform)",
       "final max/min expert load per layer (ideal 0.125)"), rows) + [
           "", image]


def _init(records, output_dir):
  del output_dir
  groups = {}
  for r in records.values():
    scale = str(rp.bound(r, "SwitchFFN.init_scale"))
    groups.setdefault(scale, []).append(r)
  rows = []
  for scale, runs in sorted(groups.items()):
    valid = [ex.final_neg_log_perplexity(r) for r in runs]
    loss = [ex.late_mean(r, "mean_loss", 0.2) for r in runs]
    vm, vs = rp.seed_statistics(valid)
    lm, ls = rp.seed_statistics(loss)
    rows.append((scale, len(runs), "%.4f ± %.4f" % (vm, vs),
                 "%.4f ± %.4f" % (lm, ls),
                 ", ".join("%.3f" % v for v in valid)))
  return ["4. Initialization scale over seeds (Table 3)"] + _table(
      ("scale", "seeds", "validation at step %d (mean ± std)"
       % _steps(records), "training loss, last 20% (mean ± std)",
       "per seed"), rows)


def _policy(records, output_dir):
  del output_dir
  rows = []
  for name, r in records.items():
    policy = rp.bound(r, "SwitchRouter.policy_train", "input_jitter")
    rows.append((policy, _fmt(ex.final_neg_log_perplexity(r), "%.4f"),
                 _fmt(ex.late_mean(r, "mean_loss", 0.2), "%.4f"),
                 _fmt(ex.late_mean(r, "fraction_dropped"), "%.4f")))
  return ["5. Router policy in training (Table 11)"] + _table(
      ("policy", "validation at step %d" % _steps(records),
       "training loss, last 20%", "dropped (2nd half)"), rows)


def _cost(records, output_dir):
  dense = next((r for r in records.values()
                if r["spec"]["model"].endswith("dense")), None)
  base = ex.seconds_per_step(dense) if dense else None
  rows, points = [], []
  for r in records.values():
    sps = ex.seconds_per_step(r)
    experts = ("dense" if r is dense else
               rp.bound(r, "SwitchFFN.num_experts"))
    rows.append((experts, r["parameters"], r["flops_per_token"],
                 "%.1f" % (1000 * sps), _fmt(sps / base if base else None,
                                             "%.2fx"),
                 "%.0f" % r["tokens_per_second"]))
    if experts != "dense":
      points.append((int(experts), sps, r["parameters"]))
  plt = _plt()
  fig, ax = plt.subplots(figsize=(5.5, 3.5))
  points.sort()
  ax.plot([p[0] for p in points], [1000 * p[1] for p in points], "o-")
  if base:
    ax.axhline(1000 * base, color="gray", ls="--", label="dense")
    ax.legend(loc="upper left")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("experts")
  ax.set_ylabel("ms per training step")
  twin = ax.twinx()
  twin.plot([p[0] for p in points], [p[2] / 1e6 for p in points], "s:",
            color="C1")
  twin.set_ylabel("parameters (M)", color="C1")
  image = _save(fig, output_dir, "cost_experts.png")
  lines = ["6. Cost against experts (one device, %d tokens per step)"
           % next(iter(records.values()))["tokens_per_step"]] + _table(
               ("experts", "parameters", "FLOPs/token", "ms/step",
                "vs dense", "tokens/s"), rows) + ["", image]
  return lines + _layer_benchmark()


def _layer_benchmark():
  """The layer benchmark's last results, if it was run in this checkout."""
  path = os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "benchmarks", "results",
                      "layer_benchmark.json")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    bench = json.load(f)
  rows = [(r["experts"], r["group"], "%.2fx" % (r["gather"] / r["dense"]),
           "%.2fx" % (r["einsum"] / r["dense"]),
           "%.2fx" % (r["upstream"] / r["dense"])) for r in bench["rows"]]
  return ["", "The Switch layer alone, one training step against a dense "
          "FFN of the same d_ff (`benchmarks/layer_benchmark.py`, %s):" %
          bench.get("machine", ""), ""] + _table(
              ("experts", "group", "switch_mtf gather", "switch_mtf einsum",
               "upstream moe.py"), rows)


def _knowledge(records, output_dir):
  del output_dir
  rows = []
  for name, r in records.items():
    if not name.startswith("qa_"):
      continue
    base = records[name[3:]]
    metrics = next(iter(r["metrics"].values()), {}) if r["metrics"] else {}
    rows.append((name[3:], _fmt(ex.final_neg_log_perplexity(base), "%.4f"),
                 r["spec"]["steps"], _fmt(metrics.get("em"), "%.2f"),
                 _fmt(metrics.get("f1"), "%.2f"),
                 _fmt(ex.final_neg_log_perplexity(r), "%.4f")))
  return ["7. Knowledge: closed-book QA after fine-tuning (§4)"] + _table(
      ("pre-trained model", "pre-training validation", "fine-tuning steps",
       "exact match", "F1", "QA validation neg. log perplexity"), rows)


def _distill(records, output_dir):
  del output_dir
  students = {n: r for n, r in records.items() if r["spec"]["distill_from"]}
  teacher_name = next(iter(students.values()))["spec"]["distill_from"]
  baseline_name = next(n for n, r in records.items()
                       if n not in students and n != teacher_name)
  dense = ex.final_neg_log_perplexity(records[baseline_name])
  teacher = ex.final_neg_log_perplexity(records[teacher_name])
  rows = []
  for name, r in records.items():
    value = ex.final_neg_log_perplexity(r)
    # A share of a gain is defined only when the teacher is better.
    gain = (value - dense) / (teacher - dense) if teacher > dense else None
    role = ("dense baseline" if name == baseline_name else
            "teacher" if name == teacher_name else
            "student, %s" % ("teacher's non-expert weights"
                             if r["spec"]["student_init"]
                             else "random initialization"))
    rows.append((name, role, r["parameters"], r["spec"]["steps"],
                 _fmt(value, "%.4f"),
                 "-" if name in (baseline_name, teacher_name) else _fmt(
                     None if gain is None else 100 * gain, "%.0f%%",
                     "n/a (the teacher is not better than the baseline)")))
  return ["8. Distilling the Switch model into a dense one (§4.2)"] + _table(
      ("run", "role", "parameters", "steps", "final validation",
       "share of the teacher's gain"), rows) + [
           "", "Students: loss = 0.75 hard labels + 0.25 the teacher's "
           "probabilities (temperature 1), trained as many steps as the "
           "dense baseline.  Share = (student - dense) / (teacher - dense)."]


def _upcycle(records, output_dir):
  del output_dir
  rows = []
  for name, r in records.items():
    spec = r["spec"]
    total = spec["steps"] + (
        records["dense"]["spec"]["steps"] if spec["continue_from"]
        or spec["upcycle_from"] else 0)
    how = ("dense" if name == "dense" else
           "dense, trained on" if spec["continue_from"] else
           "Switch (8 experts) upcycled from dense")
    rows.append((name, how, total, _fmt(ex.final_neg_log_perplexity(r),
                                        "%.4f")))
  return ["9. Sparse upcycling against training the dense model on"] + \
      _table(("run", "model", "total steps", "validation"), rows)
