"""Moving tokens to their experts' buffers and back.

Two implementations with identical results, chosen by ``SwitchFFN.dispatch``:

``einsum``  The paper's (and Mesh TF's) dispatch: one-hot tensors
            ``[group, experts, capacity]`` contracted with the tokens.  Pure
            matmuls, which is what TPUs want, but the cost grows with
            group_size x experts x capacity x d_model = CF x group_size^2 x
            d_model per group: on CPU/GPU it costs more than the experts.

``gather``  Index-based: each slot reads its token with a gather, each token
            reads its slot back with a gather.  O(CF x group_size x d_model)
            per group.  Mesh TF has no gather by index (``mtf.gather`` is a
            one-hot einsum), so this is a slice-wise TF op with its own
            gradient: the gradient of a gather from a partial permutation is
            the gather with the inverse permutation, so no scatter-add is
            needed in either direction.

Both take tokens ``[(outer_batch,) batch, group, d_model]`` (groups split
like the batch) and hand the experts ``[(outer_batch,) experts, batch_unsplit,
expert_capacity, d_model]`` (experts split): the reshape between the two is
the all-to-all of expert parallelism.  ``experts`` comes first so that the
experts' matmuls need no transposes (measured: putting a size-1 outer dim or
the group dim before it costs 20% of the expert FLOPs on CPU).
"""
import mesh_tensorflow as mtf
import tensorflow.compat.v1 as tf

from switch_mtf.errors import ConfigError

DISPATCH_IMPLEMENTATIONS = ("einsum", "gather")


def make_dispatcher(kind, routing, groups_dim, experts_dim, batch_unsplit_dim):
  """Returns the dispatcher named ``kind`` for ``routing``."""
  if kind == "einsum":
    cls = EinsumDispatcher
  elif kind == "gather":
    cls = GatherDispatcher
  else:
    raise ConfigError("dispatch=%r is unknown: use one of %s"
                      % (kind, ", ".join(DISPATCH_IMPLEMENTATIONS)))
  return cls(routing, groups_dim, experts_dim, batch_unsplit_dim)


class _Dispatcher(object):
  """Shapes shared by both implementations.

  Tokens: ``lead + [batch, group, d_model]``; slots (expert inputs/outputs,
  before the all-to-all): ``lead + [expert_unsplit, batch, expert_capacity,
  d_model]``; after it: ``lead + [experts, batch_unsplit, expert_capacity,
  d_model]``.  ``lead`` is ``[outer_batch]`` or nothing.
  """

  def __init__(self, routing, groups_dim, experts_dim, batch_unsplit_dim):
    self._routing = routing
    self._groups_dim = groups_dim
    self._experts_dim = experts_dim
    self._batch_unsplit_dim = batch_unsplit_dim
    token_dims = routing.choices[0].expert_index.shape.dims
    self._lead = token_dims[:token_dims.index(groups_dim)]

  def _slot_dims(self, model_dim):
    r = self._routing
    return self._lead + [r.experts_dim, self._groups_dim, r.capacity_dim,
                         model_dim]

  def _expert_split_dims(self, model_dim):
    return self._lead + [self._experts_dim, self._batch_unsplit_dim,
                         self._routing.capacity_dim, model_dim]

  def _token_dims(self, model_dim):
    return self._lead + [self._groups_dim, self._routing.group_dim, model_dim]

  def _to_experts(self, slots):
    # Split over groups -> split over experts: the all-to-all.
    return mtf.reshape(slots, self._expert_split_dims(slots.shape.dims[-1]))

  def _from_experts(self, expert_outputs):
    model_dim = expert_outputs.shape.dims[-1]
    expert_outputs = _in_shape(expert_outputs,
                               mtf.Shape(self._expert_split_dims(model_dim)))
    return mtf.reshape(expert_outputs, self._slot_dims(model_dim))


