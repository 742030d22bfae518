"""Training and evaluation: t5's ``MtfModel`` (Estimator / TPUEstimator over
Mesh TF) configured by switch_mtf's gin files.

We reuse the upstream driver rather than write a loop: it already checkpoints
every N steps (keeping the last K), writes ``operative_config.gin`` beside
the checkpoints, resumes from the latest complete checkpoint (TensorFlow
writes the ``checkpoint`` index only after a checkpoint's files are
complete), and runs the same model function on CPU/GPU placement meshes and
on TPU (SIMD).  ``compat`` makes ``t5.models`` importable without torch.
"""
import os
import weakref

import gin
import numpy as np
import seqio
from mesh_tensorflow.transformer import utils as mtf_utils
from t5.models import mtf_model
import tensorflow.compat.v1 as tf

from switch_mtf import compat
from switch_mtf import config
from switch_mtf.train import evaluation
from switch_mtf.train import pipelines
from switch_mtf.train import session_config
from switch_mtf.train import training
from switch_mtf.errors import ConfigError


def constant_learning_rate(value):
  def schedule(step, total_train_steps=None):
    del step, total_train_steps
    return value
  return schedule


def rsqrt_learning_rate(step, total_train_steps=None, warmup_steps=10000):
  """T5's pre-training schedule: 1/sqrt(max(step, warmup_steps))."""
  del total_train_steps
  return tf.math.rsqrt(tf.maximum(tf.cast(step, tf.float32),
                                  float(warmup_steps)))


def _activation_dtype_bindings(tpu):
  """MtfModel forces float32 activations off TPU; keep a GPU layout's
  bfloat16, and refuse it on CPU (no bfloat16 kernels there)."""
  dtype = config.query("utils.get_variable_dtype.activation_dtype", "float32")
  if tpu is not None or dtype in ("float32", tf.float32):
    return []
  devices = config.query("utils.run.mesh_devices") or [""]
  if not all(d.lower().startswith("gpu") or "gpu:" in d.lower()
             for d in devices):
    raise ConfigError(
        "activation dtype %s needs GPU or TPU devices (CPUs have no bfloat16 "
        "kernels): use a cpu_* layout or --gin_param=\"utils.get_variable_"
        "dtype.activation_dtype = 'float32'\"" % getattr(dtype, "name", dtype))
  return ["utils.get_variable_dtype.activation_dtype = 'bfloat16'"]


def _check_gpu_build(devices):
  """One line for a layout on this machine's GPUs under TensorFlow's CPU
  build (bin/'s default), which would quietly place everything on the
  CPU.  (Devices of a --cluster run are the workers', checked there.)"""
  local_gpus = [d for d in devices or [] if isinstance(d, str)
                and not d.startswith("/job:") and "gpu" in d.lower()]
  if local_gpus and not tf.test.is_built_with_cuda():
    raise ConfigError(
        "the layout places the mesh on %s, but this TensorFlow is its CPU "
        "build (tensorflow-cpu): install the CUDA build with "
        "SWITCH_MTF_TENSORFLOW=gpu bin/switch-mtf ... (README: Installation "
        "details), or use a cpu_* layout" % ", ".join(local_gpus[:2] + (
            ["..."] if len(local_gpus) > 2 else [])))


