"""The quick-start job: train and evaluate a small Switch language model.

A decoder-only Mesh TF Transformer whose second feed-forward layer is a Switch
layer with 8 experts, trained on the embedded offline corpus (bytes as
tokens) on a 2-device virtual CPU mesh with the experts split across the
devices (expert + data parallelism), then evaluated on held-out documents.

This is a short driver on purpose: a graph-mode loop over ``MeshProgram``.
The full training driver (checkpoints, resume, gin, TPU) is the CLI's
``train`` mode.
"""
import functools
import json
import os
import time

import mesh_tensorflow as mtf
from mesh_tensorflow.transformer import transformer
from mesh_tensorflow.transformer import transformer_layers
import numpy as np

from switch_mtf import corpus
from switch_mtf import layers
from switch_mtf import mesh_program
from switch_mtf import routing

VOCAB = 257          # UTF-8 bytes + 1; 0 is padding
LENGTH = 64


def encode_windows(docs, length=LENGTH):
  """Documents -> int32 [n, length] windows of byte ids (+1), 0-padded."""
  data = []
  for doc in docs:
    data.extend(b + 1 for b in doc.encode("utf-8"))
    data.append(ord("\n") + 1)
  n = len(data) // length
  return np.asarray(data[:n * length], np.int32).reshape(n, length)


def build_model(num_experts, mesh_shape, layout, d_model=64):
  router = routing.SwitchRouter()  # input jitter, alpha = 0.01
  attention = (transformer_layers.SelfAttention,
               dict(num_heads=4, key_value_size=16))
  # Two blocks of [attention, dense FFN, attention, Switch FFN]: a Switch
  # layer at every other feed-forward layer, as in Switch-Base.
  stack = transformer.make_layer_stack(
      layers=[attention,
              (transformer_layers.DenseReluDense, dict(hidden_size=128)),
              attention,
              (layers.SwitchFFN, dict(
                  num_experts=num_experts, hidden_size=128, group_size=256,
                  dispatch="gather", router=router))],
      num_layers=2,
      layer_stack_cls=functools.partial(
          transformer.LayerStack, dropout_rate=0.0, norm_epsilon=1e-6))
  return transformer.Unitransformer(
      layer_stack=stack, d_model=d_model, input_vocab_size=VOCAB,
      output_vocab_size=VOCAB, autoregressive=True, max_length=LENGTH,
      layout=layout, mesh_shape=mesh_shape, z_loss=0.0)


def _lm_loss(program, model, batch_size, mode):
  dims = [mtf.Dimension("batch", batch_size), mtf.Dimension("length", LENGTH)]
  placeholder, targets = program.import_placeholder(dims, name="targets")
  inputs = mtf.shift(targets, offset=1, dim=dims[1], wrap=False)
  _, loss = model.call_simple(inputs=inputs, targets=targets,
                              compute_loss=True, mode=mode,
                              variable_dtype=mesh_program.FLOAT32)
  return placeholder, loss


def _router_fetches(graph):
  fetches = {}
  for layer, metrics in layers.router_metrics(graph).items():
    for name, value in metrics.items():
      fetches["%s/%s" % (layer, name)] = value
  return fetches


def _mean_over_layers(values, metric):
  found = [float(v) for k, v in values.items() if k.endswith("/" + metric)]
  return sum(found) / len(found)


