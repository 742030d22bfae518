"""The paper's claims in miniature (paper_facts §6-7), measured side by side.

Each experiment is a list of runs (``runs.RunSpec``) on the small
FLOP-matched models of ``gin/models/small`` and an analysis of their records
into a table.  ``reproduce`` runs the chosen experiments (runs shared by two
experiments are trained once), then ``report.write`` turns the results into
Markdown, PNG plots and JSON.  Quick mode: the experiments but QA, fewer
models (no top-2, one seed, one student) and 100 steps (311 s measured on 2
cores); full mode: every model of the issue, 600 steps (33 minutes).
"""
import dataclasses
import statistics
import time

from switch_mtf.reproduction import runs as ex
from switch_mtf.errors import ConfigError

EMBEDDED_TASK = "switch_mtf_embedded_span_corruption"
QA_TASK = "switch_mtf_embedded_closed_book_qa"


@dataclasses.dataclass(frozen=True)
class Scale:
  steps: int            # the scaling runs (dense, 2-64 experts)
  evals: int            # validation evaluations per scaling run
  side_steps: int       # capacity, balance, policy and distillation runs
  short_steps: int      # the initialization runs (early training)
  cost_steps: int       # the timing runs
  finetune_steps: int
  experts: tuple        # the scaling experiment's expert counts
  cost_experts: tuple   # the timing experiment's expert counts
  seeds: tuple          # the initialization experiment's seeds
  capacity_factors: tuple = (1.0, 1.25, 2.0)
  policies: tuple = ("argmax", "input_jitter", "input_dropout", "sample")
  quick: bool = False


QUICK = Scale(steps=100, evals=2, side_steps=100, short_steps=30,
              cost_steps=30, finetune_steps=30, experts=(8,),
              cost_experts=(64,), seeds=(0,), capacity_factors=(1.0, 1.25),
              policies=("input_jitter", "sample"), quick=True)
# The headline (dense against 2-64 experts) gets the long runs; the
# comparisons among Switch variants, whose differences show early, shorter
# ones (about 90 minutes in all on 2 cores).
FULL = Scale(steps=2000, evals=8, side_steps=600, short_steps=150,
             cost_steps=50, finetune_steps=200,
             experts=(2, 4, 8, 16, 32, 64),
             cost_experts=(1, 2, 4, 8, 16, 32, 64), seeds=(0, 1, 2))

_DENSE = "models/small/dense"
_SWITCH = "models/small/switch_8"
_LOADS = ("SwitchFFN.summarize_expert_load = True",)


def _switch(experts, *params):
  return (_SWITCH, ("SwitchFFN.num_experts = %d" % experts,) + _LOADS
          + tuple(params))


def _side(scale, base):
  """The dense or Switch-8 run at the side experiments' length: the
  scaling run itself when the lengths agree."""
  main = _find(specs("experts", _with_8(scale)), base)
  if scale.side_steps == scale.steps:
    return main
  return dataclasses.replace(main, name="%s_%d" % (base, scale.side_steps),
                             steps=scale.side_steps, evals=1)


def _experts_runs(s):
  """Dense and Switch with each number of experts (Figure 4, Table 1)."""
  runs = [ex.RunSpec("dense", _DENSE, evals=s.evals, steps=s.steps)]
  for e in s.experts:
    model, params = _switch(e)
    runs.append(ex.RunSpec("switch_%d" % e, model, params, evals=s.evals,
                           steps=s.steps))
  return runs


def _capacity_runs(s):
  """Switch and top-2 at each capacity factor (Table 1)."""
  side = dict(steps=s.side_steps, evals=1)
  runs = []
  for router, extra in (("switch", ()), ("top2", (
      "SwitchFFN.router = @routing.Top2Router()",))):
    for cf in s.capacity_factors:
      if s.quick and router == "top2":
        continue   # full mode only
      if router == "switch" and cf == 1.25:
        runs.append(_side(s, "switch_8"))
        continue
      cf_params = () if cf == 1.25 else (
          "SwitchFFN.capacity_factor_train = %s" % cf,)
      model, params = _switch(8, *(extra + cf_params))
      runs.append(ex.RunSpec("%s_8_cf%s" % (router, cf), model, params,
                             **side))
  return runs


