"""The experts: E feed-forward networks without biases, one set of weights each.

Kernels (Mesh TF ``moe.py`` names and shapes):
  ``wi/kernel``   [experts, d_model, expert_hidden]  (ReLU experts)
  ``wi_0/kernel``, ``wi_1/kernel``                   (gated-GELU experts)
  ``wo/kernel``   [experts, expert_hidden, d_model]
Each expert's kernels are initialized with the expert's own fan-in (d_model
for wi, expert_hidden for wo), not E x fan-in.
"""
import mesh_tensorflow as mtf
import tensorflow.compat.v1 as tf

from switch_mtf.errors import ConfigError

# Activation name -> the factors of mtf.layers.dense_product.
ACTIVATIONS = {
    "relu": ["relu"],
    # gelu_tanh(x·wi_0) * (x·wi_1): T5 v1.1 and the paper's Table 9 models.
    # mtf.gelu is the tanh approximation.
    "gated_gelu": ["gelu", "linear"],
    "gelu": ["gelu"],
}


def check_activation(activation):
  if activation not in ACTIVATIONS:
    raise ConfigError("activation=%r is unknown: use one of %s"
                      % (activation, ", ".join(ACTIVATIONS)))


def expert_feed_forward(x, experts_dim, hidden_dim, output_dim, activation,
                        dropout_rate, train, variable_dtype, init_scale):
  """Applies expert e's FFN to the slice ``e`` of ``x`` along ``experts_dim``.

  Args:
    x: ``[..., experts, ..., d_model]`` expert inputs.
    experts_dim: Dimension "experts".
    hidden_dim: Dimension "expert_hidden" (each expert's d_ff).
    output_dim: output Dimension (d_model).
    activation: a key of ACTIVATIONS.
    dropout_rate: expert dropout on the hidden activation (paper §2.4:
      0.4 for fine-tuning), training only.
    train: a boolean.
    variable_dtype: a mtf.VariableDType.
    init_scale: truncated-normal fan-in scale (paper: 0.1).

  Returns:
    ``[..., experts, ..., output_dim]``
  """
  check_activation(activation)
  model_dim = x.shape.dims[-1]
  initializer = mtf.layers.VarianceScalingInitializer(scale=init_scale)
  factors = ACTIVATIONS[activation]
  h = mtf.layers.dense_product(
      x, reduced_dims=[model_dim], new_dims=[hidden_dim],
      activation_functions=factors if len(factors) > 1 else factors[0],
      expert_dims=[experts_dim], use_bias=False,
      variable_dtype=variable_dtype, kernel_initializer=initializer,
      name="wi")
  if train and dropout_rate > 0.0:
    h = mtf.dropout(h, is_training=True, rate=dropout_rate)
  return mtf.layers.dense(
      h, output_dim, reduced_dims=[hidden_dim], expert_dims=[experts_dim],
      use_bias=False, variable_dtype=variable_dtype,
      kernel_initializer=initializer, name="wo")


def expert_feed_forward_filled(x, filled, experts_dim, hidden_dim, output_dim,
                               activation, variable_dtype, init_scale):
  """``expert_feed_forward`` computed on the filled slots only.

  Every expert has ``capacity`` slots per group, but under a capacity factor
  > 1 some are always empty (their output is never read: no token owns
  them).  Here each device moves the filled rows of each of its experts to
  the front, runs one batched matmul over as many rows as the busiest expert
  has, and puts the results back in slot order; empty slots get 0.  Same
  variables, same outputs and gradients as ``expert_feed_forward`` (empty
  slots contribute nothing to either), with about 1/capacity_factor of its
  matmul FLOPs when the load is balanced.

  Requirements (the caller falls back to ``expert_feed_forward``
  otherwise): no dims before ``experts`` in ``x``, d_model and expert_hidden
  not split across devices, no expert dropout.

  Args:
    x: ``[experts, batch_unsplit, expert_capacity, d_model]``.
    filled: float ``[experts, batch_unsplit, expert_capacity]``, 1 where a
      token owns the slot.
    experts_dim, hidden_dim, output_dim, activation, variable_dtype,
      init_scale: as in expert_feed_forward.
  """
  check_activation(activation)
  model_dim = x.shape.dims[-1]
  initializer = mtf.layers.VarianceScalingInitializer(scale=init_scale)
  factors = ACTIVATIONS[activation]
  names = ["wi"] if len(factors) == 1 else ["wi_%d" % i
                                            for i in range(len(factors))]
  kernels = [mtf.layers.get_dense_kernel_weights(
      x, [hidden_dim], [model_dim], [experts_dim], initializer, name=n,
      variable_dtype=variable_dtype) for n in names]
  kernels.append(mtf.layers.get_dense_kernel_weights(
      x, [output_dim], [hidden_dim], [experts_dim], initializer, name="wo",
      variable_dtype=variable_dtype))
  activations = [_TF_ACTIVATIONS[f] for f in factors]

  def _fn(xs, mask, *weights):
    num_local = xs.shape[0]  # static: the slice shape
    rows = tf.reshape(xs, [num_local, -1, xs.shape[-1]])      # [E, N, M]
    mask = tf.reshape(mask, [num_local, -1]) > 0.5            # [E, N]
    # Per expert, its filled rows first (stable), cut at the largest count:
    # one batched matmul over [E, max_filled] rows instead of [E, N].
    order = tf.argsort(tf.cast(~mask, tf.int32), axis=1, stable=True)
    counts = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
    longest = tf.reduce_max(counts)
    picked = tf.gather(rows, order[:, :longest], batch_dims=1)
    h = None
    for act, w in zip(activations, weights[:-1]):
      factor = act(tf.matmul(picked, w))
      h = factor if h is None else h * factor
    out = tf.matmul(h, weights[-1])                            # [E, L, O]
    valid = tf.range(longest)[None, :] < counts[:, None]
    out *= tf.cast(valid, out.dtype)[:, :, None]
    # Back to slot order; rows past the cut read a zero row.
    inverse = tf.minimum(tf.argsort(order, axis=1, stable=True), longest)
    out = tf.pad(out, [[0, 0], [0, 1], [0, 0]])
    scattered = tf.gather(out, inverse, batch_dims=1)
    return tf.reshape(scattered, tf.concat([tf.shape(xs)[:-1],
                                            tf.shape(out)[-1:]], 0))

  out_shape = mtf.Shape(x.shape.dims[:-1] + [output_dim])
  return mtf.slicewise(
      _fn, [x, mtf.cast(filled, x.dtype)] + kernels, output_shape=out_shape,
      output_dtype=x.dtype, splittable_dims=[experts_dim],
      name="expert_feed_forward_filled")


def _gelu_tanh(x):
  return 0.5 * x * (1.0 + tf.tanh(0.7978845608028654
                                  * (x + 0.044715 * x * x * x)))


# The tf functions of ACTIVATIONS' factors (mtf.gelu is the tanh form).
_TF_ACTIVATIONS = {"relu": tf.nn.relu, "gelu": _gelu_tanh,
                   "linear": tf.identity}
