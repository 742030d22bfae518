"""seqio tasks (tasks/): the TFDS-backed tasks under tfds.testing.mock_data
with the offline vocabulary, span corruption lengths and sentinels, the
task metrics on hand-made predictions, and the embedded corpus's tasks."""
import functools

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from switch_mtf.tasks import corpus
from switch_mtf.errors import ConfigError
from switch_mtf.tasks import text_to_text
from switch_mtf.tasks import vocabularies


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory):
  return vocabularies.embedded_sentencepiece(
      cache_dir=str(tmp_path_factory.mktemp("spm")))


@pytest.fixture(scope="module")
def registered(vocabulary):
  return text_to_text.register_all(vocabulary)


def test_embedded_sentencepiece_is_cached_and_has_sentinels(vocabulary,
                                                            tmp_path):
  again = vocabularies.embedded_sentencepiece(
      cache_dir=str(tmp_path / "other"))
  assert again.vocab_size == vocabulary.vocab_size == 2000 + 100
  text = corpus.generate()["validation"][0]
  ids = vocabulary.encode(text)
  assert vocabulary.decode(ids) == text
  assert len(ids) < 0.7 * len(text)        # pieces, not characters
  assert max(ids) < 2000                    # sentinels are not text
  assert vocabulary.decode([2100 - 1]) == "<extra_id_0>"


def test_unreadable_vocabulary_is_one_clear_error(tmp_path):
  with pytest.raises(ConfigError, match="--vocabulary=/path/to"):
    vocabularies.sentencepiece(str(tmp_path / "missing.model"))


def _all_tasks():
  names = []
  for group in ("c4", "glue", "super_glue", "squad"):
    names.extend("%s:%s" % (group, i) for i in range(
        {"c4": 1, "glue": 12, "super_glue": 9, "squad": 1}[group]))
  return names


def test_all_tfds_tasks_are_registered(registered):
  assert len(registered["glue"]) == 12 and len(registered["super_glue"]) == 9
  mixture = seqio.get_mixture_or_task("glue_proportional")
  trained = {t.name for t in mixture.tasks if mixture.get_rate(t) > 0}
  assert trained == {"glue_cola", "glue_sst2", "glue_mrpc", "glue_qqp",
                     "glue_stsb", "glue_mnli", "glue_qnli", "glue_rte"}
  # Evaluation-only sets are in the mixture with rate 0 (as in T5), so that
  # evaluating the mixture on "validation" covers MNLI matched/mismatched.
  assert mixture.get_rate(seqio.get_mixture_or_task("glue_mnli_matched")) == 0
  assert {"glue_mnli_matched", "glue_mnli_mismatched"} <= {
      t.name for t in mixture.tasks}
  assert "super_glue_boolq" in {
      t.name for t in seqio.get_mixture_or_task(
          "super_glue_proportional").tasks}


@pytest.mark.parametrize("entry", _all_tasks())
def test_tfds_task_yields_tokenized_examples_under_mock_data(
    registered, vocabulary, entry):
  group, index = entry.split(":")
  name = registered[group][int(index)]
  task = seqio.get_mixture_or_task(name)
  split = "test" if name.endswith(("_ax", "_axb", "_axg")) else "train"
  lengths = {"inputs": 64, "targets": 16}
  with tfds.testing.mock_data(num_examples=3):
    examples = list(tfds.as_numpy(task.get_dataset(
        lengths, split=split, shuffle=False,
        try_in_mem_cache=False).take(3)))
  if group == "c4":   # span corruption concatenates the three mock texts
    assert examples
  else:
    assert len(examples) == 3
  for example in examples:
    for key, length in lengths.items():
      tokens = example[key]
      assert tokens.dtype == np.int32 and tokens.ndim == 1
      assert 0 < len(tokens) <= length
      assert tokens.min() > 0 and tokens.max() < vocabulary.vocab_size
      # EOS closes every sequence that was not trimmed.
      assert tokens[-1] == 1 or len(tokens) == length


@pytest.mark.parametrize("inputs_length,targets_length", [(64, 14), (128, 29),
                                                          (512, 114)])
def test_span_corruption_lengths_and_sentinels(vocabulary, inputs_length,
                                               targets_length):
  docs = corpus.generate()["train"][:200]
  task = seqio.Task(
      "span_corruption_probe",
      source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
              {"text": docs}), splits=["train"]),
      preprocessors=text_to_text.span_corruption_preprocessors(),
      output_features=text_to_text.features(vocabulary))
  lengths = {"inputs": inputs_length, "targets": targets_length}
  examples = list(tfds.as_numpy(task.get_dataset(lengths, shuffle=False,
                                                 seed=0).take(5)))
  first_sentinel = vocabulary.vocab_size - 1
  for example in examples:
    inputs, targets = list(example["inputs"]), list(example["targets"])
    assert len(inputs) == inputs_length and inputs[-1] == 1
    assert len(targets) == targets_length and targets[-1] == 1
    in_sentinels = [t for t in inputs if t >= vocabulary.vocab_size - 100]
    out_sentinels = [t for t in targets if t >= vocabulary.vocab_size - 100]
    # One sentinel per noise span, counted down from <extra_id_0>, the same
    # ones in the inputs (where spans were cut) and the targets (which hold
    # the spans).
    assert in_sentinels == list(range(first_sentinel,
                                      first_sentinel - len(in_sentinels), -1))
    assert out_sentinels[:len(in_sentinels)] == in_sentinels
    # noise density 0.15 of the original tokens are in the targets.
    noise = len(targets) - len(out_sentinels) - 1
    total = noise + len(inputs) - len(in_sentinels) - 1
    assert abs(noise / total - 0.15) < 0.03


