"""switch_mtf: the Switch Transformer (Fedus, Zoph & Shazeer, 2021) on Mesh TensorFlow."""
import sys

if sys.version_info[:2] not in ((3, 10), (3, 11)):
  raise ImportError(
      "switch_mtf needs Python 3.10 or 3.11 (its pinned TensorFlow 2.15.1 has "
      "no wheels for Python %d.%d); create the environment with python3.11."
      % sys.version_info[:2])

import importlib  # pylint: disable=g-import-not-at-top
import importlib.abc  # pylint: disable=g-import-not-at-top
import importlib.util  # pylint: disable=g-import-not-at-top

from switch_mtf import compat  # pylint: disable=g-import-not-at-top

# Patches old upstream code when (and if) it is imported; no TensorFlow here.
compat.install()

__version__ = "0.1.0"

# Modules that moved into subpackages (December 2026).  Model directories
# written before keep an operative_config.gin that says e.g.
# ``import switch_mtf.layers``; such an import still gives the module (the
# same module object, so its gin configurables are registered once).
MOVED_MODULES = {
    "layers": "moe.layers", "routing": "moe.routing", "models": "moe.models",
    "attention": "moe.attention", "capacity": "moe.capacity",
    "dispatch": "moe.dispatch", "experts": "moe.experts",
    "layout": "moe.layout", "accounting": "moe.accounting",
    "router_summaries": "moe.router_summaries",
    "distillation": "train.distillation", "upcycling": "train.upcycling",
    "run": "train.run", "training": "train.training",
    "evaluation": "train.evaluation", "workflows": "train.workflows",
    "mesh_program": "train.mesh_program", "model_dir": "train.model_dir",
    "cluster": "train.cluster", "hf_conversion": "hf.conversion",
    "hf_files": "hf.files", "hf_peer": "hf.peer",
    "experiments": "reproduction.runs", "report": "reproduction.report",
    "demo": "reproduction.demo", "corpus": "tasks.corpus",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Imports ``switch_mtf.<old name>`` as its new module (see above)."""

  def find_spec(self, fullname, path=None, target=None):
    del path, target
    package, _, name = fullname.partition(".")
    if package == __name__ and name in MOVED_MODULES:
      return importlib.util.spec_from_loader(fullname, self)
    return None

  def create_module(self, spec):
    return None   # a placeholder; exec_module puts the real one in its place

  def exec_module(self, module):
    name = module.__name__.partition(".")[2]
    # The import system returns what sys.modules holds after exec_module.
    sys.modules[module.__name__] = importlib.import_module(
        "%s.%s" % (__name__, MOVED_MODULES[name]))


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
  sys.meta_path.append(_MovedModuleFinder())
