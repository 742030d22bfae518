"""How a run starts, written once for the CLI and the reproduction:
fine-tuning a pre-trained checkpoint, sparse upcycling a dense one,
distilling a trained teacher.  Each returns what ``run.train`` /
``run.finetune`` need; the callers build their models and train."""
import contextlib
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
