"""Bad input and damage, through the command line (issue 15): each case is
one line naming the problem, a non-zero exit, no traceback, and the last
good checkpoint untouched (sha256 before and after)."""
import glob
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

import helpers

MODEL = ["--gin_file=models/small/switch_8", "--gin_file=layouts/cpu_1",
         "--gin_param=utils.run.sequence_length = "
         "{'inputs': 64, 'targets': 16}"]
TRAIN = ["train", *MODEL, "--log_every=1", "--router_every=0",
         "--save_checkpoints_steps=2"]


def _digest(model_dir, step):
  h = hashlib.sha256()
  for path in sorted(glob.glob(os.path.join(model_dir,
                                            "model.ckpt-%d.*" % step))):
    with open(path, "rb") as f:
      h.update(f.read())
  return h.hexdigest()


def _one_line(result, status, *fragments):
  assert result.returncode == status, (result.returncode,
                                       result.stderr[-3000:])
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("switch-mtf: error:"), last
  for fragment in fragments:
    assert fragment in last, last
  return last


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """4 steps (checkpoints 0, 2, 4) and the losses of 12 uninterrupted
  steps."""
  root = tmp_path_factory.mktemp("robust")
  reference = helpers.cli(*TRAIN, "--model_dir", str(root / "reference"),
                          "--steps", "12")
  assert reference.returncode == 0, reference.stderr[-3000:]
  model_dir = str(root / "model")
  result = helpers.cli(*TRAIN, "--model_dir", model_dir, "--steps", "4")
  assert result.returncode == 0, result.stderr[-3000:]
  return model_dir, helpers.losses(reference.stdout)


def _copy(trained, tmp_path, name="copy"):
  target = str(tmp_path / name)
  shutil.copytree(trained[0], target)
  return target


@pytest.mark.parametrize("flag,value", [
    ("--steps", "-1"), ("--batch_size", "0"),
    ("--save_checkpoints_steps", "0"), ("--keep_checkpoint_max", "0")])
def test_bad_numbers_are_refused_before_anything_runs(tmp_path, flag, value):
  args = [a for a in TRAIN if not a.startswith(flag + "=")]
  result = helpers.cli(*args, "--model_dir", str(tmp_path / "m"),
                       "--steps", "2", flag, value)
  assert result.returncode == 2
  assert "%s: %s: must be at least" % (flag, value) in result.stderr
  assert not os.path.exists(tmp_path / "m")


def test_model_dir_that_is_a_file_or_cannot_be_made(tmp_path):
  path = tmp_path / "file"
  path.write_text("not a directory")
  _one_line(helpers.cli(*TRAIN, "--model_dir", str(path), "--steps", "2"), 2,
            "is a file, not a directory")
  _one_line(helpers.cli(*TRAIN, "--model_dir", str(path / "below"),
                        "--steps", "2"), 2, "cannot create --model_dir")