def run(steps=1500, batch_size=16, num_devices=2, num_experts=8, seed=0,
        output_dir=None, log=print):
  """Trains, evaluates, prints a summary; returns the results dict."""
  mesh_shape = "batch:%d" % num_devices
  layout = "batch:batch,experts:batch"
  data = corpus.generate(seed=seed)
  train = encode_windows(data["train"])
  valid = encode_windows(data["validation"])
  rng = np.random.RandomState(seed)
  order = rng.permutation(len(train))
  log("switch_mtf demo: Switch LM, %d experts split over %d CPU devices "
      "(mesh %s, layout %s)" % (num_experts, num_devices, mesh_shape, layout))
  log("data: embedded corpus, %d train / %d validation windows of %d bytes"
      % (len(train), len(valid), LENGTH))

  with mesh_program.MeshProgram(mesh_shape, layout, seed=seed) as p:
    model = build_model(num_experts, mesh_shape, layout)
    placeholder, loss = _lm_loss(p, model, batch_size, "train")
    variables = p.graph.trainable_variables
    grads = mtf.gradients([loss], [v.outputs[0] for v in variables])
    updates = mtf.optimize.AdafactorOptimizer(
        learning_rate=0.01).apply_grads(grads, variables)
    fetches = dict(_router_fetches(p.graph), loss=loss)
    params = sum(v.shape.size for v in variables)
    log("model: %d parameters, %d tokens per step" % (
        params, batch_size * LENGTH))

    def feed(step):
      start = (step * batch_size) % (len(order) - batch_size)
      return {placeholder: train[order[start:start + batch_size]]}

    history = []
    started = [time.time()]  # reset after step 1, which includes setup

    def on_step(step, out):
      history.append(dict(
          step=step + 1, loss=float(out["loss"]),
          aux_loss=_mean_over_layers(out, "aux_loss"),
          fraction_dropped=_mean_over_layers(out, "fraction_dropped")))
      h = history[-1]
      if step == 0:
        log("step %4d/%d  loss %.3f  aux %.3f  dropped %.3f  (graph set up "
            "and first step: %.0fs)" % (h["step"], steps, h["loss"],
                                        h["aux_loss"], h["fraction_dropped"],
                                        time.time() - started[0]))
        started[0] = time.time()
      elif (step + 1) % 25 == 0:
        elapsed = time.time() - started[0]
        rate = step * batch_size * LENGTH / max(elapsed, 1e-9)
        eta = elapsed / step * (steps - step - 1)
        log("step %4d/%d  loss %.3f  aux %.3f  dropped %.3f  %6.0f tokens/s"
            "  ETA %3.0fs" % (h["step"], steps, h["loss"], h["aux_loss"],
                              h["fraction_dropped"], rate, eta))

    final = p.run(fetches, extra_ops=updates, steps=steps, feed_fn=feed,
                  on_step=on_step, fetch_variables=True)[-1]
    train_seconds = time.time() - started[0]  # steps 2..N
    trained = final["variables"]

  with mesh_program.MeshProgram(mesh_shape, layout, seed=seed) as p:
    model = build_model(num_experts, mesh_shape, layout)
    placeholder, loss = _lm_loss(p, model, batch_size, "eval")
    fetches = dict(_router_fetches(p.graph), loss=loss)
    batches = len(valid) // batch_size
    results = p.run(fetches, variable_values=trained, steps=batches,
                    feed_fn=lambda s: {placeholder: valid[
                        s * batch_size:(s + 1) * batch_size]})
    results = results if isinstance(results, list) else [results]

  loads = np.mean([np.asarray([v for k, v in r.items()
                               if k.endswith("/expert_load")][0])
                   for r in results], axis=0)
  summary = dict(
      steps=steps, train_seconds=round(train_seconds, 1),
      tokens_per_second=round(
          (steps - 1) * batch_size * LENGTH / max(train_seconds, 1e-9)),
      first_loss=history[0]["loss"], final_loss=history[-1]["loss"],
      validation_neg_log_perplexity=-float(np.mean(
          [r["loss"] for r in results])),
      validation_fraction_dropped=float(np.mean(
          [_mean_over_layers(r, "fraction_dropped") for r in results])),
      validation_expert_load=[round(float(x), 4) for x in loads],
      final_train_aux_loss=history[-1]["aux_loss"],
      final_train_fraction_dropped=history[-1]["fraction_dropped"])
  log("")
  log("summary: train loss %.3f -> %.3f in %d steps (%.0f s, %d tokens/s)" % (
      summary["first_loss"], summary["final_loss"], steps,
      summary["train_seconds"], summary["tokens_per_second"]))
  log("  validation neg. log perplexity (nats/byte): %.4f"
      % summary["validation_neg_log_perplexity"])
  log("  aux loss N·Σf·P (1.0 = balanced): %.3f; dropped tokens: train %.2f%%"
      ", validation %.2f%% (capacity factor 1.25 / 2.0)" % (
          summary["final_train_aux_loss"],
          100 * summary["final_train_fraction_dropped"],
          100 * summary["validation_fraction_dropped"]))
  log("  validation expert load: %s" % " ".join(
      "%.3f" % x for x in summary["validation_expert_load"]))
  if output_dir:
    _write_outputs(output_dir, summary, history, log)
  return summary


def _write_outputs(output_dir, summary, history, log):
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, "demo_results.json"), "w") as f:
    json.dump(dict(summary=summary, history=history), f, indent=1)
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
  steps = [h["step"] for h in history]
  for ax, key, title in zip(
      axes, ("loss", "aux_loss", "fraction_dropped"),
      ("training loss (nats/byte)", "aux loss N·Σ f·P", "fraction dropped")):
    ax.plot(steps, [h[key] for h in history])
    ax.set_title(title)
    ax.set_xlabel("step")
  fig.tight_layout()
  fig.savefig(os.path.join(output_dir, "demo_curves.png"), dpi=90)
  log("  wrote %s/demo_results.json and demo_curves.png" % output_dir)
