"""pytest setup shared by all tests."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))

import switch_mtf  # noqa: E402,F401  (applies the compat patches first)
from absl import flags  # noqa: E402
import gin  # noqa: E402
import pytest  # noqa: E402


def pytest_configure(config):
  del config
  # absl flags (defined by Mesh TF and seqio) are never parsed under pytest.
  flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="module", autouse=True)
def _no_gin_bindings_from_other_files():
  """Each test file starts with no gin bindings, whichever files ran before
  it in this process (bin/test spreads files over several processes, so the
  order differs from run to run).  An imported Hugging Face model's
  operative config, for one, binds SwitchRouter.aux_loss_coef = 0.001 and
  z_loss_coef = 0.001, which every later SwitchRouter() would take."""
  gin.clear_config()
  yield
