"""The model directory: who may write it, which checkpoints in it are
intact, what dead runs left behind, and whether a checkpoint fits a model.

Plain Python and TensorFlow's checkpoint reader; every problem a user can
fix is a ``ConfigError`` with one line naming the path.

- ``lock``: one trainer per directory.  An exclusive ``flock`` on
  ``<model_dir>/.lock``, which the kernel releases when its process dies
  (SIGKILL included), so a stale lock never blocks; the file names the pid
  of the holder for the message a second trainer gets.
- ``newest_intact``: TensorFlow's ``checkpoint`` file names the newest
  checkpoint, but a kill or a full disk can leave that one damaged (a
  truncated data file, a missing shard or index, a state file naming a
  step that is gone).  We read every variable of a candidate back (one
  RestoreV2 of the last slice of each: it fails unless the data files are
  complete; checkpoints over 2 GB are only checked for all their files)
  and fall back to older checkpoints; ``use_newest_intact`` points the
  state file at the one found (nothing is deleted).
- ``remove_leftovers``: ``*_temp*`` checkpoint directories and
  ``*.tmp<hex>`` files (graph.pbtxt, a checkpoint's .meta) that a killed
  or failed save left behind.
- ``mismatch``: the first variable a model needs that a checkpoint lacks or
  holds with another shape (for train, eval, predict and score alike).
"""
import errno
import fcntl
import glob
import os
import re
import shutil

from switch_mtf import checkpoint_io
from switch_mtf.errors import ConfigError

LOCK_NAME = ".lock"
# Checkpoints up to this size are read back in full when looking for the
# newest intact one; bigger ones are only checked for their files.
READ_CHECK_BYTES = 2 << 30


def prepare(model_dir):
  """Creates ``model_dir`` (and its parents); one line if it cannot be."""
  if os.path.exists(model_dir) and not os.path.isdir(model_dir):
    raise ConfigError("--model_dir=%s is a file, not a directory: give a "
                      "directory" % model_dir)
  try:
    os.makedirs(model_dir, exist_ok=True)
  except OSError as e:
    raise ConfigError("cannot create --model_dir=%s (%s): choose a writable "
                      "place" % (model_dir, e.strerror or e)) from None
  if not os.access(model_dir, os.W_OK):
    raise ConfigError("--model_dir=%s is not writable: choose a writable "
                      "place" % model_dir)


class Lock(object):
  """An exclusive lock on a model directory for the life of a process (or
  until ``release``)."""

  def __init__(self, model_dir):
    self.path = os.path.join(model_dir, LOCK_NAME)
    self._file = None

  def acquire(self):
    handle = open(self.path, "a+")
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise
      handle.seek(0)
      holder = handle.read().strip() or "another process"
      handle.close()
      raise ConfigError(
          "%s is in use by %s (training it now): wait for it, stop it, or "
          "use another --model_dir" % (os.path.dirname(self.path),
                                       holder)) from None
    handle.seek(0)
    handle.truncate()
    handle.write("process %d\n" % os.getpid())
    handle.flush()
    self._file = handle
    return self

  def release(self):
    if self._file is not None:
      self._file.close()   # closing drops the flock
      self._file = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *args):
    self.release()


def remove_leftovers(model_dir):
  """Removes what dead runs left (call with the lock held); returns the
  paths removed."""
  removed = []
  # TensorFlow writes a checkpoint into "<prefix>_temp/" and other files as
  # "<name>.tmp<hex>" before renaming them: what a dead run left.
  for path in (glob.glob(os.path.join(model_dir, "*_temp*"))
               + glob.glob(os.path.join(model_dir, "*.tmp[0-9a-f]*"))):
    if os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)
    else:
      try:
        os.remove(path)
      except OSError:
        continue
    removed.append(path)
  return removed


def _steps_on_disk(model_dir):
  steps = set()
  for path in glob.glob(os.path.join(model_dir, "model.ckpt-*.index")):
    match = re.search(r"model\.ckpt-(\d+)\.index$", path)
    if match:
      steps.add(int(match.group(1)))
  return sorted(steps, reverse=True)


