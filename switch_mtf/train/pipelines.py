"""Building seqio pipelines without autograph's rewrite where it changes
nothing.

tf.data hands every map function to autograph, which parses its Python
source, rewrites it and compiles the result.  For the embedded span
corruption task that is about 200 functions (seqio's and t5's preprocessors
and what they call) and 5 s of every training start, every evaluation set
and every emptiness check, although those functions are plain TensorFlow.

Autograph only turns Python control flow on tensors (``if``/``while``/
``for`` over a tensor, ``and``/``or``/``assert`` on one) into graph ops;
without it, such code raises while the pipeline is traced (a tensor is not
a Python bool, a graph tensor is not iterable), and every other line creates
the same ops.  So a pipeline that builds without autograph is the pipeline
autograph would have built (checked for the embedded task in
``tests/pipelines_test.py``: the same batches), and one that does not is
built again the usual way.  (The one difference: ``print`` of a tensor in a
map function prints the symbolic tensor once, not every element.)

Plain Python, no gin: callers pass the function that builds the dataset.
"""
import tensorflow.compat.v1 as tf
from tensorflow.python.autograph.core import ag_ctx  # pylint: disable=g-direct-tensorflow-import

# Names of the tasks whose pipelines needed autograph in this process (so
# they are not first built without it each time).
_NEED_AUTOGRAPH = set()


def build(task_name, build_fn):
  """Returns ``build_fn()`` (a tf.data pipeline of task ``task_name``),
  built without autograph when the task's functions allow it."""
  if task_name not in _NEED_AUTOGRAPH:
    try:
      with ag_ctx.ControlStatusCtx(status=ag_ctx.Status.DISABLED):
        return build_fn()
    except Exception:  # pylint: disable=broad-except
      # Python control flow on a tensor somewhere (or an error autograph
      # would raise too): the usual build below gives the real result, or
      # the real error.
      tf.logging.info("task %s: its pipeline needs autograph", task_name)
      _NEED_AUTOGRAPH.add(task_name)
  return build_fn()
