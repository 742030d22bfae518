"""TensorFlow session options: for runs on CPU (``for_cpu``), and for
sessions whose answer does not depend on graph optimization
(``unoptimized``).

Every new set of fetches makes TensorFlow's graph optimizer (grappler) rewrite
the whole training graph before the step runs: about 2 s of the small
presets' start-up.  On CPU eight of its passes do nothing for the training
and evaluation graphs or only reorder them, while taking over half of that
time (small/switch_8 on 2 devices: 2.3 s of grappler time per start with
all, 1.3 s without the five first below; without the last three, 0.04 to
0.12 s less again in three paired starts, grappler's own timings summed:
``TF_CPP_MIN_LOG_LEVEL=0 TF_CPP_VMODULE=meta_optimizer=1``).

Four change nothing: checked on the optimized graphs TensorFlow runs
(small/switch_8 on 1 and 2 devices, small/dense on 1, small/switch_32 with
einsum dispatch on 2; for the first three also small/switch_8 with ReLU
experts on 1), the same number of nodes of each op type and of edges with
and without them, two annotations aside (``_input_shapes``,
``_grappler_relax_allocator_constraints``, which concern GPU memory):

- ``layout``: converts convolutions' data formats for GPUs (no convolutions
  here);
- ``remapping``: fuses patterns such as MatMul/Conv2D with bias and
  activation (none occurs in Mesh TF's lowered graphs);
- ``memory_optimization``: swaps tensors to host memory under GPU memory
  pressure;
- ``function_optimization``: inlines and specializes graph functions (the
  training step calls none; tf.data's functions are optimized by tf.data).

One changes the graph and not its results:

- ``tfg`` (the MLIR graph pass that runs first: attributes, topological
  order, shape inference): without it, the graphs have the same arithmetic
  ops and fewer transposes (small/switch_8 on 1 device: the 6 that Mesh
  TF's einsums put on the output of a Reciprocal are gone, 22 -> 16; on 2
  devices 36 -> 24) and a few more constants.

Checkpoints after 10 steps (the four models above) and evaluations are
bit-identical with and without all five, and 300 steps of small/switch_8
end at the same loss.

Three more change nothing (2026-12-04; the optimized training step's graph
compared node by node, names aside: every node's op, device, attributes and
inputs, recursively, the same with and without them, for small/switch_8 on
1 and 2 devices and with ReLU experts, small/dense, small/switch_32, and
small/switch_32 with einsum dispatch on 2 devices; checkpoints after 10
steps bit-identical for four of them, and the validation evaluations of two
the same to the last digit; test: ``session_config_test``):

- ``loop_optimization``: hoists loop invariants, removes dead branches and
  stack ops (the training and scoring graphs have no loops; decoding's
  sessions, which do, keep TensorFlow's defaults): 50-80 ms of its own per
  start;
- ``shape_optimization``: simplifies Shape/Size arithmetic: 30-40 ms;
- ``implementation_selector``: picks a function's implementation by device
  (for Keras' recurrent layers): 25-30 ms.

Under TensorFlow's CUDA build the defaults stay (the passes matter on GPU).
"""
import tensorflow.compat.v1 as tf
from tensorflow.core.protobuf import rewriter_config_pb2

_OFF = rewriter_config_pb2.RewriterConfig.OFF


def for_cpu(config=None):
  """``config`` (a ConfigProto; None: TensorFlow's defaults) with the passes
  above turned off where TensorFlow has no GPU support; else ``config``."""
  if tf.test.is_built_with_cuda():
    return config
  out = tf.ConfigProto()
  if config is not None:
    out.CopyFrom(config)
  rewrite = out.graph_options.rewrite_options
  rewrite.layout_optimizer = _OFF
  rewrite.remapping = _OFF
  rewrite.memory_optimization = rewriter_config_pb2.RewriterConfig.NO_MEM_OPT
  rewrite.function_optimization = _OFF
  rewrite.disable_tfg_optimizer = True
  rewrite.loop_optimization = _OFF
  rewrite.shape_optimization = _OFF
  rewrite.implementation_selector = _OFF
  return out


def unoptimized():
  """Options for a session whose answer cannot depend on how its graph is
  optimized, such as whether a dataset yields an element (``run``'s
  emptiness check): grappler off.  It rewrote that check's pipeline and
  functions for 0.3 of the check's 0.5-0.7 s (small/switch_8), to pull one
  element once."""
  out = tf.ConfigProto()
  out.graph_options.rewrite_options.disable_meta_optimizer = True
  return out
