"""Python's garbage collector around the first import of the upstream stack.

Importing TensorFlow, Mesh TF, seqio and t5 makes about 430,000 objects
that live as long as the process.  While they are being made, Python's
full (generation 2) collections scan all of them again and again, and find
nothing to free: small/switch_8 on 1 CPU made 8 full collections before
its first step, 1.0 s of its 10-12 s start-up, 0.74 s of it during the
imports.  ``long_lived_imports`` defers full collections while the stack
is imported (the young generations still free short-lived cycles) and then
freezes what exists (``gc.freeze``: later collections skip those objects),
so the full collections of graph building and training scan only what
those made: 2 full collections before the first step, 0.07 s.  Garbage
collection changes no result.
"""
import contextlib
import gc
import sys

# Above any count of young collections a process reaches while importing.
_NEVER = 1 << 30

# Whether TensorFlow was still to be imported at the first
# ``long_lived_imports`` of this process (empty: not asked yet).
_FRESH = []


@contextlib.contextmanager
def long_lived_imports(*modules):
  """Around the import of ``modules``: no full collection inside, and what
  exists at the end is frozen.  Only in a process that had not imported
  TensorFlow before its first use of this, and only while ``modules`` are
  still to be imported: in a process that has done work, the objects alive
  may include garbage that only a full collection would free (an earlier
  run's graph, say in a test process calling the command line in-process),
  which freezing would keep for good."""
  if not _FRESH:
    _FRESH.append("tensorflow" not in sys.modules)
  if not _FRESH[0] or all(name in sys.modules for name in modules):
    yield
    return
  young, middle, old = gc.get_threshold()
  gc.set_threshold(young, middle, _NEVER)
  try:
    yield
  finally:
    gc.freeze()
    gc.set_threshold(young, middle, old)