def _balance_runs(s):
  """With and without the load-balancing loss."""
  side = dict(steps=s.side_steps, evals=1)
  return [_side(s, "switch_8"),
          ex.RunSpec("switch_8_alpha0", *_switch(
              8, "SwitchRouter.aux_loss_coef = 0.0"), **side)]


def _init_runs(s):
  """The initialization scale over seeds (Table 3)."""
  runs = []
  for scale_value in (0.1, 1.0):
    for seed in s.seeds:
      model, params = _switch(8, *(
          "mesh_tensorflow.layers.VarianceScalingInitializer.scale = %s"
          % scale_value, "SwitchFFN.init_scale = %s" % scale_value))
      runs.append(ex.RunSpec("init_%s_seed%d" % (scale_value, seed),
                             model, params, steps=s.short_steps, evals=1,
                             seed=seed))
  return runs


def _policy_runs(s):
  """Router policies in training (Table 11)."""
  side = dict(steps=s.side_steps, evals=1)
  runs = []
  for policy in s.policies:
    if policy == "input_jitter":
      runs.append(_side(s, "switch_8"))
      continue
    runs.append(ex.RunSpec("switch_8_%s" % policy, *_switch(
        8, "SwitchRouter.policy_train = %r" % policy), **side))
  return runs


def _cost_runs(s):
  """Step time against the number of experts."""
  if s.quick:   # the scaling runs' speeds, and one with 64 experts
    pre = specs("experts", _with_8(s))
    runs = [_find(pre, "dense"), _find(pre, "switch_8")]
  else:
    runs = [ex.RunSpec("cost_dense", _DENSE, steps=s.cost_steps, evals=0)]
  for e in s.cost_experts:
    model, params = _switch(e)
    runs.append(ex.RunSpec("cost_switch_%d" % e, model, params[:1],
                           steps=s.cost_steps, evals=0))
  return runs


def _knowledge_runs(s):
  """Closed-book QA fine-tuned from dense and Switch."""
  pre = specs("experts", _with_8(s))
  runs = [_find(pre, "dense"), _find(pre, "switch_8")]
  for base in ("dense", "switch_8"):
    runs.append(ex.RunSpec(
        "qa_" + base, _find(pre, base).model, _find(pre, base).params,
        steps=s.finetune_steps, evals=1, finetune_from=base, task=QA_TASK,
        task_metrics=True))
  return runs


def _distill_runs(s):
  """Distilling Switch into dense (paper §4.2, Table 6)."""
  side = dict(steps=s.side_steps, evals=1)
  teacher = _find(specs("experts", _with_8(s)), "switch_8")
  runs = [_side(s, "dense"), teacher]
  for init in (True,) if s.quick else (True, False):
    runs.append(ex.RunSpec(
        "distill_dense_%s" % ("init" if init else "random"), _DENSE,
        distill_from=teacher.name, student_init=init, **side))
  return runs


