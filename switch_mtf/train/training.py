"""The training call around t5's MtfModel: seeds, resume, progress, NaN.

``MtfModel.train`` calls Mesh TF's ``utils.train_model``, which takes no
hooks, no checkpoint listeners and no seed.  We build the same input function
and call the same upstream Estimator (one model function for CPU, GPU and
TPU), adding what a user needs from a training run:

- a seed for the data order (seqio shuffle and preprocessors) and the
  variable initializers, so the same command gives the same loss trajectory;
- data already seen is skipped on resume, and the model's random numbers are
  keyed by the step (``compat``), so a run killed and restarted continues
  exactly as the uninterrupted run would have;
- progress lines (step, loss, aux loss, steps/s, tokens/s, ETA) and router
  health per Switch layer every ``router_every`` steps;
- parameters that went NaN/Inf are never written over the last good
  checkpoint: the checkpoint listener refuses the save and training stops.
"""
import contextlib
import signal
import threading
import time

import mesh_tensorflow as mtf
from t5.models import mesh_transformer
import tensorflow.compat.v1 as tf
from tensorflow.python.summary.writer import writer_cache

from switch_mtf import compat
from switch_mtf import errors
from switch_mtf.train import model_dir
from switch_mtf.train import pipelines
from switch_mtf.train import session_config
from switch_mtf.moe import router_summaries
from switch_mtf.errors import ConfigError


class TrainingDiverged(RuntimeError):
  """The loss or the parameters became NaN/Inf."""


class FiniteCheckpointGuard(tf.estimator.CheckpointSaverListener):
  """Refuses to save a checkpoint whose parameters are not all finite.

  Runs after Mesh TF's listener has copied the slices into the saved
  variables (or, at a new run's first save, where that copy is skipped,
  after the restore hook copied them out: ``_masters_current_after_restore``),
  so it checks exactly what would be written.
  """

  def begin(self):
    floats = [v for v in tf.global_variables()
              if v.dtype.base_dtype.is_floating]
    self._all_finite = tf.reduce_all(tf.stack(
        [tf.reduce_all(tf.math.is_finite(v)) for v in floats]))

  def before_save(self, session, global_step_value):
    if not session.run(self._all_finite):
      raise TrainingDiverged(
          "the parameters became NaN/Inf by step %d; that checkpoint was not "
          "written, the last good one is untouched: lower the learning rate "
          "or check the data" % global_step_value)


class CheckpointMatchHook(tf.train.SessionRunHook):
  """Before anything is restored or written: the model dir's checkpoint must
  hold every variable of this model, with the same shapes.  (Resource
  variables restore a wrong shape silently and fail steps later.)"""

  def __init__(self, directory):
    self._directory = directory

  def begin(self):
    path = tf.train.latest_checkpoint(self._directory)
    if path is not None:
      model_dir.check_fits(path, {v.op.name: v.shape.as_list()
                                  for v in tf.global_variables()})


