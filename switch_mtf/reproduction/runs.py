"""One training run of a comparison, measured: what the reproduction runs.

A ``RunSpec`` names a gin model, its extra bindings and how long to train.
``execute`` trains it with the same code as ``switch-mtf train`` (t5's
MtfModel through ``training.train``: same seeds, same data pipeline, same
checkpoints), evaluates the validation negative log perplexity at evenly
spaced checkpoints, and returns a record (plain JSON) with the training
curve, speed, router health, parameter count and the evaluations.  Records
are written beside the checkpoints; a run whose record matches its spec is
not trained again, so an interrupted reproduction continues where it
stopped.  A run that did not finish starts over (its partial curve would
mix two processes' timings).
"""
import contextlib
import dataclasses
import json
import os
import shutil
import typing

from switch_mtf.moe import accounting
from switch_mtf import config
from switch_mtf.train import run as run_lib
from switch_mtf.train import training
from switch_mtf.train import workflows
from switch_mtf.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run.

  Attributes:
    name: directory name under the output's ``runs/``, unique per setting.
    model: gin model file (``models/small/switch_8``).
    params: extra gin bindings.
    steps: training steps (fine-tuning: steps after the pre-trained one).
    evals: validation evaluations at evenly spaced checkpoints (the last at
      ``steps``); 0 for none.
    seed: ``--seed``.
    layout: gin layout file.
    finetune_from: name of a run whose last checkpoint this run fine-tunes
      (with gin/runs/finetune.gin) on ``task``; None to pre-train.
    task: the run's task; None for the reproduction's pre-training task.
    task_metrics: also decode the validation split and apply the task's
      metric functions (after the last step).
    upcycle_from: name of a dense run whose last checkpoint this Switch run
      starts from (sparse upcycling).
    continue_from: name of a run whose directory is copied and trained
      ``steps`` more steps (exactly the longer run, see training.train).
    distill_from: name of a trained (Switch) run that teaches this one.
    student_init: with ``distill_from``: start from the teacher's
      non-expert weights (else from the initializer).
  """
  name: str
  model: str
  params: typing.Tuple[str, ...] = ()
  steps: int = 500
  evals: int = 1
  seed: int = 0
  layout: str = "layouts/cpu_1"
  finetune_from: typing.Optional[str] = None
  task: typing.Optional[str] = None
  task_metrics: bool = False
  upcycle_from: typing.Optional[str] = None
  continue_from: typing.Optional[str] = None
  distill_from: typing.Optional[str] = None
  student_init: bool = True


# The settings the report tells runs apart by, as gin resolved them for the
# run (gin/models/switch.gin's values unless the run rebinds them; None
# where the model has no such setting, e.g. experts of a dense model).
SETTINGS = ("SwitchFFN.num_experts", "SwitchFFN.capacity_factor_train",
            "SwitchFFN.router", "SwitchRouter.policy_train",
            "SwitchRouter.aux_loss_coef", "SwitchFFN.init_scale")


def resolved_settings():
  """{name: value} of SETTINGS in the parsed gin config (plain JSON: a
  configurable reference becomes its name, e.g. "Top2Router")."""
  settings = {}
  for name in SETTINGS:
    value = config.query(name)
    if not isinstance(value, (bool, int, float, str, type(None))):
      value = getattr(value, "name", None) or str(value)
      value = value.rsplit(".", 1)[-1].rstrip("()")
    settings[name] = value
  return settings


def model_dir(root, name):
  return os.path.join(root, "runs", name)


def execute(spec, root, task, extra_params=(), batch_size=8, log_every=10,
            out=print):
  """Trains and evaluates ``spec`` under ``root``/runs; returns its record.

  ``extra_params`` (e.g. the bindings of a local corpus) go before the
  spec's own.  ``out`` receives the progress lines.
  """
  directory = model_dir(root, spec.name)
  key = dict(dataclasses.asdict(spec), pretraining_task=task,
             extra_params=list(extra_params), batch_size=batch_size)
  key["params"] = list(spec.params)
  record_path = os.path.join(directory, "record.json")
  if os.path.exists(record_path):
    with open(record_path) as f:
      record = json.load(f)
    if record.get("spec") == key:
      out("%s: done before, reusing %s" % (spec.name, record_path))
      return record
  if os.path.exists(directory):
    shutil.rmtree(directory)   # a different spec, or an unfinished run
  run_task = spec.task or task
  params = list(extra_params) + list(spec.params)
  config.parse([spec.model, spec.layout], params)
  settings = resolved_settings()
  lengths = config.query("utils.run.sequence_length")
  save_every = max(1, spec.steps // max(spec.evals, 1))
  keep = spec.evals + 2   # the step-0 checkpoint too
  init_checkpoint = None
  if spec.finetune_from:
    pretrained = model_dir(root, spec.finetune_from)
    start = run_lib.latest_step(pretrained)
    if start is None:
      raise ConfigError("run %s fine-tunes %s, which has no checkpoint"
                        % (spec.name, spec.finetune_from))
    model = run_lib.make_model(
        directory, batch_size, lengths,
        learning_rate=workflows.FINETUNE_LEARNING_RATE,
        save_checkpoints_steps=save_every, keep_checkpoint_max=keep,
        gin_bindings=workflows.finetune_bindings(params))
    progress = run_lib.finetune(model, run_task, spec.steps, pretrained,
                                seed=spec.seed, every=log_every,
                                router_every=0, out=out)
  else:
    start = 0
    vocab_size = run_lib.vocabulary(run_task).vocab_size
    if spec.upcycle_from:
      init_checkpoint, _ = workflows.upcycled_start(
          model_dir(root, spec.upcycle_from), directory, vocab_size, lengths,
          batch_size)
    if spec.continue_from:
      shutil.copytree(model_dir(root, spec.continue_from), directory)
      os.remove(os.path.join(directory, "record.json"))
      start = run_lib.latest_step(directory)
    with (workflows.distilling(
        model_dir(root, spec.distill_from), directory, vocab_size, lengths,
        batch_size, ([spec.model, spec.layout], params),
        initialize_student=spec.student_init) if spec.distill_from
          else contextlib.nullcontext(init_checkpoint)) as init_checkpoint:
      model = run_lib.make_model(directory, batch_size, lengths,
                                 save_checkpoints_steps=save_every,
                                 keep_checkpoint_max=keep)
      progress = run_lib.train(model, run_task, start + spec.steps,
                               seed=spec.seed, every=log_every,
                               router_every=0,
                               init_checkpoint=init_checkpoint, out=out)
  evaluations, metrics = [], {}
  for k in range(1, spec.evals + 1):
    step = start + (spec.steps if k == spec.evals else k * save_every)
    results = workflows.evaluate(
        model, run_task, directory, step,
        task_metrics=spec.task_metrics and k == spec.evals, out=out)
    evaluations.append(dict(step=step - start, neg_log_perplexity=results[
        "neg_log_perplexity"]))
    metrics = results["metrics"]
  if spec.task_metrics and not spec.evals:
    metrics = run_lib.task_metrics(model, run_task)
  record = dict(spec=key, history=progress.history,
                train_seconds=progress.train_seconds,
                steps_trained=progress.steps_trained,
                tokens_per_step=batch_size * sum(lengths.values()),
                evaluations=evaluations, metrics=metrics, settings=settings,
                **_size(lengths, batch_size, run_task))
  record["tokens_per_second"] = steady_tokens_per_second(record)
  with open(record_path + ".tmp", "w") as f:
    json.dump(record, f)
  os.replace(record_path + ".tmp", record_path)
  return record


def _size(lengths, batch_size, task):
  """Parameters and FLOPs per token of the parsed gin model."""
  mesh_shape, layout = config.mesh_and_layout()
  report = accounting.count(
      config.query("utils.run.model_type", "bitransformer"),
      run_lib.vocabulary(task).vocab_size, lengths, batch_size,
      layout=layout, mesh_shape=mesh_shape)
  return dict(parameters=report.total_parameters,
              flops_per_token=report.flops_per_token)


def steady_tokens_per_second(record):
  """Tokens/s after the first progress window (which holds the start-up
  and the first steps' graph optimizations)."""
  history = record["history"]
  if len(history) < 2:
    return record["steps_trained"] * record["tokens_per_step"] / max(
        record["train_seconds"], 1e-9)
  first, last = history[0], history[-1]
  return ((last["step"] - first["step"]) * record["tokens_per_step"]
          / max(last["seconds"] - first["seconds"], 1e-9))


def seconds_per_step(record):
  return record["tokens_per_step"] / max(steady_tokens_per_second(record),
                                         1e-9)


def late_mean(record, key, fraction=0.5):
  """Mean of a history value over the last ``fraction`` of the run."""
  history = record["history"]
  tail = history[int(len(history) * (1 - fraction)):] or history
  values = [h[key] for h in tail if h.get(key) is not None]
  return sum(values) / len(values) if values else None


def final_neg_log_perplexity(record):
  evaluations = record["evaluations"]
  return evaluations[-1]["neg_log_perplexity"] if evaluations else None
