"""Router health as summaries: the one owner of their tags.

Every Switch layer reports its routing metrics (``routing.router_metrics``:
aux loss, dropped fraction, expert load, router entropy...) twice:

- as mtf tensors, kept per graph and layer scope (``record``,
  ``tensors_by_layer``) for code that builds the graph (tests, the layer
  benchmark);
- in training, as Mesh TF scalar summaries tagged ``<layer scope>/router/
  <metric>`` (``write``), which reach TensorBoard and, lowered to TensorFlow
  scalars (``compat.lowered_scalars``), the progress lines.

``by_layer``, ``mean_over_layers`` and ``health_lines`` read those tags
back; no other module parses them.
"""
import weakref

import mesh_tensorflow as mtf

_PREFIX = "router/"
_SEPARATOR = "/" + _PREFIX
_TENSORS = weakref.WeakKeyDictionary()   # {mtf.Graph: {scope: {name: tensor}}}


def record(graph, scope, metrics):
  """Keeps a Switch layer's metric tensors under its variable scope."""
  _TENSORS.setdefault(graph, {})[scope] = metrics


def tensors_by_layer(graph):
  """``{layer scope: {metric: mtf.Tensor}}`` of the layers built in
  ``graph``."""
  return dict(_TENSORS.get(graph, {}))


def write(metrics, per_expert=False):
  """Mesh TF scalar summaries of one layer's metrics (called inside the
  layer's scope, so the tags read ``.../SwitchFFN/router/aux_loss``, as
  upstream moe.py names them).  ``expert_load`` becomes its max and min, and
  with ``per_expert`` one scalar per expert (``router/expert_load_03``)."""
  for name, value in metrics.items():
    if name == "expert_load":
      mtf.scalar_summary(_PREFIX + "max_expert_load", mtf.reduce_max(value))
      mtf.scalar_summary(_PREFIX + "min_expert_load",
                         -mtf.reduce_max(-value))
      experts_dim = value.shape.dims[0]
      for i in range(experts_dim.size if per_expert else 0):
        share = mtf.slice(value, i, 1, experts_dim.name)
        mtf.scalar_summary(_PREFIX + "expert_load_%02d" % i,
                           mtf.reduce_sum(share))
    else:
      mtf.scalar_summary(_PREFIX + name, value)


def is_per_expert(tag):
  """Whether ``tag`` is one expert's load (``write(..., per_expert=True)``)."""
  return tag.rpartition(_SEPARATOR)[2].startswith("expert_load_")


def by_layer(scalars):
  """``{".../SwitchFFN/router/<metric>": value, "loss": ...}`` ->
  ``{".../SwitchFFN": {metric: value}}`` (other tags are left out)."""
  layers = {}
  for tag, value in scalars.items():
    scope, _, metric = tag.rpartition(_SEPARATOR)
    if scope:
      layers.setdefault(scope, {})[metric] = value
  return layers


def mean_over_layers(scalars, metric):
  """Mean of one metric over the Switch layers (None if there are none)."""
  found = [m[metric] for m in by_layer(scalars).values() if metric in m]
  return sum(found) / len(found) if found else None


def health_lines(scalars):
  """One progress line per Switch layer."""
  layers = by_layer(scalars)
  nan = float("nan")
  return ["  router %s: dropped %.2f%%, expert load max %.3f min %.3f, "
          "entropy %.3f, aux %.3f" % (
              scope, 100 * m.get("fraction_dropped", nan),
              m.get("max_expert_load", nan), m.get("min_expert_load", nan),
              m.get("router_entropy", nan), m.get("aux_loss", nan))
          for scope, m in sorted(layers.items())]