def _metrics(task_name, targets, predictions):
  """Applies a task's postprocessor and metrics to raw target/prediction
  strings, as evaluation does."""
  task = seqio.get_mixture_or_task(task_name)
  post = functools.partial(task.postprocess_fn)
  targets = [post(t, example={}, is_target=True) for t in targets]
  predictions = [post(p, example={}, is_target=False) for p in predictions]
  result = {}
  for metric in task.metric_fns:
    result.update(metric(targets, predictions))
  return result


def test_glue_metrics_on_hand_made_predictions(registered):
  del registered
  mrpc = _metrics("glue_mrpc",
                  ["equivalent", "not_equivalent", "equivalent", "equivalent"],
                  ["equivalent", "not_equivalent", "not_equivalent",
                   "equivalent"])
  assert mrpc["accuracy"] == pytest.approx(75.0)
  assert mrpc["f1"] == pytest.approx(80.0)   # tp 2, fp 0, fn 1
  stsb = _metrics("glue_stsb", ["1.0", "2.0", "3.0"], ["1.2", "2.2", "3.2"])
  assert stsb["pearson_corrcoef"] == pytest.approx(100.0)
  cola = _metrics("glue_cola", ["acceptable", "unacceptable"] * 2,
                  ["acceptable", "unacceptable", "unacceptable",
                   "acceptable"])
  assert cola["matthews_corrcoef"] == pytest.approx(0.0)


def test_squad_metric_normalizes_answers(registered):
  del registered
  task = seqio.get_mixture_or_task("squad_v1_1")
  targets = [["The Cat", "a dog"], ["Paris"]]
  predictions = ["cat!", "paris, france"]
  result = task.metric_fns[0](targets, predictions)
  assert result["em"] == pytest.approx(50.0)       # "the" and "!" dropped
  assert result["f1"] == pytest.approx(50.0 + 50.0 * 2 / 3)


def test_embedded_corpus_and_qa_are_deterministic_and_disjoint():
  first, again = corpus.generate(seed=3), corpus.generate(seed=3)
  assert first == again and corpus.generate(seed=4) != first
  assert not set(first["train"]) & set(first["validation"])
  qa = corpus.closed_book_qa(seed=3)
  assert qa == corpus.closed_book_qa(seed=3)
  train_q = {q for q, _ in qa["train"]}
  valid_q = {q for q, _ in qa["validation"]}
  assert train_q and valid_q and not train_q & valid_q
  # Every answer is in the pre-training text (closed book, not unanswerable).
  text = " ".join(first["train"])
  assert all(answer in text for _, answer in qa["validation"])


def test_benchmark_average_is_the_mean_of_task_means():
  from switch_mtf import metrics  # pylint: disable=g-import-not-at-top
  per_task = {"glue_mrpc": {"f1": 80.0, "accuracy": 70.0},   # 75
              "glue_cola": {"matthews_corrcoef": 30.0},      # 30
              "glue_stsb": {"pearson_corrcoef": 90.0,
                            "spearman_corrcoef": 88.0},      # 89
              "glue_ax": {}}                                  # no metric
  assert metrics.benchmark_average(per_task) == pytest.approx(
      (75 + 30 + 89) / 3)


def test_tasks_all_registers_every_task_without_reading_the_vocabulary(
    monkeypatch):
  """``--module_import=switch_mtf.tasks.all``: every task registered at
  import, the vocabulary file untouched until a task is used (then one clear error)."""
  import importlib  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("SWITCH_MTF_VOCABULARY", "/nonexistent/spm.model")
  import switch_mtf.tasks.all  # pylint: disable=g-import-not-at-top
  importlib.reload(switch_mtf.tasks.all)
  names = set(seqio.TaskRegistry.names())
  for name in ("switch_mtf_embedded_span_corruption", "c4_span_corruption",
               "glue_rte", "super_glue_rte", "squad_v1_1"):
    assert name in names, name
  vocabulary = seqio.get_mixture_or_task("glue_rte").output_features[
      "targets"].vocabulary
  with pytest.raises(ConfigError, match="/nonexistent/spm.model"):
    vocabulary.encode("hello")
