"""Checks of a mesh layout against the tensors that will be laid out on it.

Mesh TF finds an impossible layout only while lowering, deep in a traceback.
These checks run while the graph is built and name the dimension and the fix.
"""
import mesh_tensorflow as mtf

from switch_mtf.errors import ConfigError


def mesh_dim_for(layout, mesh_shape, dim):
  """Returns the mesh Dimension that ``dim`` is split over, or None."""
  if not layout or not mesh_shape:
    return None
  rules = mtf.convert_to_layout_rules(layout)
  mesh_shape = mtf.convert_to_shape(mesh_shape)
  try:
    axis = rules.tensor_dimension_to_mesh_axis(dim, mesh_shape)
  except ValueError:
    raise ConfigError(
        "layout maps tensor dimension '%s' to more than one mesh dimension: "
        "keep one '%s:<mesh_dim>' rule" % (dim.name, dim.name)) from None
  return None if axis is None else mesh_shape.dims[axis]


def split_ways(layout, mesh_shape, dim):
  """How many ways ``dim`` is split (1 if it is not)."""
  mesh_dim = mesh_dim_for(layout, mesh_shape, dim)
  return 1 if mesh_dim is None else mesh_dim.size


def check_tensors(layout, mesh_shape, tensors):
  """Raises ConfigError if any tensor cannot be laid out.

  Args:
    layout: an input to mtf.convert_to_layout_rules (or None).
    mesh_shape: an input to mtf.convert_to_shape (or None).
    tensors: a dict from a tensor's description to its list of Dimensions.
  """
  if not layout or not mesh_shape:
    return
  for name, dims in tensors.items():
    seen = {}
    for dim in dims:
      mesh_dim = mesh_dim_for(layout, mesh_shape, dim)
      if mesh_dim is None:
        continue
      if dim.size % mesh_dim.size:
        raise ConfigError(
            "%s: dimension '%s' (size %d) cannot be split %d ways over mesh "
            "dimension '%s': make its size a multiple of %d or change the "
            "'%s' layout rule" % (name, dim.name, dim.size, mesh_dim.size,
                                  mesh_dim.name, mesh_dim.size, dim.name))
      if mesh_dim.name in seen:
        raise ConfigError(
            "%s: layout puts both '%s' and '%s' on mesh dimension '%s', but one "
            "tensor can use a mesh dimension only once: map one of them to "
            "another mesh dimension" % (name, seen[mesh_dim.name], dim.name,
                                        mesh_dim.name))
      seen[mesh_dim.name] = dim.name
