"""The configurations tried while looking for a miniature where a Switch
model's extra parameters pay (issue 14), each a dense/Switch-8 pair trained
with the reproduction's code (``experiments.execute``: same seed, same
batches for both, validation on the same fixed examples).

  .venv/bin/python benchmarks/miniature_search.py --only before,articles

Writes one line per run to ``--output`` (JSON lines, appended) and prints
it; ``benchmarks/results/miniature_search.md`` collects what was measured.
"""
import argparse
import json
import os
import time

import switch_mtf  # noqa: F401  (compat patches before Mesh TF)
import tensorflow.compat.v1 as tf

from switch_mtf.reproduction import runs as experiments
from switch_mtf.tasks import embedded
from switch_mtf.tasks import vocabularies

HERE = os.path.dirname(os.path.abspath(__file__))
BEFORE = dict(docs_per_entity=2, holdout="entities", validation_every=50)
S8 = "models/small/switch_8"
DENSE = "models/small/dense"
INIT_1 = ("mesh_tensorflow.layers.VarianceScalingInitializer.scale = 1.0",
          "SwitchFFN.init_scale = 1.0")

# name: (corpus options, vocabulary, batch size, steps, [(model, params)])
CONFIGS = {
    # The corpus before issue 14: held-out entities (template fluency).
    "before": (BEFORE, "bytes", 8, 2000, [(DENSE, ()), (S8, ())]),
    # Bisect of the Switch model's gap on it (one change each).
    "before/per_sequence_routing": (BEFORE, "bytes", 8, 2000, [(S8, (
        "SwitchFFN.route_per_sequence = True",
        "encoder/SwitchFFN.expert_capacity = 20",
        "decoder/SwitchFFN.expert_capacity = 5"))]),
    "before/router_init_1": (BEFORE, "bytes", 8, 2000, [(S8, (
        "SwitchRouter.kernel_init_scale = 1.0",))]),
    "before/argmax": (BEFORE, "bytes", 8, 2000, [(S8, (
        "SwitchRouter.policy_train = 'argmax'",))]),
    "before/capacity_2": (BEFORE, "bytes", 8, 2000, [(S8, (
        "SwitchFFN.capacity_factor_train = 2.0",))]),
    "before/adafactor_per_expert": (BEFORE, "bytes", 8, 2000, [(S8, (
        "optimize.AdafactorOptimizer.stacked_dim_names = ['experts']",))]),
    "before/init_1": (BEFORE, "bytes", 8, 2000, [(DENSE, INIT_1[:1]),
                                                 (S8, INIT_1)]),
    # Held-out articles of seen entities (facts learnable from training).
    "articles": ({}, "bytes", 8, 2000, [(DENSE, ()), (S8, ())]),
    "articles_1000_entities": (dict(num_cities=400, num_people=600),
                               "bytes", 8, 2000, [(DENSE, ()), (S8, ())]),
    "articles_1000_entities_spm": (dict(num_cities=400, num_people=600),
                                   "embedded", 8, 2000,
                                   [(DENSE, ()), (S8, ())]),
    "articles_batch_32": ({}, "bytes", 32, 1000, [(DENSE, ()), (S8, ())]),
    # Upstream Mesh TF's attention init (std fan_in^-1/2, which the paper's
    # code had whatever the gin scale) with the paper's 0.1 elsewhere.
    "articles/attention_init_1": ({}, "bytes", 8, 2000, [
        (DENSE, ("attention_init_scale.scale = 1.0",)),
        (S8, ("attention_init_scale.scale = 1.0",))]),
    # More epochs over fewer facts (about 6 epochs): memorisation can pay.
    "articles_1000_entities_6000_steps": (dict(num_cities=400,
                                               num_people=600),
                                          "bytes", 8, 6000,
                                          [(DENSE, ()), (S8, ())]),
}


def run(name, root, output):
  options, vocabulary, batch, steps, runs = CONFIGS[name]
  vocab = (vocabularies.embedded_sentencepiece() if vocabulary == "embedded"
           else None)
  task = embedded.register(name="search_" + name.replace("/", "_"),
                           vocabulary=vocab, **options)
  for model, params in runs:
    spec = experiments.RunSpec(os.path.basename(model), model, params,
                               steps=steps, evals=4)
    started = time.time()
    record = experiments.execute(spec, os.path.join(root, name), task.name,
                                 batch_size=batch, out=lambda line: None)
    row = dict(config=name, model=spec.name, params=list(params),
               corpus=options, vocabulary=vocabulary, batch_size=batch,
               steps=steps, evaluations=record["evaluations"],
               train_loss_last_5pct=experiments.late_mean(
                   record, "mean_loss", 0.05),
               tokens_per_second=record["tokens_per_second"],
               parameters=record["parameters"],
               seconds=time.time() - started)
    print(json.dumps(row), flush=True)
    with open(output, "a") as f:
      f.write(json.dumps(row) + "\n")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default=",".join(CONFIGS))
  parser.add_argument("--runs_dir", default="runs/miniature_search")
  parser.add_argument("--output", default=os.path.join(
      HERE, "results", "miniature_search.jsonl"))
  args = parser.parse_args()
  tf.disable_eager_execution()
  for name in args.only.split(","):
    run(name, args.runs_dir, args.output)


if __name__ == "__main__":
  main()
