"""Test helpers: one Switch layer on a virtual mesh, and the command line."""
import re
import subprocess
import sys

import mesh_tensorflow as mtf
import numpy as np

from switch_mtf.moe import layers
from switch_mtf.train import mesh_program
from switch_mtf.moe import routing

KERNELS = ("router/kernel", "wi/kernel", "wi_0/kernel", "wi_1/kernel",
           "wo/kernel")


def run_switch(tokens, config, router=None, train=False, mesh_shape="",
               layout="", weights=None, nonpadding=None, grads=False,
               seed=1234, extra=None, outer_batch=None, devices=None,
               target=""):
  """Runs ``switch_feed_forward`` on ``tokens`` [batch, length, d_model].

  Returns a dict with "y", "loss", "probs", "logits", the router metrics, the
  kernels actually used (by short name: "router", "wi", "wo", ...), and with
  grads=True the gradients of sum(y * w) + loss ("grad/<kernel>", "grad/x").
  With ``outer_batch=k`` the batch is fed as [outer_batch=k, batch=b/k, ...]
  (expert replication); results come back as [b, l, ...].  ``devices``
  and ``target``: see ``mesh_program.MeshProgram``.
  """
  router = router or routing.SwitchRouter(policy_train="argmax")
  b, l, m = tokens.shape
  dims = [mtf.Dimension("batch", b), mtf.Dimension("length", l),
          mtf.Dimension("d_model", m)]
  if outer_batch:
    dims = [mtf.Dimension("outer_batch", outer_batch),
            mtf.Dimension("batch", b // outer_batch)] + dims[1:]
    tokens = tokens.reshape([d.size for d in dims])
    if nonpadding is not None:
      nonpadding = np.asarray(nonpadding).reshape([d.size for d in dims[:-1]])
  with mesh_program.MeshProgram(mesh_shape, layout, seed=seed,
                                devices=devices, target=target) as p:
    x = p.import_array(tokens.astype(np.float32), dims)
    pad = None
    if nonpadding is not None:
      pad = p.import_array(np.asarray(nonpadding, np.float32), dims[:-1])
    y, r = layers.switch_feed_forward(
        x, config, router, train, mesh_program.FLOAT32, nonpadding=pad,
        layout=layout, mesh_shape=mesh_shape)
    fetches = {"y": y, "loss": r.loss, "probs": r.probs, "logits": r.logits}
    fetches.update({"metric/" + k: v for k, v in r.metrics.items()})
    variables = p.variables_by_name()
    for name in KERNELS:
      if name in variables:
        fetches["w/" + name.split("/")[0]] = variables[name].outputs[0]
    if grads:
      probe = p.import_array(
          np.random.RandomState(7).randn(b, l, m).astype(np.float32)
          .reshape([d.size for d in dims]), dims)
      objective = mtf.reduce_sum(y * probe) + r.loss
      names = sorted(n for n in KERNELS if n in variables)
      grad_tensors = mtf.gradients(
          [objective], [variables[n].outputs[0] for n in names] + [x])
      for n, g in zip(names + ["x"], grad_tensors):
        fetches["grad/" + n.split("/")[0]] = g
    if extra:
      fetches.update(extra(r))
    values = {}
    if weights:
      values = {k + "/kernel": v for k, v in weights.items()}
    out = p.run(fetches, variable_values=values)
  for key in ("probs", "logits", "y", "grad/x"):  # -> [b, l, ...]
    if key in out:
      out[key] = out[key].reshape(b, l, -1)
  out["weights"] = {k[2:]: v for k, v in out.items() if k.startswith("w/")}
  return out


def lm_loss(program, model, sequences):
  """Training loss of a decoder-only ``model`` on int ``sequences`` [b, l]."""
  dims = [mtf.Dimension("batch", sequences.shape[0]),
          mtf.Dimension("length", sequences.shape[1])]
  targets = program.import_array(sequences.astype(np.int32), dims)
  inputs = mtf.shift(targets, offset=1, dim=dims[1], wrap=False)
  _, loss = model.call_simple(inputs=inputs, targets=targets,
                              compute_loss=True, mode="train",
                              variable_dtype=mesh_program.FLOAT32)
  return loss


# ``switch-mtf`` as a child process's command line.
CLI = [sys.executable, "-m", "switch_mtf.cli"]


def cli(*args, **kwargs):
  """Runs ``switch-mtf ARGS`` in a child process (output captured)."""
  return subprocess.run(CLI + list(args), capture_output=True, text=True,
                        check=False, **kwargs)


def fresh_python(code, *argv):
  """Runs ``code`` (``argv``: its ``sys.argv[1:]``) in a new interpreter of
  this environment; asserts it succeeds and returns its result (output
  captured)."""
  result = subprocess.run([sys.executable, "-c", code] + list(argv),
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  return result


def losses(output):
  """{step: loss} from a run's progress lines."""
  return {int(s): float(v) for s, v in re.findall(
      r"^step (\d+)/\d+  loss ([-0-9.naninf]+)", output, re.M)}
