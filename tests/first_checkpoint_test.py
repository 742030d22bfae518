"""A new run's first checkpoint (step 0, saved when its session starts) is
saved without Mesh TF's copy of the slice variables back into the masters
(training._masters_current_after_restore): the restore hook has just copied
the masters into the slices, so the copy would write the masters' own
values.  Same checkpoints as with the copy; later saves still copy."""
import contextlib
import types

import mesh_tensorflow as mtf
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from switch_mtf import config
from switch_mtf.train import run
from switch_mtf.train import training
from switch_mtf.tasks import embedded

LENGTHS = {"inputs": 32, "targets": 8}


def _train(model_dir, monkeypatch):
  """Trains small/switch_8 (experts split over 2 devices) one step, a
  checkpoint at steps 0 and 1; returns the steps whose save copied the
  slices into the masters, and the checkpoints' values."""
  copied = []
  before_save = mtf.MtfCheckpointSaverListener.before_save

  def recording(self, session, global_step_value):
    copied.append(global_step_value)
    return before_save(self, session, global_step_value)
  monkeypatch.setattr(mtf.MtfCheckpointSaverListener, "before_save",
                      recording)
  tf.disable_eager_execution()
  task = embedded.register()
  config.parse(["models/small/switch_8", "layouts/cpu_ep_2"],
               ["utils.run.sequence_length = %r" % LENGTHS,
                "utils.run.save_checkpoints_steps = 1"])
  model = run.make_model(str(model_dir), 4, LENGTHS)
  run.train(model, task.name, 1, out=lambda line: None)
  values = {}
  for step in (0, 1):
    reader = tf.train.load_checkpoint(str(model_dir / ("model.ckpt-%d" % step)))
    values[step] = {name: reader.get_tensor(name)
                    for name in reader.get_variable_to_shape_map()}
  return copied, values


def test_first_checkpoint_without_the_copy_back_and_the_same(
    tmp_path, monkeypatch):
  copied, values = _train(tmp_path / "skipping", monkeypatch)
  assert copied == [1]
  monkeypatch.setattr(training, "_masters_current_after_restore",
                      lambda previous, hook: contextlib.nullcontext)
  copied_always, values_always = _train(tmp_path / "copying", monkeypatch)
  assert copied_always == [0, 1]
  for step in (0, 1):
    assert sorted(values[step]) == sorted(values_always[step])
    assert len(values[step]) > 100
    for name, value in values[step].items():
      np.testing.assert_array_equal(value, values_always[step][name],
                                    err_msg=name)
  # The step changed the parameters: the copy back was needed at step 1.
  assert any(not np.array_equal(values[0][name], values[1][name])
             for name in values[0] if name.endswith("wo/kernel"))


class _Listener(mtf.MtfCheckpointSaverListener):

  def __init__(self):  # pylint: disable=super-init-not-called
    self.copies = []

  def before_save(self, session, global_step_value):
    self.copies.append(global_step_value)


class _Restore(mtf.MtfRestoreHook):

  def __init__(self, slice_dtype):  # pylint: disable=super-init-not-called
    variable = types.SimpleNamespace(master_dtype=tf.float32,
                                     slice_dtype=slice_dtype)
    self._lowering = types.SimpleNamespace(
        graph=types.SimpleNamespace(all_variables=[variable]))

  def after_create_session(self, session, coord):
    pass


@pytest.mark.parametrize("restore_first, slice_dtype, same_session, skipped", [
    (True, tf.float32, True, True),
    (True, tf.bfloat16, True, False),   # a bfloat16 slice rounds the master
    (True, tf.float32, False, False),   # restored in another session
    (False, tf.float32, True, False),   # another hook before the saver's
])
def test_the_copy_is_skipped_only_right_after_the_restore(
    restore_first, slice_dtype, same_session, skipped):
  listener = _Listener()
  saver = types.SimpleNamespace(_listeners=[listener])
  restore = _Restore(slice_dtype)
  previous = restore if restore_first else tf.train.StepCounterHook()
  masters_current = training._masters_current_after_restore(previous, saver)  # pylint: disable=protected-access
  session, other = object(), object()
  restore.after_create_session(session if same_session else other, None)
  with masters_current():
    listener.before_save(session, 0)
  listener.before_save(session, 1)   # later saves always copy
  assert listener.copies == ([1] if skipped else [0, 1])
