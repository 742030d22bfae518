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
from switch_mtf import layers, routing
tokens = np.random.RandomState(0).randn(2, 8, 4).astype(np.float32)
config = layers.SwitchConfig(num_experts=4, hidden_size=8, group_size=8,
                             expert_dropout_rate=0.3)
out = helpers.run_switch(tokens, config,
                         routing.SwitchRouter(policy_train="input_jitter"),
                         train=True, seed=3)
np.save(sys.argv[1], np.concatenate([out["logits"].ravel(), out["y"].ravel()]))
"""


def test_mesh_tensorflow_transformer_imports():
  from mesh_tensorflow.transformer import moe  # pylint: disable=g-import-not-at-top
  from tensorflow.python.framework import ops  # pylint: disable=g-import-not-at-top
  assert hasattr(ops, "register_tensor_conversion_function")
  assert moe.MoE1D is not None


def test_same_seed_same_numbers_in_separate_processes(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
  outputs = []
  for i in range(2):
    path = str(tmp_path / ("run%d.npy" % i))
    subprocess.run(
        [sys.executable, "-c", SCRIPT % os.path.dirname(__file__), path],
        check=True, env=env, capture_output=True)
    outputs.append(np.load(path))
  np.testing.assert_array_equal(outputs[0], outputs[1])


def test_t5_mesh_tensorflow_model_imports_without_torch():
  import sys  # pylint: disable=g-import-not-at-top
  from t5.models import mtf_model  # pylint: disable=g-import-not-at-top
  assert mtf_model.MtfModel.train
  assert "torch" not in sys.modules