def _upcycle_runs(s):
  """Sparse upcycling against continuing the dense run."""
  pre = specs("experts", _with_8(s))
  more = max(2, s.side_steps // 2)
  return [_find(pre, "dense"),
          ex.RunSpec("dense_continued", _DENSE, steps=more, evals=1,
                     continue_from="dense"),
          ex.RunSpec("upcycled_switch_8", *_switch(8), steps=more, evals=1,
                     upcycle_from="dense")]


_RUNS = {"experts": _experts_runs, "capacity": _capacity_runs,
         "balance": _balance_runs, "init": _init_runs,
         "policy": _policy_runs, "cost": _cost_runs,
         "knowledge": _knowledge_runs, "distill": _distill_runs,
         "upcycle": _upcycle_runs}


def specs(name, scale):
  """The runs of experiment ``name`` at ``scale``."""
  if name not in _RUNS:
    raise ConfigError("unknown experiment %r: choose from %s"
                      % (name, ", ".join(EXPERIMENTS)))
  return _RUNS[name](scale)


EXPERIMENTS = ("experts", "capacity", "balance", "init", "policy", "cost",
               "knowledge", "distill", "upcycle")
# Quick mode leaves out closed-book QA (exact match is 0 after 100 steps;
# its decoding costs a minute) unless asked for.
QUICK_EXPERIMENTS = tuple(e for e in EXPERIMENTS if e != "knowledge")


def _with_8(scale):
  """The scale, with 8 experts among the scaling runs (shared runs)."""
  if 8 in scale.experts:
    return scale
  return dataclasses.replace(scale, experts=tuple(scale.experts) + (8,))


def _find(runs, name):
  return next(r for r in runs if r.name == name)


def scaled(scale, steps):
  """``scale`` with ``steps`` pre-training steps and the other step counts
  scaled alike (at least 2 each)."""
  factor = steps / scale.steps
  return dataclasses.replace(scale, **{
      k: max(2, int(round(getattr(scale, k) * factor)))
      for k in ("steps", "side_steps", "short_steps", "cost_steps",
                "finetune_steps")})


def reproduce(names=EXPERIMENTS, quick=False, output_dir="runs/reproduce",
              task=EMBEDDED_TASK, extra_params=(), steps=None, out=print):
  """Runs the experiments ``names``; returns {experiment: {run: record}}.

  ``steps`` overrides the scale's pre-training steps (the other step counts
  follow in proportion).
  """
  from switch_mtf.reproduction import report  # pylint: disable=g-import-not-at-top
  scale = QUICK if quick else FULL
  if steps:
    scale = scaled(scale, steps)
  for name in names:
    if name not in EXPERIMENTS:
      raise ConfigError("unknown experiment %r: choose from %s"
                        % (name, ", ".join(EXPERIMENTS)))
  if "knowledge" in names and task != EMBEDDED_TASK:
    out("knowledge: skipped (its questions are about the embedded corpus; "
        "pre-training on %s)" % task)
    names = [n for n in names if n != "knowledge"]
  plan = {name: specs(name, scale) for name in names}
  by_name = {}
  for runs in plan.values():
    for spec in runs:
      if by_name.setdefault(spec.name, spec) != spec:
        raise AssertionError("two different runs named %s" % spec.name)
  out("reproduce (%s): %d experiments, %d runs, output in %s" % (
      "quick" if quick else "full", len(plan), len(by_name), output_dir))
  started = time.time()
  records = {}
  results = {}
  for name, runs in plan.items():
    for spec in runs:
      if spec.name not in records:
        out("[%s] %s: %s %s, %d steps" % (
            name, spec.name, spec.model, " ".join(spec.params[:3]),
            spec.steps))
        records[spec.name] = ex.execute(
            spec, output_dir, task, extra_params,
            log_every=5 if name == "cost" else 10,
            out=_every_nth_line(spec.name, 10))
    results[name] = {spec.name: records[spec.name] for spec in runs}
    report.write(output_dir, results, dict(
        mode="quick" if quick else "full", task=task,
        extra_params=list(extra_params), scale=dataclasses.asdict(scale),
        seconds=round(time.time() - started)))
  out("reproduce: done in %.0f s; report in %s/report.md" % (
      time.time() - started, output_dir))
  return results


def _every_nth_line(prefix, n):
  """Prints every ``n``-th progress line (and every other line) of a run."""
  count = [0]

  def out(line):
    if line.startswith("step ") and "/" in line.split(" ", 2)[1]:
      count[0] += 1
      if count[0] % n:
        return
    print("  %s: %s" % (prefix, line.strip()), flush=True)
  return out


# Analysis: plain functions of the records.

def crossing_step(evaluations, target):
  """First step where the validation value reaches ``target`` (higher is
  better), interpolating linearly between evaluations; None if never.
  Reached at the first evaluation: that step (an upper bound)."""
  previous = None
  for e in evaluations:
    value = e["neg_log_perplexity"]
    if value >= target:
      if previous is None:
        return float(e["step"])
      s0, v0 = previous["step"], previous["neg_log_perplexity"]
      return s0 + (target - v0) / (value - v0) * (e["step"] - s0)
    previous = e
  return None


def seconds_at_step(record, step):
  """Training seconds at ``step`` (interpolated from the progress lines)."""
  points = [(0, 0.0)] + [(h["step"], h["seconds"]) for h in record["history"]]
  for (s0, t0), (s1, t1) in zip(points, points[1:]):
    if s0 <= step <= s1:
      return t0 + (step - s0) / max(s1 - s0, 1e-9) * (t1 - t0)
  return points[-1][1]


def bound(record, name, default=None):
  """The value of the setting ``name`` (``runs.SETTINGS``) that the run
  ran with, as gin resolved it (the record's "settings"), else
  ``default``.  Records written before runs stored their settings: the
  value (a string, quotes removed) that the run's extra gin params bind to
  ``name`` (the last binding wins)."""
  settings = record.get("settings")
  if settings is not None and name in settings:
    value = settings[name]
    return default if value is None else value
  for param in reversed(record.get("spec", {}).get("params", [])):
    key, _, value = param.partition("=")
    if key.strip() == name:
      return value.strip().strip("'\"")
  return default


def aux_loss_coefficient(record):
  """The run's alpha (gin/models/switch.gin: 0.01 unless rebound)."""
  return float(bound(record, "SwitchRouter.aux_loss_coef", 0.01))


def cross_entropy(entry, alpha):
  """The window's mean training loss without the load-balancing losses
  (the training loss is cross entropy + alpha x the sum over Switch layers
  of N·Σf·P; the latter read at the window's last step)."""
  router = entry.get("router") or {}
  aux = sum(m.get("aux_loss", 0.0) for m in router.values())
  return entry["mean_loss"] - alpha * aux


def smoothed_losses(record, window=5):
  """(step, running mean of the per-window mean training cross entropy)."""
  history = record["history"]
  alpha = aux_loss_coefficient(record)
  values = [cross_entropy(h, alpha) for h in history]
  out = []
  for i, h in enumerate(history):
    chunk = values[max(0, i - window + 1):i + 1]
    out.append((h["step"], sum(chunk) / len(chunk)))
  return out


def speedups(records, dense_name="dense"):
  """Per Switch run: steps and seconds to reach the dense run's final
  validation quality, and the same from the smoothed training loss."""
  dense = records[dense_name]
  target = ex.final_neg_log_perplexity(dense)
  dense_loss = smoothed_losses(dense)[-1][1]
  dense_steps = dense["history"][-1]["step"]
  dense_seconds = dense["history"][-1]["seconds"]
  rows = {}
  for name, record in records.items():
    if name == dense_name:
      continue
    step = crossing_step(record["evaluations"], target)
    loss_step = next((s for s, v in smoothed_losses(record)
                      if v <= dense_loss), None)
    row = dict(steps_to_dense=step, loss_steps_to_dense=loss_step)
    if step is not None:
      seconds = seconds_at_step(record, step)
      row.update(step_speedup=dense_steps / step,
                 seconds_to_dense=seconds,
                 time_speedup=dense_seconds / max(seconds, 1e-9))
    if loss_step is not None:
      row["loss_step_speedup"] = dense_steps / loss_step
    rows[name] = row
  return rows


def seed_statistics(values):
  mean = statistics.mean(values)
  spread = statistics.stdev(values) if len(values) > 1 else 0.0
  return mean, spread

