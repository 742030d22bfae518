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

Both take tokens ``[outer_batch, batch, group, d_model]`` (groups split like
the batch) and hand the experts ``[outer_batch, experts, batch_unsplit,
expert_capacity, d_model]`` style tensors (experts split): the reshape between
the two is the all-to-all of expert parallelism.
"""
import mesh_tensorflow as mtf
import tensorflow.compat.v1 as tf

from switch_mtf.errors import ConfigError

DISPATCH_IMPLEMENTATIONS = ("einsum", "gather")


def make_dispatcher(kind, routing, groups_dim, experts_dim, batch_unsplit_dim):
  """Returns the dispatcher named ``kind`` for ``routing``."""
  if kind == "einsum":
    return EinsumDispatcher(routing, groups_dim, experts_dim,
                            batch_unsplit_dim)
  if kind == "gather":
    return GatherDispatcher(routing, groups_dim, experts_dim,
                            batch_unsplit_dim)
  raise ConfigError("dispatch=%r is unknown: use one of %s"
                    % (kind, ", ".join(DISPATCH_IMPLEMENTATIONS)))


class EinsumDispatcher(object):
  """One-hot einsum dispatch and combine (paper Fig. 15/16, Mesh TF)."""

  def __init__(self, routing, groups_dim, experts_dim, batch_unsplit_dim):
    self._routing = routing
    self._groups_dim = groups_dim
    self._experts_dim = experts_dim
    self._batch_unsplit_dim = batch_unsplit_dim

  def dispatch(self, inputs):
    """``[O, batch, group, M]`` -> ``[O, experts, batch_unsplit, C, M]``."""
    outer_dim, model_dim = inputs.shape.dims[0], inputs.shape.dims[-1]
    r = self._routing
    expert_inputs = mtf.einsum(
        [inputs, r.dispatch_tensor()],
        output_shape=[outer_dim, r.experts_dim, self._groups_dim,
                      r.capacity_dim, model_dim])
    # Split over groups -> split over experts: the all-to-all.
    return mtf.reshape(expert_inputs, [
        outer_dim, self._experts_dim, self._batch_unsplit_dim, r.capacity_dim,
        model_dim])

  def combine(self, expert_outputs):
    """``[O, experts, batch_unsplit, C, M]`` -> ``[O, batch, group, M]``."""
    outer_dim, model_dim = (expert_outputs.shape.dims[0],
                            expert_outputs.shape.dims[-1])
    r = self._routing
    expert_outputs = mtf.reshape(expert_outputs, [
        outer_dim, r.experts_dim, self._groups_dim, r.capacity_dim, model_dim])
    return mtf.einsum(
        [expert_outputs, r.combine_tensor()],
        output_shape=[outer_dim, self._groups_dim, r.group_dim, model_dim])


# ---------------------------------------------------------------------------
# Gather dispatch.  Slot indices are flattened: slot = expert * C + position,
# in [0, E*C).  The index E*C ("no slot") and the token index S ("no token")
# point at a zero row appended to the gathered tensor.


def _slot_maps_tf(expert_index, position, kept, num_experts, capacity):
  """Per slice: token -> slot and slot -> token maps of one choice."""
  group_size = tf.shape(expert_index)[-1]
  no_slot = num_experts * capacity
  slot_of_token = tf.where(kept > 0.5, expert_index * capacity + position,
                           tf.fill(tf.shape(expert_index), no_slot))
  lead = tf.shape(expert_index)[:-1]
  rows = tf.reduce_prod(lead)
  flat_slots = tf.reshape(slot_of_token, [rows, group_size])
  segment = (flat_slots
             + tf.range(rows)[:, None] * (no_slot + 1))
  token_ids = tf.broadcast_to(tf.range(group_size)[None, :], [rows, group_size])
  token_of_slot = tf.math.unsorted_segment_min(
      tf.reshape(token_ids, [-1]), tf.reshape(segment, [-1]),
      rows * (no_slot + 1))
  token_of_slot = tf.minimum(token_of_slot, group_size)  # empty -> no token
  token_of_slot = tf.reshape(token_of_slot, [rows, no_slot + 1])[:, :no_slot]
  token_of_slot = tf.reshape(
      token_of_slot, tf.concat([lead, [num_experts, capacity]], 0))
  return slot_of_token, token_of_slot


def _gather_rows_tf(values, index, axis):
  """``values`` gathered along ``axis`` (batch dims before it), index == size
  of that axis reading zeros."""
  rank = len(values.shape)
  padding = [[0, 0]] * rank
  padding[axis] = [0, 1]
  return tf.gather(tf.pad(values, padding), index, axis=axis, batch_dims=axis)


def _tokens_to_slots(x, token_of_slot, slots_of_token, out_shape):
  """x ``[O, batch, group, M]`` -> ``[O, batch, expert_unsplit, C, M]``."""
  lead = 2  # [outer_batch, batch]

  def _fn(xs, tos):
    return _gather_rows_tf(xs, tos, axis=lead)

  def _grad(op, dy):
    dy = _in_shape(dy, op.outputs[0].shape)
    dx = None
    for slot_map in slots_of_token:
      term = _slots_to_tokens(dy, slot_map, token_of_slot, x.shape)
      dx = term if dx is None else dx + term
    return [dx, None]

  return mtf.slicewise(
      _fn, [x, token_of_slot], output_shape=out_shape, output_dtype=x.dtype,
      splittable_dims=[out_shape.dims[0], out_shape.dims[1],
                       out_shape.dims[-1]],
      grad_function=_grad, name="tokens_to_slots")


def _slots_to_tokens(y, slot_of_token, token_of_slot, out_shape):
  """y ``[O, batch, expert_unsplit, C, M]`` -> ``[O, batch, group, M]``."""
  lead = 2
  out_shape = mtf.convert_to_shape(out_shape)

  def _fn(ys, sot):
    shape = tf.shape(ys)
    flat = tf.reshape(ys, tf.concat([shape[:lead], [-1], shape[-1:]], 0))
    return _gather_rows_tf(flat, sot, axis=lead)

  def _grad(op, dy):
    dy = _in_shape(dy, op.outputs[0].shape)
    return [_tokens_to_slots(dy, token_of_slot, [slot_of_token], y.shape),
            None]

  return mtf.slicewise(
      _fn, [y, slot_of_token], output_shape=out_shape, output_dtype=y.dtype,
      splittable_dims=[out_shape.dims[0], out_shape.dims[1],
                       out_shape.dims[-1]],
      grad_function=_grad, name="slots_to_tokens")


def _in_shape(x, shape):
  return x if x.shape == shape else mtf.transpose(x, shape)


class GatherDispatcher(object):
  """Index-based dispatch and combine (same results as EinsumDispatcher)."""

  def __init__(self, routing, groups_dim, experts_dim, batch_unsplit_dim):
    self._routing = routing
    self._groups_dim = groups_dim
    self._experts_dim = experts_dim
    self._batch_unsplit_dim = batch_unsplit_dim
    r = routing
    num_experts, capacity = r.experts_dim.size, r.capacity_dim.size
    self._slot_of_token = []
    self._token_of_slot = []
    for choice in r.choices:
      token_shape = choice.expert_index.shape
      slot_shape = mtf.Shape(token_shape.dims[:-1]
                             + [r.experts_dim, r.capacity_dim])
      slot_of_token, token_of_slot = mtf.slicewise(
          lambda e, p, k: _slot_maps_tf(e, p, k, num_experts, capacity),
          [choice.expert_index, choice.position, choice.kept],
          output_shape=[token_shape, slot_shape],
          output_dtype=[tf.int32, tf.int32],
          splittable_dims=token_shape.dims[:-1], grad_function=0,
          name="slot_maps")
      self._slot_of_token.append(slot_of_token)
      self._token_of_slot.append(token_of_slot)
    # Slots of different choices never overlap, and "no token" is the largest
    # index, so the minimum merges the per-choice maps.
    merged = self._token_of_slot[0]
    for other in self._token_of_slot[1:]:
      merged = mtf.minimum(merged, other)
    self._merged_token_of_slot = merged

  def dispatch(self, inputs):
    outer_dim, model_dim = inputs.shape.dims[0], inputs.shape.dims[-1]
    r = self._routing
    slots = _tokens_to_slots(
        inputs, self._merged_token_of_slot, self._slot_of_token,
        mtf.Shape([outer_dim, self._groups_dim, r.experts_dim, r.capacity_dim,
                   model_dim]))
    # Split over groups -> split over experts: the all-to-all.
    return mtf.reshape(slots, [outer_dim, self._batch_unsplit_dim,
                               self._experts_dim, r.capacity_dim, model_dim])

  def combine(self, expert_outputs):
    outer_dim, model_dim = (expert_outputs.shape.dims[0],
                            expert_outputs.shape.dims[-1])
    r = self._routing
    slots = mtf.reshape(
        _in_shape(expert_outputs, mtf.Shape([
            outer_dim, self._batch_unsplit_dim, self._experts_dim,
            r.capacity_dim, model_dim])),
        [outer_dim, self._groups_dim, r.experts_dim, r.capacity_dim,
         model_dim])
    token_shape = [outer_dim, self._groups_dim, r.group_dim, model_dim]
    output = None
    for choice, slot_of_token, token_of_slot in zip(
        r.choices, self._slot_of_token, self._token_of_slot):
      gathered = _slots_to_tokens(slots, slot_of_token, token_of_slot,
                                  token_shape)
      term = gathered * mtf.cast(choice.gate, slots.dtype)
      output = term if output is None else output + term
    return output
