"""switch_mtf: the Switch Transformer (Fedus, Zoph & Shazeer, 2021) on Mesh TensorFlow."""
import sys

if sys.version_info[:2] not in ((3, 10), (3, 11)):
  raise ImportError(
      "switch_mtf needs Python 3.10 or 3.11 (its pinned TensorFlow 2.15.1 has "
      "no wheels for Python %d.%d); create the environment with python3.11."
      % sys.version_info[:2])

from switch_mtf import compat  # pylint: disable=g-import-not-at-top

# Patches old upstream code when (and if) it is imported; no TensorFlow here.
compat.install()

__version__ = "0.1.0"
