"""Deterministic evaluation (issue 14): fixed validation examples, and a
scorer whose numbers repeat to the last digit and agree with upstream Mesh
TF's own scoring (the Estimator in predict mode) on the same examples."""
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from switch_mtf import config
from switch_mtf.train import evaluation
from switch_mtf.train import run
from switch_mtf.train import session_config
from switch_mtf.tasks import embedded

LENGTHS = {"inputs": 64, "targets": 16}
MODEL = ["models/small/switch_8", "layouts/cpu_1"]
PARAMS = ["utils.run.sequence_length = %r" % LENGTHS,
          "SwitchFFN.group_size = 64"]


@pytest.fixture(scope="module")
def task():
  tf.disable_eager_execution()
  return embedded.register()


def _rebuilt(task_name, seed):
  evaluation._BUILT.clear()  # pylint: disable=protected-access
  return evaluation.fixed_examples(task_name, "validation", LENGTHS, seed)


def test_examples_are_fixed_by_the_seed(task):
  first = _rebuilt(task.name, 0)
  again = _rebuilt(task.name, 0)
  other = _rebuilt(task.name, 1)
  assert first.num_examples > 100
  for key in ("inputs", "targets"):
    np.testing.assert_array_equal(first.features[key], again.features[key])
  # The span corruption is drawn from the seed: another seed, other spans.
  assert not np.array_equal(first.features["inputs"],
                            other.features["inputs"])
  # Padded to the lengths, one example per row, EOS kept.
  assert first.features["inputs"].shape == (first.num_examples, 64)
  assert first.features["targets"].shape == (first.num_examples, 16)
  assert all(1 in row for row in first.features["targets"])


def test_batches_pad_the_last_one_with_empty_rows(task):
  examples = evaluation.Examples({"targets": np.arange(1, 11).reshape(5, 2)})
  batches = list(examples.batches(4))
  assert [real for _, real in batches] == [4, 1]
  np.testing.assert_array_equal(batches[1][0]["targets"][1:], 0)
  assert examples.target_tokens == 10


@pytest.fixture(scope="module")
def trained(task, tmp_path_factory):
  """A Switch model trained 3 steps (checkpoints at 0 and 3)."""
  model_dir = str(tmp_path_factory.mktemp("scored"))
  config.parse(MODEL, PARAMS)
  model = run.make_model(model_dir, 8, LENGTHS, save_checkpoints_steps=3)
  run.train(model, task.name, 3, out=lambda line: None)
  return model


def test_scores_repeat_and_agree_with_upstream_scoring(task, trained):
  model = trained
  examples = evaluation.fixed_examples(task.name, "validation", LENGTHS)
  value, count, tokens = run.neg_log_perplexity(model, task.name)
  again, _, _ = run.neg_log_perplexity(model, task.name)
  assert value == again                      # to the last digit
  assert count == examples.num_examples and tokens == examples.target_tokens
  # A fresh scorer (new graph) gives the same number too.
  scorer = evaluation.Scorer(
      run.vocabulary(task.name).vocab_size, LENGTHS, 8, "batch:1",
      "batch:batch,experts:batch")
  path = tf.train.latest_checkpoint(model._model_dir)  # pylint: disable=protected-access
  ours = scorer.scores(path, examples)
  # (with the CPU session options: no grappler pass that changes nothing)
  assert scorer._session._config == session_config.for_cpu()  # pylint: disable=protected-access
  assert float(np.sum(ours, dtype=np.float64)) / tokens == value
  # Upstream Mesh TF's scoring (Estimator, predict mode) on the same
  # examples: per example, the same log-likelihoods.
  upstream = run.estimator_scores(model, task.name, examples, path)
  np.testing.assert_allclose(ours, upstream, rtol=1e-5, atol=1e-4)
  # Another checkpoint, another number: the scorer restores what it is given.
  step0 = scorer.neg_log_perplexity(path.rsplit("-", 1)[0] + "-0", examples)
  assert step0 != value


def test_a_checkpoint_of_another_model_is_one_error(task, trained):
  scorer_config = ["SwitchFFN.num_experts = 4"]
  config.parse(MODEL, PARAMS + scorer_config)
  scorer = evaluation.Scorer(
      run.vocabulary(task.name).vocab_size, LENGTHS, 8, "batch:1",
      "batch:batch,experts:batch")
  path = tf.train.latest_checkpoint(trained._model_dir)  # pylint: disable=protected-access
  with pytest.raises(evaluation.ConfigError,
                     match=r"\[128, 8\] in the checkpoint, \[128, 4\] in "
                     "this model"):
    scorer.scores(path, evaluation.fixed_examples(task.name, "validation",
                                                  LENGTHS))