def make_model(model_dir, batch_size, sequence_length, learning_rate=None,
               save_checkpoints_steps=100, keep_checkpoint_max=5, tpu=None,
               tpu_topology=None, gin_bindings=(), master=None):
  """An MtfModel on the mesh and layout of the parsed gin layout file.

  ``master``: the session target of a ``cluster.Chief`` (``--cluster``),
  for the Estimator and the scorer; None runs in this process.

  ``gin_bindings`` are re-applied after any operative config that MtfModel
  parses from a model directory (fine-tuning, scoring), so they win.
  """
  mesh_shape, layout = config.mesh_and_layout()
  if not mesh_shape and tpu is None:
    raise ConfigError("no mesh: add a layout, e.g. "
                      "--gin_file=layouts/cpu_ep_2 (see gin/layouts/)")
  if tpu is None:
    _check_gpu_build(config.query("utils.run.mesh_devices"))
  schedule = (constant_learning_rate(learning_rate)
              if learning_rate is not None else rsqrt_learning_rate)
  dtype_bindings = _activation_dtype_bindings(tpu)
  if tpu is None:
    # Off TPU, MtfModel computes on float32 slices; T5's bfloat16 masters
    # would round every checkpoint, so a resumed run would not continue the
    # uninterrupted one.  (TPU keeps T5's bfloat16 masters and slices.)
    dtype_bindings.append("utils.get_variable_dtype.master_dtype = 'float32'")
  model = mtf_model.MtfModel(
      model_dir=model_dir, tpu=tpu, tpu_topology=tpu_topology,
      mesh_shape=mesh_shape,
      mesh_devices=config.query("utils.run.mesh_devices"),
      layout_rules=layout,
      model_type=config.query("utils.run.model_type", "bitransformer"),
      batch_size=("sequences_per_batch", batch_size),
      sequence_length=sequence_length, learning_rate_schedule=schedule,
      save_checkpoints_steps=save_checkpoints_steps,
      keep_checkpoint_max=keep_checkpoint_max,
      # Scalar summaries (loss, router health of every Switch layer) reach
      # TensorBoard on TPU only through the upstream host call.  Off TPU,
      # TPUEstimator runs that host call at every step (computing every
      # router metric and writing an event each step, from a second
      # writer); there the Estimator's summary hook writes them instead,
      # every save_summary_steps (compat 5).
      extra_gin_bindings=["tpu_estimator_model_fn.tpu_summaries = %s"
                          % (tpu is not None)]
      + dtype_bindings + list(gin_bindings))
  if master:
    compat.set_session_master(model, master)
  return model


def train(model, task_name, steps, seed=0, every=10, router_every=100,
          init_checkpoint=None, out=print):
  """Trains to global step ``steps`` (resuming from the latest checkpoint;
  a new run starts from ``init_checkpoint`` if given)."""
  check_nonempty(task_name, "train", model)
  return training.train(model, task_name, steps, seed=seed, every=every,
                        router_every=router_every,
                        init_checkpoint=init_checkpoint, out=out)


def finetune(model, task_name, finetune_steps, pretrained_model_dir, seed=0,
             every=10, router_every=100, out=print):
  """``MtfModel.finetune`` through ``training.train``: the pre-trained
  operative config, then the model's bindings; initialize from the latest
  pre-trained checkpoint and train ``finetune_steps`` more steps."""
  check_nonempty(task_name, "train", model)
  _, step = intact_checkpoint(pretrained_model_dir, "--pretrained_model_dir",
                              out=out)
  mtf_model._parse_operative_config(pretrained_model_dir)  # pylint: disable=protected-access
  return training.train(
      model, task_name, step + finetune_steps, seed=seed,
      init_checkpoint="%s/model.ckpt-%d" % (pretrained_model_dir, step),
      seen_data_init_step=step, every=every, router_every=router_every,
      out=out)


def _has_element(dataset):
  if tf.executing_eagerly():
    return any(True for _ in dataset.take(1))
  nxt = tf.data.make_one_shot_iterator(dataset.take(1)).get_next()
  with tf.Session(config=session_config.unoptimized()) as session:
    try:
      session.run(nxt)
      return True
    except tf.errors.OutOfRangeError:
      return False


def check_tfds_prepared(task_name):
  """One clear line for a TFDS-backed (sub)task whose data is not prepared
  (TFDS would try to download and prepare it in the middle of a run)."""
  for task in seqio.get_subtasks(check_task(task_name)):
    if not isinstance(task.source, seqio.TfdsDataSource):
      continue
    loader = task.source.tfds_dataset
    builder = loader.builder
    if not builder.is_prepared():
      raise ConfigError(
          "TFDS dataset %s is not prepared in %s: prepare it there (e.g. "
          "`tfds build %s --data_dir=DIR`; C4 needs Apache Beam) or point "
          "--tfds_data_dir at a copy" % (
              loader.name, builder.data_dir, loader.name.split(":")[0]))


# Checks and counts already made in this process, keyed by the registered
# task object (re-registering a name makes a new one), the split and the
# lengths: building a seqio pipeline costs seconds (autograph tracing of the
# preprocessors), which adds up over the many runs of a reproduction.
_SEEN = []


def _memo(task, split, lengths, compute):
  key = (split, tuple(sorted(lengths.items())))
  for known, known_key, value in _SEEN:
    if known is task and known_key == key:
      return value
  value = compute()
  _SEEN.append((task, key, value))
  return value