def damage(prefix):
  """Why the checkpoint at ``prefix`` cannot be restored, or None."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not tf.io.gfile.exists(prefix + ".index"):
    return "%s.index is missing" % os.path.basename(prefix)
  try:
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
  except (tf.errors.OpError, ValueError) as e:
    return "%s: %s" % (os.path.basename(prefix),
                       str(e).strip().splitlines()[0][:160])
  shards = glob.glob(prefix + ".data-*-of-*")
  expected = int(shards[0].rsplit("-of-", 1)[1]) if shards else 1
  if len(shards) != expected:
    return "%s has %d of its %d data files" % (os.path.basename(prefix),
                                               len(shards), expected)
  if sum(os.path.getsize(f) for f in shards) > READ_CHECK_BYTES:
    return None   # too big to read at every start: files present is enough
  names = sorted(shapes)
  specs = []
  for name in names:
    shape = shapes[name]
    if shape and shape[0] > 1:   # only the last slice: the tensor's end
      specs.append("%s %d,1%s" % (" ".join(str(d) for d in shape),
                                  shape[0] - 1, ":-" * (len(shape) - 1)))
    else:
      specs.append("")
  try:
    checkpoint_io.run_op(lambda: tf.raw_ops.RestoreV2(
        prefix=prefix, tensor_names=names, shape_and_slices=specs,
        dtypes=[dtypes[n] for n in names]))
  except tf.errors.OpError as e:
    return "%s cannot be read (%s)" % (
        os.path.basename(prefix), str(e).strip().splitlines()[0][:160])
  return None


def _named(model_dir):
  """The checkpoint the state file names (whether it exists or not)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not os.path.exists(os.path.join(model_dir, "checkpoint")):
    return None
  try:
    state = tf.train.get_checkpoint_state(model_dir)
  except (tf.errors.OpError, ValueError):
    return None
  if not state or not state.model_checkpoint_path:
    return None
  path = state.model_checkpoint_path
  return path if os.path.isabs(path) else os.path.join(model_dir, path)


def newest_intact(model_dir):
  """(path of the newest checkpoint that can be restored or None, [(path,
  why) of newer damaged ones])."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  damaged = []
  named = _named(model_dir)
  steps = _steps_on_disk(model_dir)
  if named and not tf.io.gfile.exists(named + ".index"):
    damaged.append((named, "the checkpoint file names %s, which is not there"
                    % os.path.basename(named)))
  for step in steps:
    prefix = os.path.join(model_dir, "model.ckpt-%d" % step)
    why = damage(prefix)
    if why is None:
      return prefix, damaged
    damaged.append((prefix, why))
  return None, damaged


def use_newest_intact(model_dir, out=print):
  """Points ``model_dir``'s checkpoint state at its newest intact
  checkpoint (saying so if that is not the one it named); returns its
  path, or None where the directory has no checkpoint.  One ConfigError if
  every checkpoint there is damaged."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not _steps_on_disk(model_dir) and not os.path.exists(
      os.path.join(model_dir, "checkpoint")):
    return None
  path, damaged = newest_intact(model_dir)
  if path is None:
    raise ConfigError(
        "no intact checkpoint in %s (%s): restore the directory from a copy "
        "or start a new --model_dir" % (model_dir, damaged[0][1] if damaged
                                        else "no checkpoint files"))
  named = _named(model_dir)
  if named != path:
    out("using %s: the newer checkpoint is damaged (%s); it is left in "
        "place" % (os.path.basename(path), damaged[0][1] if damaged
                   else "the checkpoint file named none"))
    state = tf.train.get_checkpoint_state(model_dir)
    older = [p for p in (state.all_model_checkpoint_paths if state else [])
             if tf.io.gfile.exists(p + ".index")]
    tf.compat.v1.train.update_checkpoint_state(
        model_dir, path, all_model_checkpoint_paths=[
            p for p in older if _step(p) <= _step(path)] or [path])
  return path


def _step(path):
  return int(path.rsplit("-", 1)[1])


def mismatch(saved_shapes, wanted_shapes):
  """The first variable in ``wanted_shapes`` ({name: shape}) that
  ``saved_shapes`` lacks or holds with another shape, as text; None if the
  checkpoint fits."""
  for name in sorted(wanted_shapes):
    shape = [int(d) for d in wanted_shapes[name]]
    if name not in saved_shapes:
      return "%s is not in the checkpoint" % name
    if [int(d) for d in saved_shapes[name]] != shape:
      return "%s: %s in the checkpoint, %s in this model" % (
          name, [int(d) for d in saved_shapes[name]], shape)
  return None


def check_fits(checkpoint, wanted_shapes):
  """One ConfigError if the checkpoint does not fit the model."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  problem = mismatch(dict(tf.train.list_variables(checkpoint)),
                     wanted_shapes)
  if problem:
    raise ConfigError(
        "the checkpoint in %s was written by a different model (%s): use "
        "the gin files it was trained with (its operative_config.gin), or a "
        "new --model_dir" % (os.path.dirname(checkpoint), problem))
