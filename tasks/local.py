"""Tasks over data the user has on disk (no TFDS, no network).

- Pre-training: C4-format JSON lines (``{"text": ...}`` per line, ``.gz`` or
  not) or plain text files (one document per line), with T5's span
  corruption: task ``local_span_corruption``.
- Downstream: TSV (``inputs<TAB>targets``) or JSON lines (``{"inputs": ...,
  "targets": ...}``): task ``local_text_to_text``, exact-match accuracy.
Files whose names contain ".json" are read as JSON lines.

Point at the files with gin, e.g.
  --gin_param="local_data.pretraining = {'train': '/data/c4-train.*.json.gz',
                                         'validation': '/data/c4-val.json.gz'}"
Records that cannot be read (not UTF-8, not JSON, no ``text``) are counted
by reason and skipped (``switch-mtf`` reports them at exit); a run does
not stop for one bad line, and a split where every record is bad says so.
The default vocabulary of these tasks is the byte one: no file, no
network.
"""
import json

from absl import logging
import gin
import seqio
from t5.evaluation import metrics as t5_metrics
import tensorflow.compat.v1 as tf

from switch_mtf.errors import ConfigError
from switch_mtf.tasks import text_to_text

PRETRAINING = "local_span_corruption"
TEXT_TO_TEXT = "local_text_to_text"


class BadRecords(object):
  """Counts skipped records of a task by reason (read by tests, the CLI's
  report at exit and the empty-split message)."""

  def __init__(self, name):
    self.name = name
    self.count = 0
    self.reasons = {}

  def skip(self, reason):
    self.count += 1
    self.reasons[reason] = self.reasons.get(reason, 0) + 1
    if self.count in (1, 10, 100) or self.count % 1000 == 0:
      logging.warning("%s", self.summary())

  def summary(self):
    """One line: how many records were skipped, and why."""
    return "%s: skipped %d unreadable record(s): %s" % (
        self.name, self.count, ", ".join(
            "%d %s" % (n, reason) for reason, n in sorted(
                self.reasons.items(), key=lambda item: -item[1])))


# {task name: BadRecords} of the local tasks registered in this process.
COUNTERS = {}


def expand(pattern):
  """The files of a glob pattern; one clear error if none or all empty."""
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise ConfigError("no file matches %r: check the path in local_data"
                      % pattern)
  if all(tf.io.gfile.stat(f).length == 0 for f in files):
    raise ConfigError("%r: the file(s) are empty" % pattern)
  return files


def _lines(files):
  """One dataset of the lines of ``files``, gzip-compressed or not."""
  datasets = []
  for compression, group in (("GZIP", [f for f in files if f.endswith(".gz")]),
                             ("", [f for f in files
                                   if not f.endswith(".gz")])):
    if group:
      datasets.append(tf.data.TextLineDataset(group,
                                              compression_type=compression))
  dataset = datasets[0]
  for other in datasets[1:]:
    dataset = dataset.concatenate(other)
  return dataset


def _python_lines(files):
  """The lines of ``files`` (bytes, no newline) read in Python: tf.data's
  iterators need eager mode, and the CLI runs TensorFlow in graph mode."""
  import gzip  # pylint: disable=g-import-not-at-top
  for f in files:
    with tf.io.gfile.GFile(f, "rb") as raw:
      stream = gzip.GzipFile(fileobj=raw) if f.endswith(".gz") else raw
      for line in stream:
        yield line.rstrip(b"\r\n")


def parse_record(line, keys, json_lines, bad):
  """A line -> {key: text}, or None (counted in ``bad``) if unreadable.

  JSON lines hold ``keys``; otherwise a line is the text itself (one key)
  or ``inputs<TAB>targets`` (two keys).
  """
  try:
    text = line.decode("utf-8")
  except UnicodeDecodeError:
    bad.skip("bytes that are not UTF-8")
    return None
  if not json_lines and len(keys) == 1:
    return {keys[0]: text} if text.strip() else None
  if not json_lines:
    fields = text.split("\t")
    if len(fields) != 2:
      bad.skip("a TSV line without exactly 2 fields")
      return None
    return dict(zip(keys, fields))
  try:
    record = json.loads(text)
  except ValueError:
    bad.skip("a line that is not JSON")
    return None
  if not isinstance(record, dict) or any(
      not isinstance(record.get(k), str) for k in keys):
    bad.skip("a JSON line without %s" % " and ".join(map(repr, keys)))
    return None
  return {k: record[k] for k in keys}