class EinsumDispatcher(_Dispatcher):
  """One-hot einsum dispatch and combine (paper Fig. 15/16, Mesh TF)."""

  def dispatch(self, inputs):
    """Tokens -> expert inputs ``lead + [experts, batch_unsplit, C, M]``."""
    slots = mtf.einsum([inputs, self._routing.dispatch_tensor()],
                       output_shape=self._slot_dims(inputs.shape.dims[-1]))
    return self._to_experts(slots)

  def combine(self, expert_outputs):
    """Expert outputs -> tokens ``lead + [batch, group, M]``."""
    slots = self._from_experts(expert_outputs)
    return mtf.einsum([slots, self._routing.combine_tensor()],
                      output_shape=self._token_dims(slots.shape.dims[-1]))


# ---------------------------------------------------------------------------
# Gather dispatch.  Inside one slice (local groups g, group size S, E experts,
# capacity C), tokens are numbered t = g_i * S + s in [0, g*S) and slots
# q = e * (g*C) + g_i * C + c in [0, E*g*C).  The index g*S ("no token") and
# E*g*C ("no slot") read a zero row appended to the gathered tensor.


def _slot_maps_tf(expert_index, position, kept, num_lead, num_experts,
                  capacity):
  """Per slice: token -> slot and slot -> token maps of one choice.

  Args:
    expert_index, position: int32 ``lead + [g, S]``.
    kept: float32 ``lead + [g, S]``.
    num_lead: number of lead dims.
    num_experts, capacity: E and C.

  Returns:
    slot_of_token int32 ``lead + [g, S]`` and token_of_slot int32
    ``lead + [E, g, C]``.
  """
  shape = tf.shape(expert_index)
  groups, group_size = shape[num_lead], shape[num_lead + 1]
  no_token = groups * group_size
  no_slot = num_experts * groups * capacity
  group_ids = tf.reshape(tf.range(groups), [-1, 1])
  slot = expert_index * (groups * capacity) + group_ids * capacity + position
  slot_of_token = tf.where(kept > 0.5, slot, tf.fill(shape, no_slot))
  rows = tf.reduce_prod(shape[:num_lead])
  token_ids = tf.broadcast_to(tf.range(no_token), [rows, no_token])
  segments = (tf.reshape(slot_of_token, [rows, no_token])
              + tf.reshape(tf.range(rows), [-1, 1]) * (no_slot + 1))
  token_of_slot = tf.math.unsorted_segment_min(
      tf.reshape(token_ids, [-1]), tf.reshape(segments, [-1]),
      rows * (no_slot + 1))
  token_of_slot = tf.minimum(token_of_slot, no_token)  # empty slot -> no token
  token_of_slot = tf.reshape(token_of_slot, [rows, no_slot + 1])[:, :no_slot]
  token_of_slot = tf.reshape(token_of_slot, tf.concat(
      [shape[:num_lead], [num_experts, groups, capacity]], 0))
  return slot_of_token, token_of_slot


def _gather_rows_tf(values, index, num_lead, num_row_dims):
  """Flattens ``num_row_dims`` dims after the lead dims of ``values`` into
  rows, appends a zero row, and gathers rows by ``index`` (lead dims are batch
  dims)."""
  shape = tf.shape(values)
  rows = tf.reduce_prod(shape[num_lead:num_lead + num_row_dims])
  flat = tf.reshape(values, tf.concat(
      [shape[:num_lead], [rows], shape[-1:]], 0))
  padding = [[0, 0]] * num_lead + [[0, 1], [0, 0]]
  return tf.gather(tf.pad(flat, padding), index, axis=num_lead,
                   batch_dims=num_lead)


def _tokens_to_slots(x, token_of_slot, slots_of_token, slot_shape):
  """x ``lead + [batch, group, M]`` -> ``lead + [expert_unsplit, batch, C, M]``.

  ``slots_of_token``: the token -> slot maps of every choice (the inverse
  maps, for the gradient).
  """
  num_lead = x.shape.ndims - 3

  def _grad(op, dy):
    dy = _in_shape(dy, op.outputs[0].shape)
    dx = None
    for slot_map in slots_of_token:
      term = _slots_to_tokens(dy, slot_map, token_of_slot, x.shape)
      dx = term if dx is None else dx + term
    return [dx, None]

  return mtf.slicewise(
      lambda xs, tos: _gather_rows_tf(xs, tos, num_lead, 2),
      [x, token_of_slot], output_shape=slot_shape, output_dtype=x.dtype,
      splittable_dims=x.shape.dims[:num_lead + 1] + x.shape.dims[-1:],
      grad_function=_grad, name="tokens_to_slots")


