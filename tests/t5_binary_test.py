"""T5's own command, t5_mesh_transformer, from the project's environment:
T5's flags and dataset.gin, our gin presets and layouts, our tasks through
--module_import=switch_mtf.tasks.all; the checkpoint it writes then
evaluates with switch-mtf (issue 18)."""
import os
import subprocess
import sys

import tensorflow as tf

import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(os.path.dirname(sys.executable), "t5_mesh_transformer")


def _t5_binary(model_dir, *gin_params):
  """T5's binary training small/switch_8 on cpu_ep_2 for 3 steps, our tasks
  through --module_import, and ``gin_params``."""
  return subprocess.run(
      [BINARY, "--gin_location_prefix=%s/gin/" % ROOT,
       "--gin_file=dataset.gin", "--gin_file=models/small/switch_8.gin",
       "--gin_file=layouts/cpu_ep_2.gin",
       "--gin_param=MIXTURE_NAME = 'switch_mtf_embedded_span_corruption'",
       "--gin_param=run.train_steps = 3"]
      + ["--gin_param=" + p for p in gin_params]
      + ["--module_import=switch_mtf.tasks.all", "--model_dir=" + model_dir],
      capture_output=True, text=True, check=False,
      env={k: v for k, v in os.environ.items() if k != "SWITCH_MTF_DEBUG"})


def test_t5_binary_trains_our_switch_model_then_switch_mtf_evaluates(
    tmp_path):
  model_dir = str(tmp_path / "model")
  result = _t5_binary(model_dir, "run.save_checkpoints_steps = 3")
  assert result.returncode == 0, result.stderr[-3000:]
  reader = tf.train.load_checkpoint(os.path.join(model_dir, "model.ckpt-3"))
  # Our Switch layers, 8 experts split over the 2-device mesh's checkpoint.
  shapes = reader.get_variable_to_shape_map()
  experts = [n for n in shapes if "SwitchFFN" in n and "slot" not in n
             and shapes[n] and shapes[n][0] == 8]
  assert experts, sorted(shapes)[:20]
  assert reader.get_variable_to_dtype_map()["shared/embedding"] == tf.float32
  evaluated = helpers.cli("eval", "--gin_file=models/small/switch_8",
                          "--gin_file=layouts/cpu_1", "--model_dir",
                          model_dir)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert "step 3: validation neg_log_perplexity" in evaluated.stdout


def test_t5_binary_gives_our_one_line_error_for_a_layout_that_does_not_fit(
    tmp_path):
  """compat 16: 3 experts on the 2-device expert mesh is the line
  switch-mtf gives (status 2, no traceback); T5's binary still works (the
  test above)."""
  result = _t5_binary(str(tmp_path / "model"), "SwitchFFN.num_experts = 3")
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("t5_mesh_transformer: error: ") and (
      "dimension 'experts' (size 3) cannot be split 2 ways" in last), last
