"""Errors a user can fix, and the one place that tells them from bugs.

``ConfigError`` is raised wherever a value is wrong; ``user_error`` turns
any exception that reaches the command line into (one line, exit status),
or None for a bug, whose traceback is then shown.  Plain Python: no
TensorFlow import.
"""
import errno
import os
import re
import sys


class ConfigError(ValueError):
  """A bad configuration value: the message names the value and the fix.

  Entry points catch this, print the one-line message and exit non-zero,
  without a traceback.
  """


def _checkpoint_mismatch(error):
  """One line for a checkpoint written by a different model, else None."""
  text = str(error)
  markers = ("Restoring from checkpoint failed", "not found in checkpoint",
             "assign to variable with tensor with wrong shape")
  if not any(m in text for m in markers):
    return None
  detail = [line.strip() for line in text.splitlines()
            if any(m in line for m in markers[1:])]
  return ("the checkpoint in --model_dir was written by a different model "
          "(%s): use a new --model_dir, or the gin files it was trained with "
          "(its operative_config.gin)" % (detail[0][:200] if detail
                                          else "variables differ"))


def _disk_full(error):
  """One line for a write that found the disk full, else None."""
  text = "%s %s" % (type(error).__name__, error)
  if getattr(error, "errno", None) != errno.ENOSPC and (
      "No space left on device" not in text):
    return None
  where = re.search(r"(/[^\s:;,']+)", text)
  return ("no space left on the device%s: free some space, then run the "
          "same command again (it resumes from the last good checkpoint, "
          "which this run left intact)" % (
              " writing " + os.path.dirname(where.group(1)) if where else ""))


def line(message, program="switch-mtf"):
  """How the command line shows an error the user can fix."""
  return "%s: error: %s" % (program, message)


def exit_now(message, status):
  """Ends the process at once with one line, from any thread: a run
  blocked inside TensorFlow cannot be interrupted otherwise.  Checkpoints
  are safe as after SIGKILL (the last good one is never written over)."""
  sys.stdout.flush()
  sys.stderr.write(line(message) + "\n")
  sys.stderr.flush()
  os._exit(status)  # pylint: disable=protected-access


def user_error(error):
  """(one-line message, exit status) for an error the user can fix or
  asked for; None for a bug (its traceback is shown).  The one place that
  decides (the CLI's error boundary calls it)."""
  name = type(error).__name__
  if isinstance(error, ConfigError):
    return str(error).splitlines()[0], 2
  if name == "TrainingDiverged":
    return str(error), 1
  if name == "TrainingStopped":
    return str(error), 143 if error.signal_name == "SIGTERM" else 130
  if isinstance(error, KeyboardInterrupt):
    return "interrupted", 130
  if name in ("UnavailableError", "AbortedError") and "/job:worker/" in str(
      error):
    return ("TensorFlow lost a task of the --cluster run (%s: %s): restart "
            "the worker, then run the same command again" % (
                name, str(error).strip().splitlines()[-1][:200])), 1
  for check, status in ((_disk_full, 1), (_checkpoint_mismatch, 2)):
    message = check(error)
    if message:
      return message, status
  return None
