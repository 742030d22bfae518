"""Workflows written once for the CLI, the demo and the reproduction:
how a run starts (fine-tuning a pre-trained checkpoint, sparse upcycling a
dense one, distilling a trained teacher: each returns what ``run.train`` /
``run.finetune`` need; the callers build their models and train), and how
a checkpoint is evaluated, with its results file."""
import contextlib
import json
import os

from switch_mtf.train import run as run_lib

# Fine-tuning (paper §4 / T5): gin/runs/finetune.gin (dropout 0.1, expert
# dropout 0.4, constant learning rate) and its learning rate.
FINETUNE_RUN = "runs/finetune"
FINETUNE_LEARNING_RATE = 1e-3


def finetune_bindings(params=()):
  """The fine-tuning run file's bindings, then ``params`` (which win)."""
  return run_lib.run_file_bindings(FINETUNE_RUN) + list(params)


def upcycled_start(dense_model_dir, model_dir, vocab_size, lengths,
                   batch_size):
  """The initial checkpoint of a Switch model upcycled from the latest
  checkpoint of ``dense_model_dir`` (every expert a copy of the dense
  feed-forward layer, a new router), written under ``model_dir`` unless the
  run already has checkpoints of its own (resuming).  Returns its prefix
  and whether it was written now."""
  from switch_mtf.train import upcycling  # pylint: disable=g-import-not-at-top
  prefix = os.path.join(model_dir, "upcycled", "model.ckpt-0")
  if run_lib.latest_step(model_dir) is not None:
    return prefix, False
  upcycling.upcycle(dense_model_dir, prefix, vocab_size, lengths, batch_size)
  return prefix, True


@contextlib.contextmanager
def distilling(teacher_model_dir, model_dir, vocab_size, lengths, batch_size,
               student_gin, initialize_student=True):
  """Within: the parsed gin builds a student that learns from the teacher
  (``distillation.prepare``); yields the student's first checkpoint (None
  when resuming).  On leaving, models are ordinary again."""
  from switch_mtf.train import distillation  # pylint: disable=g-import-not-at-top
  try:
    yield distillation.prepare(teacher_model_dir, model_dir, vocab_size,
                               lengths, batch_size, student_gin,
                               initialize_student=initialize_student)
  finally:
    distillation.set_teacher(None)


def evaluate(model, task_name, model_dir, step, split="validation",
             task_metrics=None, out=print):
  """Evaluates the checkpoint of ``step``: the split's negative log
  perplexity (the paper's metric) and, with ``task_metrics`` (None: when
  the task has metric functions), the task's metrics and, for a mixture,
  their benchmark average.  Prints one line per number, writes them to
  ``<model_dir>/<split>_eval/results-<step>.json`` and returns them."""
  import seqio  # pylint: disable=g-import-not-at-top
  from switch_mtf import metrics  # pylint: disable=g-import-not-at-top
  value, examples, tokens = run_lib.neg_log_perplexity(model, task_name,
                                                       split, step)
  out("step %d: %s neg_log_perplexity %.4f (%d examples, %d target tokens)"
      % (step, split, value, examples, tokens))
  results = dict(task=task_name, split=split, step=step,
                 neg_log_perplexity=value, examples=examples,
                 target_tokens=tokens, metrics={})
  subtasks = seqio.get_subtasks(run_lib.check_task(task_name))
  if task_metrics is None:
    task_metrics = any(t.metric_fns for t in subtasks)
  if task_metrics:
    results["metrics"] = run_lib.task_metrics(model, task_name, split, step)
    for task, values in sorted(results["metrics"].items()):
      for name, number in sorted(values.items()):
        out("step %d: %s %s %s %.4f" % (step, split, task, name, number))
    if len(subtasks) > 1:
      results["average"] = metrics.benchmark_average(results["metrics"])
      out("step %d: %s %s average %.4f" % (step, split, task_name,
                                            results["average"]))
  path = os.path.join(model_dir, "%s_eval" % split, "results-%d.json" % step)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(results, f, indent=1)
  os.replace(path + ".tmp", path)
  out("wrote %s" % path)
  return results
