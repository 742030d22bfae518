"""training.ProgressHook: printed steps, the window's mean loss, and one set
of fetches for every step (a new set makes TensorFlow optimize and build the
whole training step again), per-expert loads only on printed steps."""
import os

import tensorflow.compat.v1 as tf

from switch_mtf import compat
from switch_mtf.train import training

LAYER = "encoder/block_001/layer_001/SwitchFFN"


def _train(monkeypatch, router_scalars):
  """25 steps under a ProgressHook (print every 10, router every 20);
  returns (hook, printed lines, the fetches of each step)."""
  lines, fetches = [], []
  with tf.Graph().as_default():
    # Router scalars as the Switch layers' lowering registers them.
    scalars = {tag: tf.constant(value)
               for tag, value in router_scalars.items()}
    monkeypatch.setattr(compat, "lowered_scalars", lambda graph: scalars)
    step = tf.train.get_or_create_global_step()
    losses = tf.constant([float(i) for i in range(30)])
    # The loss of step s (1-based) is s - 1: read before the increment.
    loss = tf.gather(losses, step)
    tf.add_to_collection(tf.GraphKeys.LOSSES, loss)
    with tf.control_dependencies([loss]):
      train_op = tf.assign_add(step, 1)
    hook = training.ProgressHook(25, 100, every=10, router_every=20,
                                 out=lines.append)
    before_run = hook.before_run

    def recording_before_run(run_context):
      args = before_run(run_context)
      fetches.append(sorted(args.fetches))
      return args

    hook.before_run = recording_before_run
    with tf.train.MonitoredSession(hooks=[
        hook, tf.train.StopAtStepHook(last_step=25)]) as session:
      while not session.should_stop():
        session.run(train_op)
  return hook, lines, fetches


def test_progress_lines_and_the_same_fetches_every_step(monkeypatch):
  dropped = LAYER + "/router/fraction_dropped"
  hook, lines, fetches = _train(monkeypatch, {dropped: 0.125})
  assert len(fetches) == 25 and all(f == fetches[0] for f in fetches)
  assert fetches[0] == sorted([dropped, "loss"])
  assert [h["step"] for h in hook.history] == [10, 20, 25]
  # Mean over each printed window: steps 1-10 have losses 0..9.
  assert [h["mean_loss"] for h in hook.history] == [4.5, 14.5, 22.0]
  assert [h["loss"] for h in hook.history] == [9.0, 19.0, 24.0]
  assert [h["fraction_dropped"] for h in hook.history] == [0.125] * 3
  assert lines[0].startswith("step 10/25  loss 9.0000")
  # Router health on steps 20 and 25 (the last).
  assert sum("dropped 12.50%" in line for line in lines) == 2, lines
  assert lines[-1].startswith("trained steps 1-25")


def test_per_expert_loads_are_fetched_on_printed_steps_only(monkeypatch):
  dropped = LAYER + "/router/fraction_dropped"
  loads = [LAYER + "/router/expert_load_%02d" % i for i in range(2)]
  hook, _, fetches = _train(monkeypatch, {dropped: 0.25, loads[0]: 0.75,
                                          loads[1]: 0.25})
  printed = [s for s, f in enumerate(fetches, 1) if loads[0] in f]
  assert printed == [10, 20, 25]
  assert all(f == sorted([dropped, "loss"])
             for s, f in enumerate(fetches, 1) if s not in printed)
  assert hook.history[-1]["router"][LAYER] == {
      "fraction_dropped": 0.25, "expert_load_00": 0.75,
      "expert_load_01": 0.25}


def _names(fetches):
  """Names of the tensors and ops in a nest of dicts, lists and tuples."""
  if isinstance(fetches, dict):
    return set().union(*map(_names, fetches.values()))
  if isinstance(fetches, (list, tuple)):
    return set().union(*map(_names, fetches))
  return {fetches.name} if hasattr(fetches, "name") else set()


def test_summary_steps_fetch_what_every_step_fetches(monkeypatch, tmp_path):
  """With the Estimator's summary hook (summaries at step 1, then every 10),
  the session still gets one set of fetches at every step: the step's graph
  is optimized and built once."""
  fetched = []
  run = tf.Session.run

  def recording_run(self, fetches, *args, **kwargs):
    fetched.append(_names(fetches))
    return run(self, fetches, *args, **kwargs)

  monkeypatch.setattr(tf.Session, "run", recording_run)
  with tf.Graph().as_default():
    dropped = tf.constant(0.5)
    monkeypatch.setattr(compat, "lowered_scalars",
                        lambda graph: {LAYER + "/router/fraction_dropped":
                                       dropped})
    step = tf.train.get_or_create_global_step()
    loss = tf.cast(step, tf.float32)
    tf.add_to_collection(tf.GraphKeys.LOSSES, loss)
    tf.summary.scalar("loss", loss)
    with tf.control_dependencies([loss]):
      train_op = tf.assign_add(step, 1)
    hook = training.ProgressHook(25, 100, every=10, router_every=0,
                                 out=lambda line: None)
    # As the Estimator: its summary hook and the session share a Scaffold,
    # whose summary op the session's start makes (merge_all).
    scaffold = tf.train.Scaffold()
    summaries = tf.train.SummarySaverHook(save_steps=10,
                                          output_dir=str(tmp_path),
                                          scaffold=scaffold)
    # StepOrderHook as in training: the summary hook picks its steps from
    # the step it fetches, read before the increment.
    with tf.train.MonitoredSession(
        session_creator=tf.train.ChiefSessionCreator(scaffold=scaffold),
        hooks=[training.StepOrderHook(), hook, summaries,
               tf.train.StopAtStepHook(last_step=25)]) as session:
      while not session.should_stop():
        session.run(train_op)
      summary_op = scaffold.summary_op
  steps = [names for names in fetched if train_op.name in names]
  assert len(steps) == 25
  assert all(names == steps[0] for names in steps), [
      sorted(names ^ steps[0]) for names in steps]
  assert summary_op.name in steps[0]
  # The summary hook still wrote its steps' summaries (1, 11, 21).
  written = [event.step for name in os.listdir(tmp_path)
             for event in tf.train.summary_iterator(str(tmp_path / name))
             if event.summary.value]
  assert written == [1, 11, 21]