def _format_duration(seconds):
  seconds = int(seconds)
  if seconds >= 3600:
    return "%dh%02dm" % (seconds // 3600, seconds % 3600 // 60)
  return "%dm%02ds" % (seconds // 60, seconds % 60)


class StepOrderHook(tf.train.SessionRunHook):
  """Orders the global-step increment after the model's reads of the step,
  once the graph is built (see ``compat.order_step_increment``)."""

  def begin(self):
    compat.order_step_increment(tf.get_default_graph())


class OneSessionHook(tf.train.SessionRunHook):
  """For --cluster runs: a second session means TensorFlow recovered from a
  lost worker (as from a preemption) by restoring the last checkpoint under
  an input pipeline that has moved on.  The run would go on with the wrong
  data, so it ends with one line instead (a worker back within
  --worker_timeout_s escapes the cluster's watchdog, not this)."""

  def __init__(self):
    self._sessions = 0

  def after_create_session(self, session, coord):
    del session, coord
    self._sessions += 1
    if self._sessions > 1:
      errors.exit_now(
          "a worker of the --cluster run was lost and TensorFlow restarted "
          "the session: run the same command again with every worker up; it "
          "resumes from the last good checkpoint, with the right data", 1)


# ProgressHook's fetch of the merged summaries (results unused).
SUMMARIES = "_summaries"


class ProgressHook(tf.train.SessionRunHook):
  """Prints progress every ``every`` steps and router health every
  ``router_every`` steps, from the lowered scalar summaries (placement mesh;
  on TPU only steps/s and ETA, the rest is in TensorBoard)."""

  def __init__(self, last_step, tokens_per_step, every=10, router_every=100,
               out=print):
    self._last_step = last_step
    self._tokens_per_step = tokens_per_step
    self._every = max(1, every)
    self._router_every = router_every
    self._out = out
    # One entry per progress line: step, loss (of that step), mean_loss (of
    # the steps since the previous line), seconds (of training so far, this
    # run), aux_loss, fraction_dropped, router ({layer: {metric: value}}).
    self.history = []
    self.last_values = {}   # {tag: value} of the last printed step
    self.train_seconds, self.steps_trained = 0.0, 0

  def begin(self):
    self._scalars = compat.lowered_scalars(tf.get_default_graph())
    if "loss" not in self._scalars:   # no TPU summaries: the Estimator's
      losses = tf.get_collection(tf.GraphKeys.LOSSES)
      if losses:
        self._scalars["loss"] = losses[0]
    # The loss, aux loss and router health of every layer are fetched at
    # every step, printed or not: each new set of fetches makes TensorFlow
    # optimize and build the whole step again (3-5 s for the small presets),
    # while these scalars cost microseconds.  Per-expert loads (E scalars
    # per layer, when summarize_expert_load is on) only on printed steps.
    self._every_step = {k: v for k, v in self._scalars.items()
                        if not router_summaries.is_per_expert(k)}
    self._global_step = tf.train.get_global_step()

  def after_create_session(self, session, coord):
    del coord
    # The Estimator's summary hook fetches the merged summaries every
    # save_summary_steps, starting with step 1: fetching them at every step
    # (a few scalars, mostly the ones above) keeps that step's fetches the
    # same as every other's, so the step is optimized and built once, not
    # twice.  The graph is final here, with the Scaffold's summary op.
    summaries = tf.get_collection(tf.GraphKeys.SUMMARY_OP)
    if summaries and self._scalars:   # placement mesh (not TPU)
      self._every_step[SUMMARIES] = summaries
    self._step = int(session.run(self._global_step))
    self._start_step = self._step
    self._time = self._start_time = time.time()
    self._window_start = self._step
    self._window_losses = []

  def before_run(self, run_context):
    del run_context
    fetches = (dict(self._every_step, **self._scalars)
               if self._printed(self._step + 1) else self._every_step)
    return tf.train.SessionRunArgs(fetches) if fetches else None

  def _printed(self, step):
    return not step % self._every or step == self._last_step

  def after_run(self, run_context, run_values):
    del run_context
    self._step += 1
    results = dict(run_values.results or {})
    results.pop(SUMMARIES, None)
    if "loss" in results:
      self._window_losses.append(float(results["loss"]))
    if not self._printed(self._step):
      return
    values = {k: float(v) for k, v in results.items()}
    mean_loss = (sum(self._window_losses) / len(self._window_losses)
                 if self._window_losses else float("nan"))
    self._window_losses = []
    now = time.time()
    steps_per_s = (self._step - self._window_start) / max(now - self._time,
                                                          1e-9)
    self._time, self._window_start = now, self._step
    remaining = (self._last_step - self._step) / max(steps_per_s, 1e-9)
    aux = router_summaries.mean_over_layers(values, "aux_loss")
    loss = values.get("loss", float("nan"))
    self.last_values = values
    self.history.append(dict(
        step=self._step, loss=loss, mean_loss=mean_loss,
        seconds=now - self._start_time, aux_loss=aux,
        fraction_dropped=router_summaries.mean_over_layers(
            values, "fraction_dropped"),
        router=router_summaries.by_layer(values)))
    self._out("step %d/%d  loss %.4f  aux %s  %.2f steps/s  %.0f tokens/s  "
              "ETA %s" % (
                  self._step, self._last_step, loss,
                  "-" if aux is None else "%.3f" % aux,
                  steps_per_s, steps_per_s * self._tokens_per_step,
                  _format_duration(remaining)))
    if self._router_every and (self._step % self._router_every == 0
                               or self._step == self._last_step):
      for line in router_summaries.health_lines(values):
        self._out(line)

  def end(self, session):
    del session
    elapsed = time.time() - self._start_time
    steps = self._step - self._start_step
    self.train_seconds, self.steps_trained = elapsed, steps
    if steps:
      self._out("trained steps %d-%d in %s (%.2f steps/s, %.0f tokens/s)" % (
          self._start_step + 1, self._step, _format_duration(elapsed),
          steps / max(elapsed, 1e-9),
          steps * self._tokens_per_step / max(elapsed, 1e-9)))


def train_dataset(task_name, sequence_length, batch_size, seed, split="train",
                  skip=0):
  """The batches training consumes, in order: T5's packed training examples
  of the task (shuffled and preprocessed with ``seed``), repeated, batched;
  the first ``skip`` batches left out (those a resumed run has seen)."""
  dataset = pipelines.build(
      task_name, lambda: mesh_transformer.mesh_train_dataset_fn(
          mixture_or_task_name=task_name, sequence_length=sequence_length,
          dataset_split=split, seed=seed))
  dataset = dataset.repeat().batch(batch_size, drop_remainder=True)
  if skip:
    dataset = dataset.skip(skip)
  return dataset.prefetch(tf.data.experimental.AUTOTUNE)


class TrainingStopped(RuntimeError):
  """SIGINT or SIGTERM stopped training at a step boundary (checkpoint of
  that step written)."""

  def __init__(self, signal_name, step):
    super().__init__(
        "%s: stopped at step %d and saved its checkpoint; run the same "
        "command again to resume" % (signal_name, step))
    self.signal_name = signal_name
    self.step = step


class StopOnSignalHook(tf.train.SessionRunHook):
  """Turns SIGINT and SIGTERM (what schedulers and preemption send) into a
  stop at the next step boundary; the Estimator's checkpoint hook then
  saves the last finished step."""

  def __init__(self):
    self.received = None
    self._previous = {}

  def begin(self):
    for signum in (signal.SIGINT, signal.SIGTERM):
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:   # not the main thread: leave signals alone
        pass

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name

  def after_run(self, run_context, run_values):
    del run_values
    if self.received:
      run_context.request_stop()

  def restore(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}


def train(model, task_name, steps, split="train", seed=0,
          init_checkpoint=None, seen_data_init_step=0, every=10,
          router_every=100, out=print):
  """Trains ``model`` (an MtfModel) on a seqio task until global ``steps``;
  returns the ProgressHook (history, last router values, speed).

  Resuming (a checkpoint in the model dir) skips the batches the restored
  steps already consumed, counted from ``seen_data_init_step`` (the
  pre-trained step when fine-tuning).
  """
  directory = model._model_dir  # pylint: disable=protected-access
  model_dir.prepare(directory)
  with model_dir.Lock(directory):
    model_dir.remove_leftovers(directory)
    resumed = model_dir.use_newest_intact(directory, out=out)
    if resumed:
      out("resuming from the checkpoint at step %s in %s" % (
          resumed.rsplit("-", 1)[1], directory))
    return _train_locked(model, task_name, steps, split, seed,
                         init_checkpoint, seen_data_init_step, every,
                         router_every, out)


def _graph_written_once(estimator):
  """Mesh TF's checkpoint hook writes the graph beside the checkpoints as
  text (graph.pbtxt: 17 MB for small/switch_8, several seconds of
  pure-Python protobuf printing at every start) and as a MetaGraph next to
  every checkpoint (model.ckpt-N.meta: 10.7 MB each, as much as the
  weights); into the events file it writes the graph and a MetaGraph again
  after the summary writer has written both (4 copies of the graph, 42 MB
  of events for a run of small/switch_8, a second of serializing at every
  start).  Nothing reads them: restoring, evaluation, export and the
  Hugging Face conversion rebuild the graph from the gin config.  Here the
  model dir's summary writer is made without a graph, and the checkpoint
  hook adds the graph to it once, from a thread started when the session
  starts (the final graph: TensorBoard's graph view) and joined at the end
  of training, and saves the first checkpoint unless the model dir's newest
  checkpoint is of the same step (compat 7, which this method's
  replacement bypassed from 896e389 to b76f1d4).  (The hook's
  ``save_graph_def`` switch turns off only the files; the hook sits in
  Mesh TF's model function, so we change the hook the model function
  returns.)"""
  model_fn = estimator._model_fn  # pylint: disable=protected-access

  def model_fn_writing_the_graph_once(features, labels, mode, config, params):
    spec = model_fn(features, labels, mode, config, params)
    for hooks in (list(spec.training_hooks), list(spec.training_chief_hooks)):
      for previous, hook in zip([None] + hooks, hooks):
        if isinstance(hook, tf.train.CheckpointSaverHook):
          hook._save_graph_def = False  # pylint: disable=protected-access
          _add_graph_once(hook, _masters_current_after_restore(previous,
                                                               hook))
    return spec

  estimator._model_fn = model_fn_writing_the_graph_once  # pylint: disable=protected-access
  return estimator


def _masters_current_after_restore(previous_hook, saver_hook):
  """A context manager factory ``masters_current()``: inside it, the
  checkpoint hook's save skips Mesh TF's copy of the slice variables into
  the master variables (the ones saved) when Mesh TF's restore hook, the
  hook just before the checkpoint hook in the model function's list (Mesh
  TF's ``[restore_hook, saver_hook, ...]``; a session's hooks start in list
  order), has copied the masters into the slices in this session: no step
  has run since (the caller saves in ``after_create_session``), so the copy
  back would write the masters' own values (0.11 s before step 1 of
  small/switch_8 on 1 device, 0.2 s on 2, as its own pruned and optimized
  graph).  Only where every variable's slices have the master's dtype (a
  bfloat16 slice would round the master); elsewhere, or in another
  session, the copy runs."""
  # pylint: disable=protected-access
  copies = [listener for listener in saver_hook._listeners
            if isinstance(listener, mtf.MtfCheckpointSaverListener)]
  exact = (isinstance(previous_hook, mtf.MtfRestoreHook)
           and len(copies) == 1 and all(
               v.master_dtype == v.slice_dtype
               for v in previous_hook._lowering.graph.all_variables))
  restored_in = []   # the restore hook's session, until masters_current ends
  if exact:
    copy_into_slices = previous_hook.after_create_session
    copy_into_masters = copies[0].before_save

    def after_create_session(session, coord):
      copy_into_slices(session, coord)
      restored_in[:] = [session]

    def before_save(session, global_step_value):
      if not (restored_in and restored_in[0] is session):
        copy_into_masters(session, global_step_value)
    previous_hook.after_create_session = after_create_session
    copies[0].before_save = before_save

  @contextlib.contextmanager
  def masters_current():
    try:
      yield
    finally:
      del restored_in[:]   # any later save copies
  return masters_current


def _add_graph_once(hook, masters_current):
  # pylint: disable=protected-access
  directory = hook._checkpoint_dir
  with writer_cache.FileWriterCache._lock:
    writers = writer_cache.FileWriterCache._cache
    if directory not in writers:   # else an earlier run's writer
      writers[directory] = tf.summary.FileWriter(directory)

  writing = []
  end = hook.end

  def after_create_session(session, coord):
    del coord   # as the hook's own method, without the graph's copies
    # The global step variable, as gin's config hook and ProgressHook read
    # it: one set of fetches, so TensorFlow prunes and optimizes the graph
    # for it once, not twice (0.07-0.11 s for small/switch_8 on 2 devices;
    # the hook's own tensor is the same value plus 0).
    global_step = session.run(tf.train.get_global_step())
    # Serializing the graph (19k nodes for small/switch_8 on 2 devices,
    # with their shapes) takes 0.2-0.3 s of Python; in a thread it overlaps
    # the first steps, which run in TensorFlow's C++ without the GIL.  The
    # graph is final; the writer's queue takes events from any thread.
    writing.append(threading.Thread(
        target=hook._summary_writer.add_graph,
        args=(tf.get_default_graph(),), name="switch_mtf_graph_writer",
        daemon=True))
    writing[-1].start()
    with masters_current():   # no step has run in this session
      if not compat.saved_already(hook._checkpoint_dir, global_step):
        hook._save(session, global_step)
    hook._timer.update_last_triggered_step(global_step)

  def end_after_the_graph(session):
    # The graph written, and flushed: the Estimator's summary hook flushes
    # the writer after this hook's end, but there is one only when
    # summaries are saved, and nothing flushes the writer at exit.
    while writing:
      writing.pop().join()
      hook._summary_writer.flush()
    end(session)

  hook.after_create_session = after_create_session
  hook.end = end_after_the_graph
  # pylint: enable=protected-access


def training_estimator(model, task_name, seed, init_checkpoint=None):
  """MtfModel's upstream Estimator, seeded, writing the graph once, with the
  session options for CPU (``session_config``)."""
  estimator = _graph_written_once(compat.seed_estimator(
      model.estimator(mesh_transformer.get_vocabulary(task_name),
                      init_checkpoint), seed))
  estimator._session_config = session_config.for_cpu(  # pylint: disable=protected-access
      estimator._session_config)  # pylint: disable=protected-access
  return estimator


def _train_locked(model, task_name, steps, split, seed, init_checkpoint,
                  seen_data_init_step, every, router_every, out):
  estimator = training_estimator(model, task_name, seed, init_checkpoint)
  sequence_length = model._sequence_length  # pylint: disable=protected-access
  batch_size = model.batch_size

  def input_fn(params):
    del params
    seen = 0
    if estimator.latest_checkpoint() is not None:
      seen = max(0, estimator.get_variable_value("global_step")
                 - seen_data_init_step)
    return train_dataset(task_name, sequence_length, batch_size, seed,
                         split=split, skip=seen)

  tokens_per_step = batch_size * sum(sequence_length.values())
  progress = ProgressHook(steps, tokens_per_step, every=every,
                          router_every=router_every, out=out)
  stop = StopOnSignalHook()
  hooks = [CheckpointMatchHook(model._model_dir), StepOrderHook(), stop,  # pylint: disable=protected-access
           progress]
  if compat.session_master(model):
    hooks.append(OneSessionHook())
  try:
    estimator.train(input_fn=input_fn, max_steps=steps, hooks=hooks,
                    saving_listeners=[FiniteCheckpointGuard()])
  except tf.train.NanLossDuringTrainingError:
    raise TrainingDiverged(
        "the loss became NaN at step %d; no checkpoint was written after "
        "it, the last good one is untouched: lower the learning rate or "
        "check the data" % (progress._step + 1)) from None  # pylint: disable=protected-access
  finally:
    stop.restore()
  if stop.received:
    raise TrainingStopped(stop.received, progress._step)  # pylint: disable=protected-access
  return progress
