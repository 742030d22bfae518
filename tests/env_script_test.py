"""bin/ensure-env.sh, sourced as bin/test and bin/switch-mtf do (under
``set -euo pipefail``), against a stand-in environment whose ``python``
logs the pip commands instead of running them: which TensorFlow build it
installs, when it reinstalls, and that it gets to the end."""
import os
import platform
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STUB = """#!%s
import os, sys
args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as f:
  f.write(" ".join(args) + "\\n")
if args[:2] == ["-m", "pip"]:
  sys.exit(1 if args[2] == "show" else 0)   # show: no tfds-nightly
if args[0] == "-c":                           # the site-packages folder
  print(os.environ["STUB_SITE"])
  sys.exit(0)
os.execv(sys.executable, [sys.executable] + args)   # the script on stdin
"""


def _venv(tmp_path):
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  stub = venv / "bin" / "python"
  stub.write_text(STUB % sys.executable)
  stub.chmod(0o755)
  (tmp_path / "site").mkdir()
  return venv


def _source(tmp_path, venv, build=None):
  env = dict(os.environ, SWITCH_MTF_VENV=str(venv),
             STUB_LOG=str(tmp_path / "log"), STUB_SITE=str(tmp_path / "site"))
  env.pop("SWITCH_MTF_TENSORFLOW", None)
  if build is not None:
    env["SWITCH_MTF_TENSORFLOW"] = build
  (tmp_path / "log").write_text("")
  result = subprocess.run(
      ["bash", "-c", "set -euo pipefail; source %s/bin/ensure-env.sh; "
       "echo REACHED" % ROOT], env=env, capture_output=True, text=True,
      check=False)
  return result, (tmp_path / "log").read_text().splitlines()


def _pip(log, command):
  return [line for line in log if line.startswith("-m pip " + command)]


def test_a_new_environment_gets_the_cpu_build_and_the_script_ends(tmp_path):
  venv = _venv(tmp_path)
  result, log = _source(tmp_path, venv)
  assert result.returncode == 0 and "REACHED" in result.stdout, (
      result.stderr)
  (install,) = _pip(log, "install -q --disable-pip-version-check")
  assert install.endswith("-e %s[test]" % ROOT)
  if platform.system() != "Linux" or platform.machine() != "x86_64":
    assert "--find-links" not in install
    assert (venv / ".switch_mtf_tensorflow").read_text().strip() == "pypi"
    return
  wheels = venv / ".switch_mtf_wheels"
  assert "--find-links %s " % wheels in install
  (wheel,) = os.listdir(wheels)
  assert wheel == "tensorflow-2.15.1+cpu-py3-none-any.whl"
  with zipfile.ZipFile(wheels / wheel) as z:
    assert z.testzip() is None
    metadata = z.read("tensorflow-2.15.1+cpu.dist-info/METADATA").decode()
  assert "Name: tensorflow\n" in metadata
  assert "Requires-Dist: tensorflow-cpu==2.15.1\n" in metadata
  assert (venv / ".switch_mtf_tensorflow").read_text().strip() == "cpu"
  assert (tmp_path / "site" / "switch_mtf_compat.pth").is_file()


def test_switching_builds_replaces_and_unset_keeps_the_build(tmp_path):
  venv = _venv(tmp_path)
  _source(tmp_path, venv, "cpu")
  result, log = _source(tmp_path, venv, "gpu")
  assert result.returncode == 0, result.stderr
  assert _pip(log, "uninstall -q -y tensorflow tensorflow-cpu")
  (install,) = _pip(log, "install -q --disable-pip-version-check")
  assert install.endswith("[test,gpu]") and "--find-links" not in install
  assert not (venv / ".switch_mtf_wheels").exists()
  # Unset: the environment keeps its gpu build, nothing is installed.
  result, log = _source(tmp_path, venv)
  assert result.returncode == 0 and log == [], (result.stderr, log)
  # The same build again: installed, nothing to do either.
  result, log = _source(tmp_path, venv, "gpu")
  assert result.returncode == 0 and log == []


def test_an_unknown_build_is_one_line(tmp_path):
  result, log = _source(tmp_path, _venv(tmp_path), "tpu")
  assert result.returncode == 2 and log == []
  assert result.stderr.strip() == (
      "SWITCH_MTF_TENSORFLOW=tpu is not a TensorFlow build: use cpu "
      "(tensorflow-cpu), gpu (the CUDA build) or pypi (PyPI's tensorflow "
      "wheel)")