def test_damaged_newest_checkpoint_is_skipped_and_kept(trained, tmp_path):
  """Truncated data of the newest checkpoint, and leftovers of a killed
  save: training resumes from the newest intact checkpoint with the
  uninterrupted losses, the damaged files stay, the leftovers go."""
  model_dir = _copy(trained, tmp_path)
  data = glob.glob(os.path.join(model_dir, "model.ckpt-4.data-*"))
  big = max(data, key=os.path.getsize)
  with open(big, "r+b") as f:
    f.truncate(os.path.getsize(big) // 2)
  os.makedirs(os.path.join(model_dir, "model.ckpt-6_temp"))
  open(os.path.join(model_dir, "graph.pbtxt.tmp1234"), "w").close()
  before = _digest(model_dir, 2)
  evaluated = helpers.cli("eval", *MODEL, "--model_dir", model_dir)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert "using model.ckpt-2: the newer checkpoint is damaged" in (
      evaluated.stdout)
  assert re.search(r"^step 2: validation neg_log_perplexity", evaluated.stdout,
                   re.M), evaluated.stdout
  resumed = helpers.cli(*TRAIN, "--model_dir", model_dir, "--steps", "6")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming from the checkpoint at step 2" in resumed.stdout
  losses = helpers.losses(resumed.stdout)
  assert sorted(losses) == [3, 4, 5, 6]
  assert all(losses[s] == trained[1][s] for s in losses), (losses, trained[1])
  assert not os.path.exists(os.path.join(model_dir, "model.ckpt-6_temp"))
  assert not os.path.exists(os.path.join(model_dir, "graph.pbtxt.tmp1234"))
  assert _digest(model_dir, 2) == before


def test_checkpoint_file_naming_a_missing_step(trained, tmp_path):
  model_dir = _copy(trained, tmp_path)
  with open(os.path.join(model_dir, "checkpoint"), "w") as f:
    f.write('model_checkpoint_path: "model.ckpt-9"\n')
  result = helpers.cli("eval", *MODEL, "--model_dir", model_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "using model.ckpt-4" in result.stdout
  assert "names model.ckpt-9, which is not there" in result.stdout


def test_no_intact_checkpoint_is_one_line(trained, tmp_path):
  model_dir = _copy(trained, tmp_path)
  for path in glob.glob(os.path.join(model_dir, "model.ckpt-*.index")):
    os.remove(path)
  _one_line(helpers.cli("eval", *MODEL, "--model_dir", model_dir), 2,
            "no intact checkpoint in --model_dir")


def test_eval_checks_the_users_model_and_the_split(trained):
  model_dir = trained[0]
  before = _digest(model_dir, 4)
  _one_line(helpers.cli("eval", *MODEL, "--gin_param=SwitchFFN.num_experts "
                        "= 16", "--model_dir", model_dir), 2,
            "written by a different model", "[128, 8] in the checkpoint, "
            "[128, 16] in this model")
  _one_line(helpers.cli("eval", *MODEL, "--split=test", "--model_dir",
                        model_dir), 2, "has no 'test' split")
  assert _digest(model_dir, 4) == before


def test_predict_writes_text_and_refuses_an_empty_file(trained, tmp_path):
  model_dir = trained[0]
  empty = tmp_path / "empty.txt"
  empty.write_text("")
  _one_line(helpers.cli("predict", *MODEL, "--model_dir", model_dir,
                        "--input_file", str(empty), "--output_file",
                        str(tmp_path / "out.txt")), 2, "is empty")
  inputs = tmp_path / "in.txt"
  inputs.write_text("Gazios Gidaen was a merchant born in\nThe city of é\n")
  out = tmp_path / "out.txt"
  result = helpers.cli("predict", *MODEL, "--model_dir", model_dir,
                       "--input_file", str(inputs), "--output_file", str(out))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "wrote 2 decoded lines (checkpoint of step 4) to %s" % out in (
      result.stdout)
  assert os.listdir(tmp_path) and not glob.glob(str(out) + "-*")
  lines = out.read_text(encoding="utf-8").split("\n")
  assert len(lines) == 3 and lines[2] == ""
  assert not any(line.startswith(("b'", 'b"')) for line in lines)


def test_unreadable_vocabulary_and_all_bad_corpus(tmp_path):
  bad_model = tmp_path / "random.model"
  bad_model.write_bytes(os.urandom(2000))
  _one_line(helpers.cli(*TRAIN, "--model_dir", str(tmp_path / "a"),
                        "--steps", "2", "--vocabulary", str(bad_model)), 2,
            "is not a SentencePiece model")
  corpus = tmp_path / "bad.json"
  corpus.write_bytes(b"\xff\xfe not utf-8\n{\"no_text\": 1}\nnot json\n")
  files = "{'train': '%s', 'validation': '%s'}" % (corpus, corpus)
  result = helpers.cli(*TRAIN, "--model_dir", str(tmp_path / "b"), "--steps",
                       "2", "--task=local_span_corruption",
                       "--gin_param=local_data.pretraining = " + files)
  last = _one_line(result, 2, "has no examples: every record was "
                   "unreadable")
  for reason in ("1 bytes that are not UTF-8", "1 a line that is not JSON",
                 "1 a JSON line without 'text'"):
    assert reason in last, last


def _background(args, **kwargs):
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  return subprocess.Popen([*helpers.CLI, *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env,
                          **kwargs)


def _wait_for_step(model_dir, step, process, limit=300):
  deadline = time.time() + limit
  path = os.path.join(model_dir, "model.ckpt-%d.index" % step)
  while time.time() < deadline and process.poll() is None:
    if os.path.exists(path):
      return
    time.sleep(0.1)
  raise AssertionError("no checkpoint of step %d in time" % step)


def test_one_trainer_per_model_dir_and_stale_locks(tmp_path):
  model_dir = str(tmp_path / "m")
  first = _background([*TRAIN, "--model_dir", model_dir, "--steps", "1000"])
  try:
    _wait_for_step(model_dir, 2, first)
    second = helpers.cli(*TRAIN, "--model_dir", model_dir, "--steps", "4")
    _one_line(second, 2, "is in use by process %d" % first.pid)
  finally:
    first.send_signal(signal.SIGKILL)
    first.communicate()
  # The kernel dropped the killed process's lock: the next run proceeds.
  third = helpers.cli(*TRAIN, "--model_dir", model_dir, "--steps", "4")
  assert third.returncode == 0, third.stderr[-3000:]


def test_sigterm_stops_at_a_step_saves_and_resumes_exactly(trained, tmp_path):
  reference = trained[1]
  model_dir = str(tmp_path / "m")
  process = _background([*TRAIN, "--model_dir", model_dir,
                         "--save_checkpoints_steps=1000", "--steps", "1000"])
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    if os.path.exists(os.path.join(model_dir, "model.ckpt-0.index")):
      break
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  out, err = process.communicate()
  assert process.returncode == 143, err[-3000:]
  assert "Traceback" not in err
  last = err.strip().splitlines()[-1]
  match = re.search(r"SIGTERM: stopped at step (\d+) and saved its "
                    r"checkpoint; run the same command again", last)
  assert match, last
  stopped = int(match.group(1))
  assert stopped < 10    # the signal came right after the first checkpoint
  assert os.path.exists(os.path.join(model_dir,
                                     "model.ckpt-%d.index" % stopped))
  assert all(v == reference[s] for s, v in helpers.losses(out).items())
  resumed = helpers.cli(*TRAIN, "--model_dir", model_dir, "--steps",
                        str(stopped + 2))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  losses = helpers.losses(resumed.stdout)
  assert sorted(losses) == [stopped + 1, stopped + 2]
  assert all(losses[s] == reference[s] for s in losses)


@pytest.mark.skipif(shutil.which("unshare") is None
                    or subprocess.run(["unshare", "-rm", "true"],
                                      check=False).returncode != 0,
                    reason="needs unshare (a private tmpfs)")
def test_full_disk_stops_with_one_line_and_resumes(trained, tmp_path):
  """On a small tmpfs (in a private mount namespace) the disk is filled
  while training: one line naming the directory, exit 1, the last good
  checkpoint intact; after space is freed the same command resumes with
  the uninterrupted losses."""
  reference = trained[1]
  mount = tmp_path / "disk"
  mount.mkdir()
  model_dir = mount / "m"
  command = " ".join(shlex.quote(a) for a in [*helpers.CLI, *TRAIN,
                                              "--model_dir", str(model_dir)])
  script = f"""
set -u
mount -t tmpfs -o size=400m tmpfs {mount}
cd {os.getcwd()}
{command} --steps 1000 > {tmp_path}/first.out 2> {tmp_path}/first.err &
pid=$!
while [ ! -e {model_dir}/model.ckpt-2.index ] && kill -0 $pid 2>/dev/null; do
  sleep 0.1
done
# The run is paused while the disk fills (its saves are fast enough to
# write several more checkpoints during dd), so that its next save fails.
kill -STOP $pid
dd if=/dev/zero of={mount}/filler bs=1M > /dev/null 2>&1
kill -CONT $pid
wait $pid
echo "first exit $?"
# The checkpoint's index and data (a file cut short by the full disk is
# a leftover that the next run removes).
sha256sum {model_dir}/model.ckpt-2.index {model_dir}/model.ckpt-2.data-* \
    > {tmp_path}/before.sha
rm {mount}/filler
{command} --steps 6 > {tmp_path}/second.out 2> {tmp_path}/second.err
echo "second exit $?"
sha256sum --quiet -c {tmp_path}/before.sha && echo "checkpoint 2 intact"
ls -a {model_dir} > {tmp_path}/files
"""
  result = subprocess.run(["unshare", "-rm", "sh", "-c", script],
                          capture_output=True, text=True, check=False,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                              sys.path)))
  assert "first exit 1" in result.stdout, (result.stdout, result.stderr,
                                           (tmp_path / "first.err")
                                           .read_text()[-3000:])
  err = (tmp_path / "first.err").read_text()
  assert "Traceback" not in err
  last = err.strip().splitlines()[-1]
  assert last.startswith("switch-mtf: error: no space left on the device"), (
      last)
  assert "second exit 0" in result.stdout, (tmp_path / "second.err"
                                            ).read_text()[-3000:]
  assert "checkpoint 2 intact" in result.stdout
  losses = helpers.losses((tmp_path / "second.out").read_text())
  assert losses and all(losses[s] == reference[s] for s in losses)
  assert not [f for f in (tmp_path / "files").read_text().split()
              if "_temp" in f or ".tmp" in f]
