"""Gin configuration: where the gin files are, and parsing them safely.

Configs are parsed on top of Mesh TF's ``defaults.gin`` (as T5's
``t5_mesh_transformer`` does), then the user's ``--gin_file`` s in order,
then the ``--gin_param`` s.  File names resolve against this package's
``gin/`` tree (``models/switch_base_8.gin``, ``layouts/cpu_ep_2.gin``);
paths work too.
"""
import os

import gin
import mesh_tensorflow as mtf
import mesh_tensorflow.transformer.utils  # noqa: F401  (registers utils.run)
import pkg_resources

from switch_mtf import compat
from switch_mtf.errors import ConfigError

# Modules whose configurables our gin files name.
import switch_mtf.moe.layers  # noqa: F401,E402
import switch_mtf.moe.models  # noqa: F401,E402
import switch_mtf.moe.routing  # noqa: F401,E402


def gin_dir():
  """switch_mtf's gin tree: inside the installed package (a wheel or
  ``pip install .``), else at the top of the checkout (editable install)."""
  here = os.path.dirname(os.path.abspath(__file__))
  for candidate in (os.path.join(here, "gin"),
                    os.path.join(os.path.dirname(here), "gin")):
    if os.path.isdir(os.path.join(candidate, "models")):
      return candidate
  raise ConfigError("cannot find switch_mtf's gin/ directory (looked in %s "
                    "and beside it): reinstall switch_mtf" % here)


def mesh_defaults_path():
  return pkg_resources.resource_filename(
      "mesh_tensorflow.transformer", "gin/defaults.gin")


def resolve(gin_file):
  """A --gin_file value -> a path (packaged names first, then paths)."""
  name = gin_file if gin_file.endswith(".gin") else gin_file + ".gin"
  packaged = os.path.join(gin_dir(), name)
  if os.path.exists(packaged):
    return packaged
  if os.path.exists(gin_file):
    return gin_file
  raise ConfigError(
      "gin file %r not found (looked in %s and the current directory): see "
      "`ls %s/models %s/layouts`" % (gin_file, gin_dir(), gin_dir(),
                                      gin_dir()))


_SEARCHED = set()   # the directories added to gin's search path


def parse(gin_files=(), gin_params=()):
  """Clears gin and parses defaults, files and params.

  Raises ConfigError with one line for unknown names, bad values and
  missing files.
  """
  gin.clear_config(clear_constants=True)
  paths = [os.path.abspath(resolve(f)) for f in gin_files]
  # ``include 'models/common.gin'`` inside our presets: gin tries the
  # current directory first, then the search paths (without changing the
  # process's working directory).
  compat.quiet_gin_search_misses()
  presets = gin_dir()
  if presets not in _SEARCHED:
    gin.add_config_file_search_path(presets)
    _SEARCHED.add(presets)
  try:
    gin.parse_config_file(mesh_defaults_path())
    for path in paths:
      gin.parse_config_file(path)
    gin.parse_config(list(gin_params))
  except ConfigError:
    raise
  except (ValueError, KeyError, ImportError, IOError, SyntaxError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
    raise ConfigError("bad gin configuration: %s" % first) from None


def query(name, default=None):
  """The bound value of a gin parameter, or ``default``."""
  try:
    return gin.query_parameter(name)
  except ValueError:
    return default


def mesh_and_layout():
  """(mesh_shape, layout_rules) strings bound by the layout gin file.

  Mesh TF's defaults bind ``utils.run.mesh_shape`` to ``tpu_mesh_shape()``,
  which needs a TPU topology; without a layout file we report no mesh ("").
  """
  mesh_shape = query("utils.run.mesh_shape", "")
  layout = query("utils.run.layout_rules", "")
  if not isinstance(mesh_shape, str):
    mesh_shape = ""
  devices = query("utils.run.mesh_devices")
  if devices == "cluster":
    raise ConfigError(
        "this layout spreads over the hosts of a cluster (utils.run."
        "mesh_devices = \"cluster\"): add --cluster=HOST:PORT,... with "
        "`switch-mtf worker` processes (README: Several machines), or use a "
        "one-machine layout such as layouts/cpu_ep_2")
  if mesh_shape and devices is not None:
    size = mtf.convert_to_shape(mesh_shape).size
    if len(devices) != size:
      raise ConfigError(
          "utils.run.mesh_shape %r needs %d devices but utils.run.mesh_devices "
          "lists %d: list one device per mesh position (\"\" for a virtual CPU "
          "device) or shrink the mesh" % (mesh_shape, size, len(devices)))
  return mesh_shape, layout if isinstance(layout, str) else ""
