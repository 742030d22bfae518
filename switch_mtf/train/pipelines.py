"""Building seqio pipelines without autograph's rewrite where it changes
nothing.

tf.data hands every map function to autograph, which parses its Python
source, rewrites it and compiles the result.  For the embedded span
corruption task that is about 200 functions (seqio's and t5's preprocessors
and what they call) and 5 s of every training start, every evaluation set
and every emptiness check, although those functions are plain TensorFlow.

Autograph only turns Python control flow on tensors (``if``/``while``/
``for`` over a tensor, ``and``/``or``/``assert``/``len``/``range`` on one)
into graph ops; without it, such code raises a TypeError while the pipeline
is traced (a graph tensor is not a Python bool, not iterable), and every
other line creates the same ops.  So a pipeline that builds without
autograph is the pipeline autograph would have built (checked in
``tests/pipelines_test.py`` for the embedded task, eagerly and in a graph,
and T5's GLUE, SuperGLUE, SQuAD and C4 tasks), and one whose build raises a
TypeError is built again the usual way.  What differs: ``print`` of a tensor
in a map function prints the symbolic tensor once, not every element; and
after such a retry, the ops of the failed try stay in a TF1 graph (unused;
a training run's first build of a task is its emptiness check, outside the
Estimator's graph) and unseeded random ops created later in that graph get
other op seeds than without the retry.  seqio's preprocessor seeds are put back
(``compat.seqio_map_seed_kept``).

Plain Python, no gin: callers pass the function that builds the dataset.
"""
import tensorflow.compat.v1 as tf
from tensorflow.python.autograph.core import ag_ctx  # pylint: disable=g-direct-tensorflow-import

from switch_mtf import compat

# Names of the tasks whose pipelines needed autograph in this process (so
# they are not first built without it each time).
_NEED_AUTOGRAPH = set()


def build(task_name, build_fn):
  """Returns ``build_fn()`` (a tf.data pipeline of task ``task_name``),
  built without autograph when the task's functions allow it."""
  if task_name not in _NEED_AUTOGRAPH:
    try:
      with compat.seqio_map_seed_kept(), ag_ctx.ControlStatusCtx(
          status=ag_ctx.Status.DISABLED):
        return build_fn()
    except TypeError as e:
      # Python control flow on a tensor (or a TypeError autograph would
      # raise too: the build below raises it again).
      tf.logging.info("task %s: its pipeline is built with autograph (%s)",
                      task_name, e)
      _NEED_AUTOGRAPH.add(task_name)
  return build_fn()
