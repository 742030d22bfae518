"""A plain NumPy Switch layer, written from the paper, for checking the mtf one."""
import math

import numpy as np


def softmax(x, axis=-1):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def gelu_tanh(x):
  return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi)
                                  * (x + 0.044715 * x ** 3)))


def expert(x, weights, e, activation):
  """Expert e of ``weights`` (dict of kernels with a leading experts axis)."""
  if activation == "relu":
    h = np.maximum(x @ weights["wi"][e], 0.0)
  else:
    h = gelu_tanh(x @ weights["wi_0"][e]) * (x @ weights["wi_1"][e])
  return h @ weights["wo"][e]


def switch_layer(tokens, weights, num_groups, capacity, activation="relu",
                 real=None):
  """Top-1 first-come Switch routing of ``tokens`` [T, M].

  Returns (outputs [T, M], aux [N·Σ f·P averaged over groups], kept [T]).
  """
  t, m = tokens.shape
  s = t // num_groups
  router = weights["router"]
  num_experts = router.shape[1]
  real = np.ones(t) if real is None else np.asarray(real, dtype=float)
  outputs = np.zeros((t, m))
  kept = np.zeros(t)
  aux = []
  for g in range(num_groups):
    rows = range(g * s, (g + 1) * s)
    probs = softmax(tokens[list(rows)] @ router)
    choice = probs.argmax(-1)
    used = np.zeros(num_experts, dtype=int)
    for i, row in enumerate(rows):
      if not real[row]:
        continue
      e = choice[i]
      if used[e] < capacity:
        used[e] += 1
        kept[row] = 1.0
        outputs[row] = probs[i, e] * expert(tokens[row], weights, e,
                                            activation)
    mask = real[list(rows)] > 0
    if mask.any():
      f = np.bincount(choice[mask], minlength=num_experts) / mask.sum()
      p = probs[mask].mean(0)
      aux.append(num_experts * np.sum(f * p))
  return outputs, float(np.mean(aux)), kept