def check_nonempty(task_name, split, model):
  """One clear line if ``split`` of the task yields no example."""
  check_tfds_prepared(task_name)
  task = check_task(task_name)
  lengths = model._sequence_length  # pylint: disable=protected-access

  def has_element():
    return _has_element(pipelines.build(task_name, lambda: task.get_dataset(
        lengths, split=split, shuffle=False, num_epochs=1)))
  if not _memo(task, ("nonempty", split), lengths, has_element):
    bad = [getattr(t.source, "bad_records", None)
           for t in seqio.get_subtasks(task)]
    bad = [b for b in bad if b is not None and b.count]
    raise ConfigError("the %r split of task %r has no examples: %s" % (
        split, task_name, "every record was unreadable (%s)" % (
            bad[0].summary().split(": ", 1)[1]) if bad
        else "check its data source"))


def run_file_bindings(gin_file):
  """The bindings of a run gin file, as strings (for ``gin_bindings``)."""
  with open(config.resolve(gin_file)) as f:
    return [line for line in f.read().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def vocabulary(task_name):
  return check_task(task_name).output_features["targets"].vocabulary


def intact_checkpoint(directory, flag="--model_dir", out=print):
  """(path, step) of the newest checkpoint in ``directory`` that can be
  restored, saying so when a newer one is damaged; one ConfigError if there
  is none."""
  from switch_mtf.train import model_dir  # pylint: disable=g-import-not-at-top
  path, damaged = (model_dir.newest_intact(directory)
                   if os.path.isdir(directory) else (None, []))
  if path is None:
    raise ConfigError("%s %s=%s: %s" % (
        "no intact checkpoint in" if damaged else "no checkpoint in", flag,
        directory, damaged[0][1] + "; restore a copy or train again"
        if damaged else "train first"))
  if damaged:
    out("using %s: the newer checkpoint is damaged (%s); it is left in "
        "place" % (os.path.basename(path), damaged[0][1]))
  return path, int(path.rsplit("-", 1)[1])


def latest_step(model_dir):
  """The step of the last complete checkpoint in ``model_dir``, or None."""
  path = tf.train.latest_checkpoint(model_dir)
  return int(path.rsplit("-", 1)[1]) if path else None


def _avoid_upstream_scoring_crashes(num_examples):
  """Upstream scoring treats the decoded (string) targets as token arrays
  twice and crashes: once to guess the number of real examples (we give it),
  once to add the example text to the scores (we turn that off)."""
  with gin.unlock_config():
    gin.bind_parameter("utils.score_with_estimator.num_examples",
                       num_examples)
    gin.bind_parameter("utils.save_scores.save_example_text", False)


# One scoring graph per model object (built at its first evaluation).
_SCORERS = weakref.WeakKeyDictionary()


def _checkpoint_path(model, checkpoint_step):
  model_dir = model._model_dir  # pylint: disable=protected-access
  step = latest_step(model_dir) if checkpoint_step == -1 else checkpoint_step
  path = os.path.join(model_dir, "model.ckpt-%d" % step)
  if step is None or not tf.io.gfile.exists(path + ".index"):
    raise ConfigError("no checkpoint of step %s in %s" % (step, model_dir))
  return path


def neg_log_perplexity(model, task_name, split="validation",
                       checkpoint_step=-1):
  """The paper's metric: mean log-likelihood per target token (nats), on
  the split's fixed examples (``evaluation.fixed_examples``: the same for
  every model and every call); returns (value, examples, target tokens).

  On CPU/GPU meshes the checkpoint is scored in this process by the
  model's ``evaluation.Scorer`` (built once); on TPU by the Estimator.
  """
  lengths = model._sequence_length  # pylint: disable=protected-access
  examples = evaluation.fixed_examples(task_name, split, lengths)
  path = _checkpoint_path(model, checkpoint_step)
  if model._tpu:  # pylint: disable=protected-access
    scores = estimator_scores(model, task_name, examples, path)
    value = float(np.sum(scores, dtype=np.float64)) / examples.target_tokens
  else:
    value = scorer(model, task_name).neg_log_perplexity(path, examples)
  return value, examples.num_examples, examples.target_tokens


def scorer(model, task_name):
  """The model's ``evaluation.Scorer`` (built at the first call, from the
  gin configuration parsed then)."""
  if model not in _SCORERS:
    activation = config.query("utils.get_variable_dtype.activation_dtype",
                              "float32")
    _SCORERS[model] = evaluation.Scorer(
        vocabulary(task_name).vocab_size, model._sequence_length,  # pylint: disable=protected-access
        model.batch_size, model._mesh_shape, model._layout_rules,  # pylint: disable=protected-access
        mesh_devices=model._mesh_devices,  # pylint: disable=protected-access
        model_type=model._model_type,  # pylint: disable=protected-access
        activation_dtype=tf.as_dtype(activation),
        master=compat.session_master(model))
  return _SCORERS[model]


def estimator_scores(model, task_name, examples, checkpoint_path):
  """Each example's log-likelihood through upstream Mesh TF's scoring (the
  Estimator in predict mode), on the same fixed examples."""
  estimator = model.estimator(vocabulary(task_name),
                              score_in_predict_mode=True)
  batch_size = model.batch_size
  padded = {}
  for key, value in examples.features.items():
    rows = -len(value) % batch_size
    padded[key] = np.concatenate(
        [value, np.zeros((rows,) + value.shape[1:], value.dtype)])

  def input_fn(params):
    del params
    return tf.data.Dataset.from_tensor_slices(padded).batch(
        batch_size, drop_remainder=True)

  results = estimator.predict(input_fn, checkpoint_path=checkpoint_path)
  scores = [r["scores"] for r in results]
  return np.asarray(scores[:examples.num_examples], np.float64)


def task_metrics(model, task_name, split="validation", step=None):
  """Decodes ``split`` with the checkpoint of ``step`` (default: the latest)
  and applies the metric functions of the task (or of each task of a
  mixture), through upstream ``MtfModel.eval``; returns {task: {metric:
  value}}."""
  if step is None:
    step = latest_step(model._model_dir)  # pylint: disable=protected-access
  summary_dir = os.path.join(model._model_dir, "%s_eval" % split)  # pylint: disable=protected-access
  tf.io.gfile.makedirs(summary_dir)   # upstream writes the targets there
  model.eval(task_name, checkpoint_steps=step, split=split,
             summary_dir=summary_dir)
  values = {}
  for name in sorted(tf.io.gfile.listdir(summary_dir)):
    if "tfevents" not in name:
      continue
    for event in tf.train.summary_iterator(os.path.join(summary_dir, name)):
      if event.step != step:
        continue
      for value in event.summary.value:
        parts = value.tag.split("/")
        if len(parts) == 3 and parts[0] == "eval":
          values.setdefault(parts[1], {})[parts[2]] = value.simple_value
  return values


def score_strings(model, inputs, targets, task_name, step=-1):
  """Log-likelihood of each target string given its input string (the
  checkpoint of ``step``; -1: the latest)."""
  _avoid_upstream_scoring_crashes(len(inputs))
  return model.score(inputs=inputs, targets=targets, checkpoint_steps=step,
                     vocabulary=vocabulary(task_name))


def decode_strings(model, inputs, task_name, checkpoint_path, beam_size=1):
  """The model's decoded output text for each input string (greedy, or
  beam search), through upstream Mesh TF's decoding.

  Upstream ``MtfModel.predict`` appends the step to the file name and
  writes each output as a Python bytes literal; callers here get text.
  """
  vocab = vocabulary(task_name)
  estimator = model.estimator(vocab)
  with gin.unlock_config():
    gin.bind_parameter("Bitransformer.decode.beam_size", beam_size)
  ids = mtf_utils.encode_inputs(
      inputs, vocab, model._model_type, model.batch_size,  # pylint: disable=protected-access
      model._sequence_length["inputs"])  # pylint: disable=protected-access

  def input_fn(params):
    del params
    return tf.data.Dataset.from_tensor_slices({"inputs": ids}).batch(
        model.batch_size, drop_remainder=True)
  outputs = list(mtf_utils.decode(estimator, input_fn, vocab,
                                  checkpoint_path=checkpoint_path))
  return [o.decode("utf-8", "replace") if isinstance(o, bytes) else str(o)
          for o in outputs[:len(inputs)]]


def check_task(name):
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    raise ConfigError("unknown task or mixture %r: register it (e.g. "
                      "--module_import=...) or use %s" % (
                          name, "switch_mtf_embedded_span_corruption")
                      ) from None
