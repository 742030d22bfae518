"""training.ProgressHook: printed steps, the window's mean loss, and one set
of fetches for every step (a new set makes TensorFlow optimize and build the
whole training step again)."""
import tensorflow.compat.v1 as tf

from switch_mtf import compat
from switch_mtf.train import training


ROUTER_TAG = "encoder/block_001/layer_001/SwitchFFN/router/fraction_dropped"


def test_progress_lines_and_the_same_fetches_every_step(monkeypatch):
  lines, fetches = [], []
  with tf.Graph().as_default():
    # A router scalar as the Switch layers' lowering registers them.
    dropped = tf.constant(0.125)
    monkeypatch.setattr(compat, "lowered_scalars",
                        lambda graph: {ROUTER_TAG: dropped})
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
      fetches.append(args.fetches)
      return args

    hook.before_run = recording_before_run
    with tf.train.MonitoredSession(hooks=[
        hook, tf.train.StopAtStepHook(last_step=25)]) as session:
      while not session.should_stop():
        session.run(train_op)
  assert len(fetches) == 25 and all(f == fetches[0] for f in fetches)
  assert sorted(fetches[0]) == sorted([ROUTER_TAG, "loss"])
  assert [h["step"] for h in hook.history] == [10, 20, 25]
  # Mean over each printed window: steps 1-10 have losses 0..9.
  assert [h["mean_loss"] for h in hook.history] == [4.5, 14.5, 22.0]
  assert [h["loss"] for h in hook.history] == [9.0, 19.0, 24.0]
  assert lines[0].startswith("step 10/25  loss 9.0000")
  assert [h["fraction_dropped"] for h in hook.history] == [0.125] * 3
  # Router health on steps 20 and 25 (the last).
  assert sum("dropped 12.50%" in line for line in lines) == 2, lines
  assert lines[-1].startswith("trained steps 1-25")
