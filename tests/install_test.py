"""A non-editable install (issue 18): a wheel carries the gin tree, the
tasks and the compatibility hook; installed without dependencies into a
scratch folder (the environment's packages serve as the dependencies), its
`switch-mtf` describes a preset and trains a few steps."""
import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, **kwargs):
  result = subprocess.run(args, capture_output=True, text=True, check=False,
                          **kwargs)
  assert result.returncode == 0, (args, result.stdout[-2000:],
                                  result.stderr[-3000:])
  return result


def test_wheel_installs_and_runs_without_the_checkout(tmp_path):
  wheels = tmp_path / "wheels"
  _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "-q", "-w", str(wheels), ROOT])
  (wheel,) = wheels.glob("switch_mtf-*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  for name in ("switch_mtf/gin/models/small/switch_8.gin",
               "switch_mtf/gin/layouts/cpu_1.gin", "switch_mtf/tasks/all.py",
               "switch_mtf_compat.pth"):
    assert name in names, name
  # The tasks live under the project's namespace, not as a top-level
  # package called "tasks".
  assert not [n for n in names if n.startswith("tasks/")]
  target = tmp_path / "site"
  _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
        "--target", str(target), str(wheel)])
  # The installed copy, not the checkout (run from elsewhere, first on the
  # path).
  env = dict(os.environ, PYTHONPATH=str(target))
  where = _run([sys.executable, "-c",
                "import switch_mtf, switch_mtf.tasks.all as t; "
                "print(switch_mtf.__file__); print(t.__file__)"],
               env=env, cwd=str(tmp_path)).stdout.split()
  assert all(path.startswith(str(target)) for path in where), where
  cli = [sys.executable, "-m", "switch_mtf.cli"]
  info = _run(cli + ["info", "--gin_file=models/small/switch_8"], env=env,
              cwd=str(tmp_path))
  assert "experts" in info.stdout
  trained = _run(cli + ["train", "--gin_file=models/small/switch_8",
                        "--gin_file=layouts/cpu_1", "--model_dir",
                        str(tmp_path / "model"), "--steps", "2",
                        "--save_checkpoints_steps", "2"],
                 env=env, cwd=str(tmp_path))
  assert os.path.exists(str(tmp_path / "model" / "model.ckpt-2.index")), (
      trained.stdout[-2000:])


def test_one_tfds_package_provides_tensorflow_datasets():
  """seqio-nightly pulls tfds-nightly and t5 pulls tensorflow-datasets,
  both writing the module tensorflow_datasets; bin/ensure-env.sh keeps the
  pinned tensorflow-datasets alone (no mix of two releases' files)."""
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets  # pylint: disable=g-import-not-at-top
  providers = importlib.metadata.packages_distributions()["tensorflow_datasets"]
  assert providers == ["tensorflow-datasets"]
  assert tensorflow_datasets.__version__ == importlib.metadata.version(
      "tensorflow-datasets")


def test_the_environment_has_the_tensorflow_build_it_was_made_with():
  """bin/ensure-env.sh installs tensorflow-cpu unless asked for the CUDA
  build (SWITCH_MTF_TENSORFLOW=gpu): the module tensorflow then comes from
  tensorflow-cpu alone, and the CPU build logs no CUDA lines at import."""
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  import pytest  # pylint: disable=g-import-not-at-top
  try:
    with open(os.path.join(sys.prefix, ".switch_mtf_tensorflow")) as f:
      build = f.read().strip()
  except FileNotFoundError:
    pytest.skip("this environment was not made by bin/ensure-env.sh")
  providers = importlib.metadata.packages_distributions()["tensorflow"]
  if build == "cpu":
    assert providers == ["tensorflow-cpu"]
    assert importlib.metadata.version("tensorflow") == "2.15.1+cpu"
    assert importlib.metadata.requires("tensorflow") == [
        "tensorflow-cpu==2.15.1"]
    result = _run([sys.executable, "-c", "import tensorflow"])
    assert "cuda" not in result.stderr.lower(), result.stderr
  else:
    assert build == "gpu" and providers == ["tensorflow"]
