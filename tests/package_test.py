"""The package's layout: modules moved into subpackages keep their old
import paths (old operative configs import them), and each old path gives
the very module of the new one."""
import importlib
import os

import pytest

import switch_mtf

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("old,new", sorted(switch_mtf.MOVED_MODULES.items()))
def test_old_module_path_is_the_new_module(old, new):
  moved = importlib.import_module("switch_mtf." + old)
  assert moved is importlib.import_module("switch_mtf." + new)
  assert moved.__name__ == "switch_mtf." + new
  # The old file is gone: one place per concept.
  assert not os.path.exists(os.path.join(
      os.path.dirname(switch_mtf.__file__), old + ".py"))


def test_unknown_old_names_still_fail():
  with pytest.raises(ModuleNotFoundError):
    importlib.import_module("switch_mtf.no_such_module")
