"""The experts: E feed-forward networks without biases, one set of weights each.

Kernels (Mesh TF ``moe.py`` names and shapes):
  ``wi/kernel``   [experts, d_model, expert_hidden]  (ReLU experts)
  ``wi_0/kernel``, ``wi_1/kernel``                   (gated-GELU experts)
  ``wo/kernel``   [experts, expert_hidden, d_model]
Each expert's kernels are initialized with the expert's own fan-in (d_model
for wi, expert_hidden for wo), not E x fan-in.
"""
import mesh_tensorflow as mtf

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
