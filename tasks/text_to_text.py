"""Pre-training and downstream tasks from TFDS, as T5 defines them, with
t5's preprocessors, postprocessors and metrics, for any vocabulary and TFDS
data dir.

TFDS versions: T5 pinned c4/en 2.2.0, glue 1.0.0, super_glue 1.0.2 and
squad/v1.1 3.0.0.  The TFDS we pin (4.9) can no longer prepare glue 1.0.0 or
c4 2.2.0 (only read them if already prepared), so the defaults are the
versions it prepares: c4/en 3.1.0, glue 2.0.0, super_glue 1.0.2, squad 3.0.0.
Pass ``versions={...}`` to read older prepared data.
"""
import functools

import seqio
from t5.data import glue_utils
from t5.data import postprocessors as t5_postprocessors
from t5.data import preprocessors as t5_preprocessors
from t5.evaluation import metrics as t5_metrics
import tensorflow_datasets as tfds

VERSIONS = {"c4": "3.1.0", "glue": "2.0.0", "super_glue": "1.0.2",
            "squad": "3.0.0"}


def features(vocabulary):
  return {"inputs": seqio.Feature(vocabulary, add_eos=True, required=False),
          "targets": seqio.Feature(vocabulary, add_eos=True)}


def add_task(name, **kwargs):
  """Registers a task, replacing one of the same name (a new vocabulary)."""
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, **kwargs)


def _add_mixture(name, tasks, **kwargs):
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, tasks, **kwargs)


def span_corruption_preprocessors():
  """T5's span corruption (noise density 0.15, mean span 3) from "text"."""
  return [
      functools.partial(t5_preprocessors.rekey,
                        key_map={"inputs": None, "targets": "text"}),
      seqio.preprocessors.tokenize,
      seqio.CacheDatasetPlaceholder(),
      t5_preprocessors.span_corruption,
      seqio.preprocessors.append_eos_after_trim,
  ]


def register_c4(vocabulary, tfds_data_dir=None, version=None,
                name="c4_span_corruption"):
  """C4 (en) span corruption, T5's ``c4_v220_span_corruption`` recipe."""
  return add_task(
      name, source=seqio.TfdsDataSource(
          "c4/en:%s" % (version or VERSIONS["c4"]),
          tfds_data_dir=tfds_data_dir),
      preprocessors=span_corruption_preprocessors(),
      output_features=features(vocabulary), metric_fns=[])


def text_to_text_preprocessors(*text_preprocessors):
  """``text_preprocessors`` (raw example -> inputs/targets strings), then
  tokenize, the cache placeholder and EOS, as T5's text-to-text tasks."""
  return list(text_preprocessors) + [
      seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
      seqio.preprocessors.append_eos_after_trim]


def register_glue(vocabulary, tfds_data_dir=None, version=None,
                  benchmark="glue"):
  """Every GLUE (or SuperGLUE) sub-task as ``<benchmark>_<name>`` and the
  example-proportional mixture ``<benchmark>_proportional``; returns the
  task names."""
  version = version or VERSIONS[benchmark]
  if benchmark == "glue":
    configs = tfds.text.glue.Glue.builder_configs.values()
    metric, weights = glue_utils.get_glue_metric, glue_utils.GLUE_WEIGHT_MAPPING
  else:
    configs = tfds.text.super_glue.SuperGlue.builder_configs.values()
    metric = glue_utils.get_super_glue_metric
    weights = glue_utils.SUPER_GLUE_WEIGHT_MAPPING
  names, rates = [], []
  for config in configs:
    if benchmark == "super_glue" and "wsc" in config.name:
      continue   # T5 trains WSC through its own "simple" variants
    text_preprocessors = [glue_utils.get_glue_text_preprocessor(config)]
    if benchmark == "super_glue" and config.name == "axb":
      text_preprocessors.insert(0, functools.partial(
          t5_preprocessors.rekey, key_map={
              "premise": "sentence1", "hypothesis": "sentence2",
              "label": "label", "idx": "idx"}))
    name = "%s_%s" % (benchmark, config.name)
    splits = ["test"] if config.name in ("ax", "axb", "axg") else None
    add_task(name, source=seqio.TfdsDataSource(
        "%s/%s:%s" % (benchmark, config.name, version),
        tfds_data_dir=tfds_data_dir, splits=splits),
         preprocessors=text_to_text_preprocessors(*text_preprocessors),
         output_features=features(vocabulary),
         metric_fns=metric(config.name),
         postprocess_fn=glue_utils.get_glue_postprocess_fn(config))
    names.append(name)
    # T5's rates: train-set sizes; 0 for the evaluation-only sets (e.g.
    # MNLI matched/mismatched), which stay in the mixture, as in T5, so that
    # evaluating the mixture covers them.
    t5_name = ("glue_%s_v002" if benchmark == "glue"
               else "super_glue_%s_v102") % config.name
    rates.append((name, float(weights.get(t5_name, 0))))
  _add_mixture("%s_proportional" % benchmark, rates)
  return names


def register_squad(vocabulary, tfds_data_dir=None, version=None,
                   name="squad_v1_1"):
  """SQuAD v1.1: "question: ... context: ..." -> the first answer; metric:
  exact match and F1 over all answers (SQuAD's normalization)."""
  return add_task(
      name, source=seqio.TfdsDataSource(
          "squad/v1.1:%s" % (version or VERSIONS["squad"]),
          tfds_data_dir=tfds_data_dir),
      preprocessors=text_to_text_preprocessors(t5_preprocessors.squad),
      output_features=features(vocabulary),
      postprocess_fn=t5_postprocessors.qa, metric_fns=[t5_metrics.squad])


def register_all(vocabulary, tfds_data_dir=None, versions=None):
  """C4 span corruption, GLUE, SuperGLUE and SQuAD for ``vocabulary``;
  returns {group: [task names]}."""
  versions = dict(VERSIONS, **(versions or {}))
  return {
      "c4": [register_c4(vocabulary, tfds_data_dir, versions["c4"]).name],
      "glue": register_glue(vocabulary, tfds_data_dir, versions["glue"]),
      "super_glue": register_glue(vocabulary, tfds_data_dir,
                                  versions["super_glue"], "super_glue"),
      "squad": [register_squad(vocabulary, tfds_data_dir,
                               versions["squad"]).name],
  }
