"""The compat patches: Mesh TF imports, and same seed gives same numbers."""
import os
import subprocess
import sys

import numpy as np

SCRIPT = r"""
import sys
sys.path.insert(0, %r)
import numpy as np
import switch_mtf
import helpers
from switch_mtf.moe import layers
from switch_mtf.moe import routing
tokens = np.random.RandomState(0).randn(2, 8, 4).astype(np.float32)
config = layers.SwitchConfig(num_experts=4, hidden_size=8, group_size=8,
                             expert_dropout_rate=0.3)
out = helpers.run_switch(tokens, config,
                         routing.SwitchRouter(policy_train="input_jitter"),
                         train=True, seed=int(sys.argv[2]))
np.save(sys.argv[1], np.concatenate([out["logits"].ravel(), out["y"].ravel()]))
"""


def test_mesh_tensorflow_transformer_imports():
  from mesh_tensorflow.transformer import moe  # pylint: disable=g-import-not-at-top
  from tensorflow.python.framework import ops  # pylint: disable=g-import-not-at-top
  # Upstream moe.py calls this, which TensorFlow 2.15 moved (compat).
  assert hasattr(ops, "register_tensor_conversion_function")
  assert issubclass(moe.MoE1D, moe.transformer.TransformerLayer)


def test_same_seed_same_numbers_in_separate_processes(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
  outputs = []
  for i, seed in enumerate((3, 3, 4)):
    path = str(tmp_path / ("run%d.npy" % i))
    subprocess.run(
        [sys.executable, "-c", SCRIPT % os.path.dirname(__file__), path,
         str(seed)], check=True, env=env, capture_output=True)
    outputs.append(np.load(path))
  np.testing.assert_array_equal(outputs[0], outputs[1])
  # The seed reaches the jitter and the expert dropout: another one differs.
  assert not np.array_equal(outputs[0], outputs[2])


def test_t5_mesh_tensorflow_model_imports_without_torch():
  # In a fresh interpreter: the conversion tests import torch into this one.
  import helpers  # pylint: disable=g-import-not-at-top
  result = helpers.fresh_python("import sys, switch_mtf\n"
                                "from t5.models import mtf_model\n"
                                "assert mtf_model.MtfModel.train\n"
                                "print('torch' in sys.modules)\n")
  assert result.stdout.strip().splitlines()[-1] == "False"


def test_step_increment_waits_for_the_step_reads_of_the_updates():
  """Mesh TF's train op is tf.group(updates + [step increment]); tf.group
  makes one NoOp per device, so the increment sits in another NoOp than
  the updates.  The increment must still wait for the reads of the step
  that the updates depend on (step-keyed random numbers, learning rate),
  and not for a read that itself runs after the increment."""
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.python.training import training_util  # pylint: disable=g-import-not-at-top
  from switch_mtf import compat  # pylint: disable=g-import-not-at-top
  graph = tf.Graph()
  with graph.as_default():
    step = tf.train.get_or_create_global_step()
    with tf.device("/cpu:0"):
      weight = tf.get_variable("w", initializer=tf.ones([4]),
                               use_resource=True)
      noise = tf.random.stateless_uniform(
          [4], seed=tf.stack([tf.constant(7, tf.int64),
                              compat.stable_global_step()]))
      update = weight.assign_add(noise)
    increment = step.assign_add(1)
    train_op = tf.group([update, increment])
    with tf.control_dependencies([increment]):
      after = step.read_value()   # the new step: must stay after
    assert len(train_op.control_inputs) == 2   # one NoOp per device
    assert compat.order_step_increment(graph) == 2
    ancestors, frontier = set(), [compat.stable_global_step().op]
    while frontier:
      op = frontier.pop()
      ancestors.add(op.name)
      frontier.extend(t.op for t in op.inputs)
    # The updates' read, and the read the session hooks fetch (the summary
    # hook picks its steps from it), made if the graph had none.
    hooks_read = training_util._get_global_step_read(graph)  # pylint: disable=protected-access
    waits_for = sorted(increment.op.control_inputs, key=lambda op: op.type)
    assert [op.type for op in waits_for] == ["AddV2", "ReadVariableOp"]
    assert waits_for[0] is hooks_read.op
    assert waits_for[1].name in ancestors
    with tf.Session() as session:
      session.run(tf.global_variables_initializer())
      for expected in range(3):
        _, new_step, stale_step = session.run([train_op, after, hooks_read])
        assert (new_step, stale_step) == (expected + 1, expected)


def test_step_increment_in_a_compiled_context_gets_no_outside_read():
  """An increment inside an XLA (TPU) context takes outside ops only
  through that context: the hooks' read, outside it, is not added as its
  control input (nor made)."""
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.python.ops import control_flow_ops  # pylint: disable=g-import-not-at-top
  from tensorflow.python.training import training_util  # pylint: disable=g-import-not-at-top
  from switch_mtf import compat  # pylint: disable=g-import-not-at-top
  graph = tf.Graph()
  with graph.as_default():
    step = tf.train.get_or_create_global_step()
    context = control_flow_ops.XLAControlFlowContext()
    context.Enter()
    increment = step.assign_add(1)
    context.Exit()
    tf.group(increment)
    assert compat.order_step_increment(graph) == 0
    assert not increment.op.control_inputs
    assert training_util._get_global_step_read(graph) is None  # pylint: disable=protected-access


def _lowered_switch_layer(monkeypatch, share):
  """A Switch layer's outputs and gradients on 2 devices (jitter, expert
  dropout), with equal constants shared by the lowering (compat 18) or
  not; and how many constants the lowered graph has."""
  import mesh_tensorflow as mtf  # pylint: disable=g-import-not-at-top
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  import helpers  # pylint: disable=g-import-not-at-top
  from switch_mtf.compat import mesh_tf  # pylint: disable=g-import-not-at-top
  from switch_mtf.moe import layers  # pylint: disable=g-import-not-at-top
  from switch_mtf.moe import routing  # pylint: disable=g-import-not-at-top
  from switch_mtf.train import mesh_program  # pylint: disable=g-import-not-at-top
  if not share:   # Mesh TF's own lowering
    monkeypatch.setattr(mtf.Lowering, "__init__",
                        mesh_tf.ORIGINALS["Lowering.__init__"])
  graphs = []
  run = mesh_program.MeshProgram.run

  def run_keeping_the_graph(self, *args, **kwargs):
    graphs.append(self.tf_graph)
    return run(self, *args, **kwargs)

  monkeypatch.setattr(mesh_program.MeshProgram, "run", run_keeping_the_graph)
  tokens = np.random.RandomState(0).randn(4, 8, 8).astype(np.float32)
  config = layers.SwitchConfig(num_experts=4, hidden_size=8, group_size=8,
                               expert_dropout_rate=0.3)
  out = helpers.run_switch(
      tokens, config, routing.SwitchRouter(policy_train="input_jitter"),
      train=True, grads=True, mesh_shape="batch:2",
      layout="batch:batch,experts:batch", seed=5)
  with graphs[0].as_default():
    constants = sum(op.type == "Const" for op in tf.get_default_graph()
                    .get_operations())
  return out, constants


def test_equal_constants_of_a_lowering_are_shared_and_change_nothing(
    monkeypatch):
  shared, fewer = _lowered_switch_layer(monkeypatch, share=True)
  monkeypatch.undo()
  unshared, more = _lowered_switch_layer(monkeypatch, share=False)
  assert fewer < more / 2, (fewer, more)
  keys = sorted(k for k in shared if k != "weights")
  assert keys == sorted(k for k in unshared if k != "weights")
  assert [k for k in keys if k.startswith("grad/")]
  for key in keys:
    assert np.array_equal(shared[key], unshared[key]), key


def test_indexed_variable_scope_counts_match_tensorflows():
  """compat 19 against TensorFlow's own methods: the same random opens and
  closes of nested scope names (also where one name is a prefix of another
  without a slash, empty segments, closes of everything, and an older copy
  of the counts put back as variable_scope's exit does) leave the same
  counts."""
  import copy  # pylint: disable=g-import-not-at-top
  import mesh_tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from tensorflow.python.ops import variable_scope  # pylint: disable=g-import-not-at-top
  from switch_mtf.compat import mesh_tf  # pylint: disable=g-import-not-at-top
  original = {name.split(".")[1]: method
              for name, method in mesh_tf.ORIGINALS.items()
              if name.startswith("_VariableScopeStore.")}
  assert original["close_variable_subscopes"] is not (
      variable_scope._VariableScopeStore.close_variable_subscopes)  # pylint: disable=protected-access
  names = ["a", "a/b", "a/b/c", "a/bc", "a/bc/d", "ab", "a/b//c", "x/a/b",
           "a/b/c/d/e", "parallel_0", "a/parallel_0", "a/b/parallel_1"]
  rng = np.random.RandomState(0)
  for trial in range(20):
    indexed = variable_scope._VariableScopeStore()  # pylint: disable=protected-access
    plain = variable_scope._VariableScopeStore()  # pylint: disable=protected-access
    if trial % 2:   # counts before the store is first used (built lazily)
      for store in (indexed, plain):
        store.variable_scopes_count = {"a/b/c": 2, "a/bc": 1}
    saved = []
    for _ in range(300):
      action, name = rng.randint(5), names[rng.randint(len(names))]
      if action <= 1:
        indexed.open_variable_scope(name)
        original["open_variable_scope"](plain, name)
      elif action <= 3:
        name = None if rng.rand() < 0.05 else name
        indexed.close_variable_subscopes(name)
        original["close_variable_subscopes"](plain, name)
      elif saved and rng.rand() < 0.5:
        older = saved.pop(rng.randint(len(saved)))
        indexed.variable_scopes_count = copy.copy(older)
        plain.variable_scopes_count = copy.copy(older)
      else:
        saved.append(copy.copy(plain.variable_scopes_count))
      assert indexed.variable_scopes_count == plain.variable_scopes_count


def test_which_constants_are_shared():
  """compat 18's rules, constant by constant: shared on the same device
  with the same value, dtype and shape; never across devices, under a
  device function, control dependencies or colocation, nor outside
  ``shared_constants``."""
  import mesh_tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  from switch_mtf.compat import mesh_tf  # pylint: disable=g-import-not-at-top
  graph = tf.Graph()
  with graph.as_default():
    outside = tf.constant(3)
    with mesh_tf.shared_constants():
      anywhere = tf.constant(3)
      assert anywhere is not outside and tf.constant(3) is anywhere
      with tf.device("/cpu:0"):
        first = tf.constant(3)
        assert tf.constant(3) is first
        assert tf.constant(3, name="other") is first   # names do not matter
        assert tf.constant(3.0) is not tf.constant(3)
        assert tf.constant([3]) is not first
        assert tf.constant(-0.0) is not tf.constant(0.0)
      with tf.device("/cpu:1"):
        assert tf.constant(3) is not first
        assert tf.constant(3).device.endswith("CPU:1")
      with tf.device(lambda op: "/cpu:0"):
        assert tf.constant(3) is not first
      with tf.device("/cpu:0"):
        with tf.control_dependencies([outside]):
          ordered = tf.constant(3)
          assert ordered is not first
          assert outside.op in ordered.op.control_inputs
        with tf.colocate_with(outside):   # no device of its own
          assert tf.constant(3) is not anywhere
    with tf.device("/cpu:0"):
      assert tf.constant(3) is not first   # only within shared_constants
