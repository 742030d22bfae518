"""The checkpoint names of a model's variables, in one place.

Mesh TF names a variable by the TensorFlow variable scopes it is made in: the
stack (``encoder``, ``decoder``), the layer (``block_003/layer_001``, set by
``transformer.make_layer_stack``), the layer's class (``SelfAttention``,
``DenseReluDense``, ``SwitchFFN``, ...) and the variable.  Accounting (which
lists the variables without building a graph), the Hugging Face conversion
and upcycling all spell names with these functions, so that they agree with
each other and with the graph (tests/models_test.py compares accounting's
names with a built graph's).

  encoder/block_000/layer_000/rms_norm/scale
  encoder/block_000/layer_000/SelfAttention/{q,k,v,o,relative_attention_bias}
  encoder/block_000/layer_001/DenseReluDense/{wi,wi_0,wi_1,wo}/kernel
  encoder/block_001/layer_001/SwitchFFN/{wi,wi_0,wi_1,wo}/kernel
  encoder/block_001/layer_001/SwitchFFN/router/kernel
  encoder/rms_norm/scale, shared/embedding, decoder/logits/kernel
"""

SHARED_EMBEDDING = "shared/embedding"
DENSE_FFN = "DenseReluDense"
SWITCH_FFN = "SwitchFFN"
SELF_ATTENTION = "SelfAttention"
CROSS_ATTENTION = "EncDecAttention"
SWITCH_ATTENTION = "SwitchSelfAttention"
RELATIVE_BIAS = "relative_attention_bias"


def layer_scope(stack, block, index):
  """``encoder/block_001/layer_002``: layer ``index`` of block ``block``."""
  return "%s/block_%03d/layer_%03d" % (stack, block, index)


def child_scope(parent, name):
  """The scope ``name`` inside ``parent``: a layer's class scope
  (``.../layer_001`` + ``SwitchFFN``), or a part of a layer
  (``.../SwitchSelfAttention`` + ``q_experts``)."""
  return "%s/%s" % (parent, name)


def block_prefix(stack, block):
  """The prefix every variable of a block's layers starts with."""
  return "%s/block_%03d/" % (stack, block)


def block_index(name):
  """The block number of a layer variable's name (``None``: not in a
  block)."""
  parts = name.split("/")
  if len(parts) < 2 or not parts[1].startswith("block_"):
    return None
  return int(parts[1][len("block_"):])


def norm_scale(scope):
  """The RMS norm's scale of a layer (``scope``: its layer scope) or of a
  stack's output (``scope``: the stack)."""
  return scope + "/rms_norm/scale"


def embedding(stack):
  """A stack's own embedding (models without a shared one)."""
  return stack + "/embedding"


def positional_embedding(stack):
  return stack + "/positional_embedding"


def logits(stack):
  """The softmax kernel of a stack whose logits are not the embedding."""
  return stack + "/logits/kernel"


def attention_variable(scope, part):
  """``part`` (q, k, v, kv, o, relative_attention_bias) of the attention
  layer at ``scope`` (``.../layer_000/SelfAttention``)."""
  return "%s/%s" % (scope, part)


def ffn_inputs(factors):
  """The input kernels' names of a feed-forward layer whose activation has
  ``factors`` parts: ``wi`` (one), ``wi_0, wi_1`` (gated)."""
  return ["wi"] if factors == 1 else ["wi_%d" % i for i in range(factors)]


def ffn_kernel(scope, part):
  """Kernel ``part`` (wi, wi_0, wi_1, wo) of the feed-forward layer, dense or
  Switch, at ``scope`` (``.../layer_001/SwitchFFN``)."""
  return "%s/%s/kernel" % (scope, part)


def router_kernel(scope):
  """The router of the Switch layer at ``scope``."""
  return scope + "/router/kernel"


def is_router(name):
  return name.endswith("/router/kernel")


def in_switch_ffn(name):
  """Whether ``name`` is a variable of a Switch feed-forward layer (its
  experts or its router)."""
  return "/%s/" % SWITCH_FFN in name


def dense_counterpart(name):
  """The dense feed-forward kernel an expert kernel of a Switch layer
  replaces (same layer, same part); ``None`` for the router and for any
  other variable."""
  if not in_switch_ffn(name) or is_router(name):
    return None
  return name.replace("/%s/" % SWITCH_FFN, "/%s/" % DENSE_FFN)
