"""TensorFlow session options for runs on CPU.

Every new set of fetches makes TensorFlow's graph optimizer (grappler) rewrite
the whole training graph before the step runs: about 2 s for the small
presets' 19k-node graphs.  On CPU three of its passes change nothing in the
training and evaluation graphs while taking a third of that time.  Checked
on the optimized graphs TensorFlow runs (small/switch_8 on 2 devices,
small/dense and small/switch_8 with ReLU experts on 1, small/switch_32 with
einsum dispatch on 2): the same number of nodes of each op type and of edges
with and without them, two annotations aside (``_input_shapes``,
``_grappler_relax_allocator_constraints``, which concern GPU memory);
checkpoints after 10 steps (small/dense, small/switch_8 on 1 and 2 devices)
and evaluations are bit-identical.

- ``layout``: converts convolutions' data formats for GPUs (no convolutions
  here);
- ``remapping``: fuses patterns such as MatMul/Conv2D with bias and
  activation (none occurs in Mesh TF's lowered graphs);
- ``memory_optimization``: swaps tensors to host memory under GPU memory
  pressure.

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
  return out
