# Sourced by bin/switch-mtf and bin/test (under set -euo pipefail): creates
# (or reuses) .venv with the pinned stack.  Re-installs when setup.py,
# constraints.txt, this script or the TensorFlow build change.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SWITCH_MTF_VENV:-$ROOT/.venv}"

find_python() {
  for candidate in "${PYTHON:-}" python3.11 python3.10 python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 10), (3, 11)))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}

# TensorFlow's build, $SWITCH_MTF_TENSORFLOW:
#   cpu   tensorflow-cpu (no CUDA kernels, no NVIDIA libraries): the default
#         on Linux x86_64;
#   gpu   the CUDA build and NVIDIA's libraries (setup.py's gpu extra);
#   pypi  PyPI's `tensorflow` wheel as it is: the default elsewhere (there is
#         no tensorflow-cpu 2.15.1 wheel for Linux aarch64 or macOS).
# Unset, an existing environment keeps the build it has.
tensorflow_build() {
  local built
  built="$(cat "$VENV/.switch_mtf_tensorflow" 2>/dev/null || true)"
  if [ -n "${SWITCH_MTF_TENSORFLOW:-}" ]; then
    echo "$SWITCH_MTF_TENSORFLOW"
  elif [ -n "$built" ]; then
    echo "$built"
  elif [ "$(uname -sm)" = "Linux x86_64" ]; then
    echo cpu
  else
    echo pypi
  fi
}

# tensorflow-text (which t5 and seqio need) requires the distribution named
# `tensorflow`, which pip cannot satisfy with `tensorflow-cpu`.  For the CPU
# build we hand pip an empty wheel `tensorflow 2.15.1+cpu` that requires
# tensorflow-cpu 2.15.1: it satisfies `tensorflow==2.15.1` (a local version)
# and pip prefers it to PyPI's 2.15.1, so the CUDA build is never fetched.
cpu_tensorflow_placeholder() {
  "$VENV/bin/python" - "$1" <<'PY'
import base64, hashlib, os, sys, zipfile
info = "tensorflow-2.15.1+cpu.dist-info/"
files = {
    info + "METADATA": "Metadata-Version: 2.1\nName: tensorflow\n"
    "Version: 2.15.1+cpu\nSummary: switch_mtf's placeholder: TensorFlow is "
    "tensorflow-cpu\nRequires-Dist: tensorflow-cpu==2.15.1\n",
    info + "WHEEL": "Wheel-Version: 1.0\nGenerator: switch_mtf\n"
    "Root-Is-Purelib: true\nTag: py3-none-any\n",
}
def digest(text):
  data = text.encode()
  return "sha256=%s,%d" % (base64.urlsafe_b64encode(
      hashlib.sha256(data).digest()).rstrip(b"=").decode(), len(data))
files[info + "RECORD"] = "".join(
    "%s,%s\n" % (name, digest(text)) for name, text in files.items()
) + info + "RECORD,,\n"
os.makedirs(sys.argv[1], exist_ok=True)
path = os.path.join(sys.argv[1], "tensorflow-2.15.1+cpu-py3-none-any.whl")
with zipfile.ZipFile(path, "w") as wheel:
  for name, text in files.items():
    wheel.writestr(name, text)
PY
}

ensure_env() {
  local stamp want extras build built links
  build="$(tensorflow_build)"
  case "$build" in
    cpu|pypi) extras="test" ;;
    gpu) extras="test,gpu" ;;
    *) echo "SWITCH_MTF_TENSORFLOW=$build is not a TensorFlow build: use cpu (tensorflow-cpu), gpu (the CUDA build) or pypi (PyPI's tensorflow wheel)" >&2; exit 2 ;;
  esac
  want="$( (cat "$ROOT/setup.py" "$ROOT/constraints.txt" "$ROOT/bin/ensure-env.sh"; echo "$build") | sha256sum | cut -c1-16)"
  stamp="$VENV/.switch_mtf_installed"
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    local py
    if ! py="$(find_python)"; then
      echo "switch_mtf needs Python 3.10 or 3.11 (TensorFlow 2.15.1 has no wheels for newer Pythons): install python3.11, or set PYTHON=/path/to/python3.11." >&2
      exit 1
    fi
    echo "switch_mtf: creating $VENV with $py (first run only)" >&2
    "$py" -m venv "$VENV" || exit 1
  fi
  echo "switch_mtf: installing the pinned stack ($build TensorFlow) into $VENV (a few minutes, first run only)" >&2
  # Another build than the one installed: remove it first (pip would keep
  # it, as it satisfies tensorflow==2.15.1 too).
  built="$(cat "$VENV/.switch_mtf_tensorflow" 2>/dev/null || true)"
  if [ "$built" != "$build" ]; then
    "$VENV/bin/python" -m pip uninstall -q -y tensorflow tensorflow-cpu >/dev/null 2>&1 || true
  fi
  links="$VENV/.switch_mtf_wheels"
  rm -rf "$links"
  local find_links=()
  if [ "$build" = cpu ]; then
    cpu_tensorflow_placeholder "$links" || exit 1
    find_links=(--find-links "$links")
  fi
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
      ${find_links[@]+"${find_links[@]}"} \
      -c "$ROOT/constraints.txt" -e "$ROOT[$extras]" || {
    echo "switch_mtf: installing the pinned stack failed (see the pip output above)" >&2
    exit 1
  }
  echo "$build" > "$VENV/.switch_mtf_tensorflow"
  # One TFDS package: seqio-nightly requires tfds-nightly (a 2023 build) and
  # t5's mesh-tensorflow[transformer] requires tensorflow-datasets; both
  # install the module tensorflow_datasets, the second's files over the
  # first's (a mix).  Remove tfds-nightly (its uninstall also deletes shared
  # files), then put the pinned tensorflow-datasets back whole.  pip check
  # will name seqio-nightly's unmet tfds-nightly requirement: expected.
  if "$VENV/bin/python" -m pip show -q tfds-nightly >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip uninstall -q -y tfds-nightly &&
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        --no-deps --force-reinstall -c "$ROOT/constraints.txt" \
        tensorflow-datasets || {
      echo "switch_mtf: replacing tfds-nightly by tensorflow-datasets failed" >&2
      exit 1
    }
  fi
  # The compatibility hook for every program of the environment, T5's
  # t5_mesh_transformer included (see setup.py: a wheel carries this file;
  # an editable install does not).
  site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  "$VENV/bin/python" - "$ROOT/setup.py" "$site" <<'PY'
import ast, sys
setup, site = sys.argv[1:]
values = {}
for node in ast.parse(open(setup).read()).body:
  if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) in ("PTH_NAME", "PTH_LINE"):
    values[node.targets[0].id] = ast.literal_eval(node.value)
with open("%s/%s" % (site, values["PTH_NAME"]), "w") as f:
  f.write(values["PTH_LINE"])
PY
  echo "$want" > "$stamp"
}

ensure_env