def _slots_to_tokens(y, slot_of_token, token_of_slot, token_shape):
  """y ``lead + [expert_unsplit, batch, C, M]`` -> ``lead + [batch, group, M]``.
  """
  token_shape = mtf.convert_to_shape(token_shape)
  num_lead = token_shape.ndims - 3

  def _grad(op, dy):
    dy = _in_shape(dy, op.outputs[0].shape)
    return [_tokens_to_slots(dy, token_of_slot, [slot_of_token], y.shape),
            None]

  return mtf.slicewise(
      lambda ys, sot: _gather_rows_tf(ys, sot, num_lead, 3),
      [y, slot_of_token], output_shape=token_shape, output_dtype=y.dtype,
      splittable_dims=token_shape.dims[:num_lead + 1] + token_shape.dims[-1:],
      grad_function=_grad, name="slots_to_tokens")


def _in_shape(x, shape):
  return x if x.shape == shape else mtf.transpose(x, shape)


class GatherDispatcher(_Dispatcher):
  """Index-based dispatch and combine (same results as EinsumDispatcher)."""

  def __init__(self, routing, groups_dim, experts_dim, batch_unsplit_dim):
    super(GatherDispatcher, self).__init__(routing, groups_dim, experts_dim,
                                           batch_unsplit_dim)
    r = routing
    num_lead = len(self._lead)
    num_experts, capacity = r.experts_dim.size, r.capacity_dim.size
    slot_shape = mtf.Shape(self._lead + [r.experts_dim, groups_dim,
                                         r.capacity_dim])
    self._slot_of_token = []
    self._token_of_slot = []
    for choice in r.choices:
      token_shape = choice.expert_index.shape
      slot_of_token, token_of_slot = mtf.slicewise(
          lambda e, p, k: _slot_maps_tf(e, p, k, num_lead, num_experts,
                                        capacity),
          [choice.expert_index, choice.position, choice.kept],
          output_shape=[token_shape, slot_shape],
          output_dtype=[tf.int32, tf.int32],
          splittable_dims=self._lead + [groups_dim], grad_function=0,
          name="slot_maps")
      self._slot_of_token.append(slot_of_token)
      self._token_of_slot.append(token_of_slot)
    # Slots of different choices never overlap, and "no token" is the largest
    # index, so the minimum merges the per-choice maps.
    merged = self._token_of_slot[0]
    for other in self._token_of_slot[1:]:
      merged = mtf.minimum(merged, other)
    self._merged_token_of_slot = merged

  def filled_slots(self):
    """float ``lead + [experts, batch_unsplit, C]``: 1 where a token owns the
    slot (in the experts-split layout the experts compute in)."""
    r = self._routing
    num_lead, group_size = len(self._lead), r.group_dim.size

    def _fn(token_of_slot):
      groups = tf.shape(token_of_slot)[num_lead + 1]
      return tf.cast(token_of_slot < groups * group_size, tf.float32)

    tos = self._merged_token_of_slot
    filled = mtf.slicewise(_fn, [tos], output_shape=tos.shape,
                           output_dtype=tf.float32,
                           splittable_dims=self._lead + [self._groups_dim],
                           grad_function=0, name="filled_slots")
    return mtf.reshape(filled, self._lead + [
        self._experts_dim, self._batch_unsplit_dim, r.capacity_dim])

  def dispatch(self, inputs):
    slots = _tokens_to_slots(
        inputs, self._merged_token_of_slot, self._slot_of_token,
        mtf.Shape(self._slot_dims(inputs.shape.dims[-1])))
    return self._to_experts(slots)

  def combine(self, expert_outputs):
    slots = self._from_experts(expert_outputs)
    token_shape = self._token_dims(slots.shape.dims[-1])
    output = None
    for choice, slot_of_token, token_of_slot in zip(
        self._routing.choices, self._slot_of_token, self._token_of_slot):
      gathered = _slots_to_tokens(slots, slot_of_token, token_of_slot,
                                  token_shape)
      term = gathered * mtf.cast(choice.gate, slots.dtype)
      output = term if output is None else output + term
    return output
