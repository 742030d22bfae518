"""Switch models from Mesh TF's own transformer machinery.

A Switch Transformer is a Mesh TF Transformer (``make_bitransformer`` for the
T5-style encoder-decoder, ``Unitransformer`` for a decoder-only LM) in which
some feed-forward layers are Switch layers.  ``SparseLayerStack`` makes that
choice: it is a ``LayerStack`` that replaces every ``expert_every``-th
``DenseReluDense`` of the stack by a ``SwitchFFN``, keeping the replaced
layer's scope name, so checkpoints read like T5's
(``encoder/block_001/layer_001/SwitchFFN/wi/kernel``).  It plugs into the
upstream builders through gin:

  transformer.make_layer_stack.layer_stack_cls = @models.SparseLayerStack
  SparseLayerStack.expert_every = 2          # Switch-Base/Large/XXL
  decoder/SparseLayerStack.expert_every = 0  # e.g. a dense decoder

``expert_every=2`` makes feed-forward layers 1, 3, 5, ... sparse (the layout
of the released checkpoints: Hugging Face's ``sparse_step`` 2, flaxformer's
MIXED); ``1`` makes all of them sparse (Switch-C); ``0`` none (every preset,
dense ones too, builds its stacks with this class: ``models/common.gin``).

The stack also owns one modelling choice that Mesh TF's attention layers
hard-code: the scale of their kernels' initializer (paper §2.4, see
``attention_init_scale``).
"""
import functools

import gin
import mesh_tensorflow as mtf
from mesh_tensorflow.transformer import transformer
from mesh_tensorflow.transformer import transformer_layers
from mesh_tensorflow.transformer import utils as mtf_utils
import tensorflow.compat.v1 as tf

from switch_mtf.moe import attention as attention_lib
from switch_mtf.moe import layers
from switch_mtf.errors import ConfigError


@gin.configurable
class SparseLayerStack(transformer.LayerStack):
  """A LayerStack whose every ``expert_every``-th feed-forward layer is a
  Switch layer (configured by gin: ``SwitchFFN.*``, scoped ``encoder/`` or
  ``decoder/`` as usual)."""

  def __init__(self, layers_list, expert_every=2, **kwargs):
    if not isinstance(expert_every, int) or expert_every < 0:
      raise ConfigError(
          "SparseLayerStack.expert_every=%r must be an integer >= 0 (2: every "
          "other feed-forward layer, 1: all, 0: none)" % (expert_every,))
    self.expert_every = expert_every
    if expert_every:
      replaced = []
      ffn_index = 0
      for layer in layers_list:
        if isinstance(layer, transformer_layers.DenseReluDense):
          if ffn_index % expert_every == expert_every - 1:
            switch = layers.SwitchFFN()
            switch.set_name(layer.name)
            layer = switch
          ffn_index += 1
        replaced.append(layer)
      layers_list = replaced
    super(SparseLayerStack, self).__init__(layers_list, **kwargs)

  def call(self, context, x):
    """LayerStack.call, with the initializer of Mesh TF's attention kernels
    scaled (the variables are made here, on the stack's first call)."""
    # Layers made in a scope named after their class: Mesh TF's attention
    # layers (SelfAttention, EncDecAttention, the local and other variants
    # that subclass SelfAttention); Switch attention draws its own.
    scopes = {type(layer).__name__ for layer in self.layers
              if isinstance(layer, transformer_layers.SelfAttention)
              and not isinstance(layer, attention_lib.SwitchSelfAttention)}
    getter = functools.partial(_attention_init_getter, scopes=scopes,
                               scale=attention_init_scale())
    with tf.variable_scope(tf.get_variable_scope(), custom_getter=getter,
                           auxiliary_name_scope=False):
      return super(SparseLayerStack, self).call(context, x)


@gin.configurable
def attention_init_scale(scale=None):
  """The init scale s of Mesh TF's attention kernels: truncated normals with
  std sqrt(s / fan_in) (q also x d_kv^-1/2).  None (the default): the scale
  of every other weight matrix, ``VarianceScalingInitializer.scale`` (paper
  §2.4: 0.1 for all of them).  Upstream Mesh TF, which the paper's
  experiments ran on, hard-codes a plain normal with s = 1 for attention
  whatever the gin scale says (the measured std of a k kernel at d_model 128
  was 0.088 with scale 0.1 and with 1.0); ``attention_init_scale.scale =
  1.0`` keeps upstream's sigma, truncated at 2 sigma as every other matrix
  (std 0.88 sigma).  Switch attention's kernels are not Mesh TF's: their
  own init."""
  if scale is None:
    return mtf.layers.VarianceScalingInitializer().scale
  return scale


# The kernels Mesh TF's attention.AttentionParams makes, each with a plain
# normal initializer of std fan_in^-1/2 (q: also d_kv^-1/2).
_ATTENTION_KERNELS = ("q", "k", "v", "kv", "o")


def _attention_init_getter(getter, name, *args, scopes, scale, **kwargs):
  """Variable-scope custom getter: the kernels of the attention layers whose
  class scopes are ``scopes`` are drawn as every other weight matrix is
  (paper §2.4): a truncated normal (re-drawn beyond 2 std, as
  VarianceScalingInitializer) with the layer's std times sqrt(scale).
  Every other variable is made as asked."""
  initializer = kwargs.get("initializer")
  scope, _, kernel = name.rpartition("/")
  if (kernel in _ATTENTION_KERNELS and scope.rpartition("/")[2] in scopes
      and isinstance(initializer, tf.random_normal_initializer)):
    kwargs["initializer"] = tf.truncated_normal_initializer(
        mean=initializer.mean, stddev=initializer.stddev * scale ** 0.5,
        seed=initializer.seed)
  return getter(name, *args, **kwargs)


def build_model(model_type, vocab_size, layout=None, mesh_shape=None):
  """Builds the gin-configured model (Python objects only, no graph).

  The same call Mesh TF's ``utils.run`` makes, so what is counted or trained
  is exactly what gin describes.
  """
  return mtf_utils.build_model(
      model_type=model_type, input_vocab_size=vocab_size,
      output_vocab_size=vocab_size, layout_rules=layout,
      mesh_shape=mesh_shape)


def stacks(model):
  """``[(name, Unitransformer)]`` of a Bitransformer or Unitransformer."""
  if isinstance(model, transformer.Bitransformer):
    return [("encoder", model.encoder), ("decoder", model.decoder)]
  return [("decoder" if model.autoregressive else "encoder", model)]
