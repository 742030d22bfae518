"""pytest setup shared by all tests."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))

import switch_mtf  # noqa: E402,F401  (applies the compat patches first)
from absl import flags  # noqa: E402


def pytest_configure(config):
  del config
  # absl flags (defined by Mesh TF and seqio) are never parsed under pytest.
  flags.FLAGS.mark_as_parsed()
