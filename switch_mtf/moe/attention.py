"""Switch attention (paper Appendix A): experts produce the attention inputs.

``SwitchSelfAttention`` is Mesh TF's ``SelfAttention`` (same masking,
relative position biases, incremental decoding) whose query projection is a
Switch layer and whose key and value, shared as in the paper, come from a
second Switch layer.  Each expert is an FFN (d_model -> expert_hidden ->
heads x d_kv).  The paper found it better in float32 but unstable in
bfloat16, so it is off in every preset; use it like any attention layer:

  encoder/transformer.make_layer_stack.layers = [
      @attention.SwitchSelfAttention, @transformer_layers.DenseReluDense]
  SwitchSelfAttention.num_experts = 8
"""
import gin
import mesh_tensorflow as mtf
from mesh_tensorflow.transformer import transformer_layers
import tensorflow.compat.v1 as tf

from switch_mtf.moe import layers


class _SwitchAttentionParams(object):
  """The part of Mesh TF's AttentionParams that SelfAttention.call uses,
  with Switch layers instead of the q and kv projections."""

  def __init__(self, layer, context):
    self._layer = layer
    self._context = context
    heads = mtf.Dimension("heads", layer.num_heads)
    self.query_heads_dims = [heads]
    self._heads_and_kv = [heads, layer.kv_dim]
    self._combined = mtf.Dimension("heads",
                                   layer.num_heads * layer.kv_dim.size)
    self.wo = mtf.get_variable(
        context.mesh, "o", mtf.Shape([self._combined,
                                      context.model.model_dim]),
        initializer=tf.random_normal_initializer(
            stddev=self._combined.size ** -0.5),
        dtype=context.variable_dtype)

  def _switch(self, x, name, nonpadding):
    context = self._context
    with tf.variable_scope(name):
      y, result = layers.switch_feed_forward(
          x, self._layer.config, self._layer.router, context.train,
          context.variable_dtype, nonpadding=nonpadding,
          layout=context.model.layout, mesh_shape=context.model.mesh_shape,
          num_microbatches=context.num_microbatches or 1,
          output_dim=self._combined)
    if context.train and context.losses is not None:
      context.losses.append(mtf.cast(result.loss, context.activation_dtype))
    return mtf.replace_dimensions(y, self._combined, self._heads_and_kv)

  def _nonpadding(self, x, rename_to=None):
    nonpadding = self._context.nonpadding
    if not isinstance(nonpadding, mtf.Tensor):
      return None
    if self._context.length_dim not in x.shape.dims and rename_to is None:
      return None
    if rename_to is not None:
      nonpadding = mtf.replace_dimensions(nonpadding, self._context.length_dim,
                                          rename_to)
    return nonpadding

  def compute_q(self, x):
    q = self._switch(x, "q_experts", self._nonpadding(x))
    return q * self._layer.kv_dim.size ** -0.5

  def compute_kv(self, m):
    memory = [d for d in m.shape.dims if d.name == "memory_length"]
    nonpadding = self._nonpadding(m, rename_to=memory[0]) if memory else None
    return self._switch(m, "kv_experts", nonpadding)

  def compute_output(self, o, output_shape=None):
    o = mtf.transpose(o, o.shape - self._heads_and_kv + self._heads_and_kv)
    o = mtf.replace_dimensions(o, self._heads_and_kv, self._combined)
    return mtf.einsum([o, self.wo], output_shape=output_shape,
                      reduced_dims=[self._combined])


@gin.configurable
class SwitchSelfAttention(transformer_layers.SelfAttention):
  """Self-attention whose Q and shared K/V projections are Switch layers.

  Args:
    every field of layers.SwitchConfig: of the two Switch layers, with
      SwitchConfig's defaults except ``DEFAULTS`` (smaller experts, index
      dispatch).
    router: a routing.Router or its name (default SwitchRouter()).
    **kwargs: SelfAttention's arguments (num_heads, key_value_size,
      relative_attention_type, ...).  K and V are always shared.
  """

  DEFAULTS = {"hidden_size": 512, "dispatch": "gather"}

  @layers.takes_switch_config(DEFAULTS, more_keywords=True)
  def __init__(self, *, router=None, **settings):
    self.config, kwargs = layers.switch_config(settings, self.DEFAULTS)
    kwargs["shared_kv"] = True
    super(SwitchSelfAttention, self).__init__(**kwargs)
    self.router = layers.make_router(router, "SwitchSelfAttention")

  def make_params(self, context):
    return _SwitchAttentionParams(self, context)