def _records(files, keys, bad):
  """tf.data of {key: string} records from the lines of ``files``."""
  json_lines = [".json" in f for f in files]
  if any(json_lines) and not all(json_lines):
    raise ConfigError("mix of JSON-lines and other files: %s" % files[:4])

  def parse(line):
    record = parse_record(line.numpy(), keys, json_lines[0], bad)
    ok = record is not None
    return [ok] + [(record[k] if ok else "").encode("utf-8") for k in keys]

  def to_tensors(line):
    values = tf.py_function(parse, [line], [tf.bool] + [tf.string] * len(keys))
    return values[0], {k: tf.reshape(v, []) for k, v in zip(keys, values[1:])}

  dataset = _lines(files).map(to_tensors)
  return dataset.filter(lambda ok, _: ok).map(lambda _, record: record)


def _source(split_patterns, keys, bad):
  files = {split: expand(p) for split, p in split_patterns.items()}

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    return _records(files[split], keys, bad)

  source = seqio.FunctionDataSource(dataset_fn, splits=tuple(files))
  source.bad_records = bad   # why a split may turn out empty
  return source


def training_texts(pretraining=None, text_to_text_files=None, limit=200000):
  """(name, texts) of the training files (at most ``limit`` records), for
  training a vocabulary on them; the name changes when the files do."""
  import hashlib  # pylint: disable=g-import-not-at-top
  if pretraining and "train" in pretraining:
    files, keys = expand(pretraining["train"]), ("text",)
  elif text_to_text_files and "train" in text_to_text_files:
    files, keys = expand(text_to_text_files["train"]), ("inputs", "targets")
  else:
    raise ConfigError("--vocabulary=trained needs training files: bind "
                      "local_data.pretraining = {'train': ...} (or "
                      "local_data.text_to_text_files)")
  digest = hashlib.sha256()
  for f in files:
    stat = tf.io.gfile.stat(f)
    digest.update(("%s %d %d" % (f, stat.length, stat.mtime_nsec)).encode())
  json_lines = ".json" in files[0]
  bad = BadRecords("vocabulary")

  def texts():
    count = 0
    for line in _python_lines(files):
      record = parse_record(line, keys, json_lines, bad)
      for key in keys if record else ():
        yield record[key]
      count += 1
      if count >= limit:
        return
  return "local_spm_" + digest.hexdigest()[:16], texts()


@gin.configurable("local_data")
def register(vocabulary, pretraining=None, text_to_text_files=None):
  """Registers the local tasks for which files are given; returns
  {task name: BadRecords}.

  Args:
    vocabulary: a seqio vocabulary.
    pretraining: {split: glob} of JSON-lines / text files.
    text_to_text_files: {split: glob} of TSV / JSON-lines files.
  """
  counters = COUNTERS
  if pretraining:
    bad = counters[PRETRAINING] = BadRecords(PRETRAINING)
    text_to_text.add_task(
        PRETRAINING, source=_source(pretraining, ("text",), bad),
        preprocessors=text_to_text.span_corruption_preprocessors(),
        output_features=text_to_text.features(vocabulary), metric_fns=[])
  if text_to_text_files:
    bad = counters[TEXT_TO_TEXT] = BadRecords(TEXT_TO_TEXT)
    text_to_text.add_task(
        TEXT_TO_TEXT, source=_source(text_to_text_files,
                                     ("inputs", "targets"), bad),
        preprocessors=text_to_text.text_to_text_preprocessors(),
        output_features=text_to_text.features(vocabulary),
        metric_fns=[t5_metrics.accuracy])
  return counters
