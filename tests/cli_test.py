"""The switch-mtf command line: the demo job end to end, and bad input."""
import json
import os

import helpers


def test_demo_trains_evaluates_and_writes_results(tmp_path):
  result = helpers.cli("demo", "--steps", "4", "--output_dir", str(tmp_path))
  assert result.returncode == 0, result.stderr[-2000:]
  assert "validation neg. log perplexity" in result.stdout
  assert os.path.exists(os.path.join(tmp_path, "model", "model.ckpt-4.index"))
  # The same evaluation, and results file, as `switch-mtf eval`.
  with open(os.path.join(tmp_path, "model", "validation_eval",
                         "results-4.json")) as f:
    evaluation = json.load(f)
  with open(os.path.join(tmp_path, "demo_results.json")) as f:
    results = json.load(f)
  summary = results["summary"]
  assert summary["steps"] == 4
  assert [h["step"] for h in results["history"]] == [1, 2, 3, 4]
  assert summary["final_loss"] < summary["first_loss"]
  # After 4 steps from the paper's small init (attention and FFN 0.1x,
  # embeddings 1.0, tied) the model is still worse than uniform (ln 384 =
  # 5.95; measured -10.2), and must be better than twice that.
  assert -12 < summary["validation_neg_log_perplexity"] < 0
  assert summary["validation_examples"] > 100
  assert evaluation["neg_log_perplexity"] == \
      summary["validation_neg_log_perplexity"]
  assert evaluation["step"] == 4 and evaluation["metrics"] == {}
  loads = summary["final_train_expert_load"]
  assert len(loads) == 2   # the encoder's and the decoder's Switch layer
  for load in loads.values():
    assert 0 <= load["min"] <= 1 / 8 <= load["max"] <= 1
  assert os.path.getsize(os.path.join(tmp_path, "demo_curves.png")) > 1000


def test_impossible_layout_is_one_line_and_exit_2(tmp_path):
  result = helpers.cli("demo", "--steps", "1", "--experts", "3",
                       "--devices", "2", "--output_dir", str(tmp_path))
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("switch-mtf: error:") and "'experts' (size 3)" in last


def test_no_cuda_factory_lines_on_the_terminal():
  """TensorFlow's CUDA build logs three "E ... Unable to register cuDNN /
  cuFFT / cuBLAS factory" lines at import (compat 14; bin/'s default
  tensorflow-cpu logs none)."""
  result = helpers.cli("info", "--gin_file=models/small/switch_8")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "Unable to register" not in result.stderr, result.stderr
  assert "expert capacity" in result.stdout


CUDA_LINES = [
    "2026-12-03 15:49:47.206670: E external/local_xla/xla/stream_executor/"
    "cuda/cuda_%s.cc:9261] Unable to register %s factory: Attempting to "
    "register factory for plugin %s when one has already been registered"
    % (path, plugin, plugin)
    for path, plugin in (("dnn", "cuDNN"), ("fft", "cuFFT"),
                         ("blas", "cuBLAS"))]


def test_the_cuda_build_import_lines_are_dropped_and_others_pass(tmp_path):
  """compat 14 on either build: a stand-in tensorflow that logs the CUDA
  build's three lines and a real warning at import."""
  fake = tmp_path / "tensorflow"
  fake.mkdir()
  lines = CUDA_LINES[:2] + ["W a real warning"] + CUDA_LINES[2:]
  (fake / "__init__.py").write_text(
      "import os\nos.write(2, %r)\n" % "".join(
          line + "\n" for line in lines).encode())
  code = ("import sys\n"
          "sys.path.insert(0, %r)\n"
          "from switch_mtf import compat\n"
          "compat.import_tensorflow_quietly()\n"
          "assert sys.modules['tensorflow'].__file__.startswith(%r)\n"
          % (str(tmp_path), str(tmp_path)))
  result = helpers.fresh_python(code)
  assert result.stderr == "W a real warning\n"


def test_tensorflow_imports_without_jax_and_jax_still_imports_after():
  """compat 15: TFLite's optional jax import is skipped at TensorFlow's
  import (0.6 s); jax imports as usual afterwards."""
  code = ("import sys\n"
          "from switch_mtf import compat\n"
          "compat.import_tensorflow_quietly()\n"
          "import tensorflow as tf\n"
          "print('jax' in sys.modules)\n"
          "assert float(tf.reduce_sum(tf.ones([3]))) == 3.0\n"
          "import jax\n"
          "print(jax.numpy.add(1, 2))\n")
  result = helpers.fresh_python(code)
  assert result.stdout.split() == ["False", "3"], result.stdout
