"""Several machines (the multi-host issue), on loopback: `switch-mtf worker`
processes on 127.0.0.1, this process or a `switch-mtf train --cluster` as
task 0.  Every worker is bounded in time (--lifetime_s) and killed by its
process id at the end."""
import dataclasses
import os
import re
import select
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

import helpers
from switch_mtf.train import cluster
from switch_mtf.moe import layers
from switch_mtf.moe import routing
from switch_mtf.errors import ConfigError

MODEL = ["--gin_file=models/small/switch_8",
         "--gin_param=utils.run.sequence_length = "
         "{'inputs': 64, 'targets': 16}", "--log_every=1",
         "--router_every=0"]


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


@pytest.fixture
def workers():
  """start(addresses, task, cluster_text=None) -> a worker process (its
  output read once it has published its identity); all killed at the end."""
  started = []

  def start(addresses, task, cluster_text=None):
    process = subprocess.Popen(
        [*helpers.CLI, "worker", "--cluster",
         cluster_text or ",".join(addresses), "--task", str(task),
         "--lifetime_s", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))
    started.append(process)
    ready, _, _ = select.select([process.stdout], [], [], 120)
    line = process.stdout.readline() if ready else "(nothing in 120 s)"
    assert line.startswith("worker task %d of " % task), line
    return process

  yield start
  for process in started:
    if process.poll() is None:
      process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def _cli(*args):
  """``switch-mtf ARGS``, bounded in time (killed after 10 minutes)."""
  return helpers.cli(*args, timeout=600)


def _addresses(count):
  return tuple("127.0.0.1:%d" % p for p in _free_ports(count))


def test_cluster_flag_and_task_checks():
  assert cluster.parse("10.0.0.1:2222, host-b:2223") == ("10.0.0.1:2222",
                                                         "host-b:2223")
  for text, message in (("10.0.0.1:2222,host-b", "'host-b' is not HOST:PORT"),
                        ("a:1,b:0", "'b:0' is not HOST:PORT"),
                        ("a:1,:5", "':5' is not HOST:PORT"),
                        ("a:1", "names one task"),
                        ("a:1,a:1", "names an address twice")):
    with pytest.raises(ConfigError, match=re.escape(message)):
      cluster.parse(text)
  with pytest.raises(ConfigError, match="--task=2 is out of range: --cluster "
                     "lists tasks 0-1"):
    cluster.check_worker_task(("a:1", "b:1"), 2)
  with pytest.raises(ConfigError, match="task 0 is the client's"):
    cluster.check_worker_task(("a:1", "b:1"), 0)
  assert cluster.device_names(("a:1", "b:1"), gpus_per_host=2) == [
      "/job:worker/replica:0/task:%d/device:GPU:%d" % (t, g)
      for t in (0, 1) for g in (0, 1)]


def test_worker_bad_input_is_one_line_and_exit_2():
  addresses = _addresses(2)
  busy = socket.socket()
  busy.bind(("127.0.0.1", int(addresses[1].split(":")[1])))
  busy.listen(1)
  try:
    for args, message in (
        (["--cluster", "127.0.0.1:x,127.0.0.1:1", "--task", "1"],
         "--cluster entry '127.0.0.1:x' is not HOST:PORT"),
        (["--cluster", ",".join(addresses), "--task", "2"],
         "--task=2 is out of range"),
        (["--cluster", ",".join(addresses), "--task", "1"],
         "port %s (%s in --cluster) is in use" % (
             addresses[1].split(":")[1], addresses[1]))):
      result = _cli("worker", *args, "--lifetime_s", "1")
      assert result.returncode == 2, result.stderr[-2000:]
      lines = [l for l in result.stderr.splitlines() if "error" in l]
      assert lines == ["switch-mtf: error: " + lines[0][19:]], result.stderr
      assert message in lines[0], lines
  finally:
    busy.close()


@pytest.mark.parametrize("dispatch", ["gather", "einsum"])
def test_switch_layer_on_two_workers_equals_one_process(dispatch, workers):
  """Experts split over task 0 (this process's server) and a worker: the
  same outputs and gradients as the same mesh on this process's CPU."""
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  addresses = _addresses(2)
  server = tf.distribute.Server(
      tf.train.ClusterSpec({"worker": list(addresses)}), job_name="worker",
      task_index=0, start=True)
  workers(addresses, 1)
  tokens = np.random.RandomState(3).randn(4, 12, 8).astype(np.float32)
  config = layers.SwitchConfig(num_experts=4, hidden_size=16, group_size=16,
                               capacity_factor_train=1.0,
                               min_expert_capacity=2, dispatch=dispatch)
  mesh = dict(mesh_shape="batch:2", layout="batch:batch,experts:batch")
  local = helpers.run_switch(tokens, config, routing.SwitchRouter(
      policy_train="argmax"), train=True, grads=True, **mesh)
  remote = helpers.run_switch(
      tokens, dataclasses.replace(config), routing.SwitchRouter(
          policy_train="argmax"), train=True, grads=True,
      weights=local["weights"], devices=cluster.device_names(addresses),
      target=server.target, **mesh)
  assert 0 < local["metric/fraction_dropped"] < 1
  keys = ["y", "loss"] + sorted(k for k in local if k.startswith("grad/"))
  for key in keys:
    np.testing.assert_array_equal(remote[key], local[key], err_msg=key)


def _train(model_dir, addresses, *extra):
  return [*helpers.CLI, "train", *MODEL, "--gin_file=layouts/multihost_ep",
          "--model_dir", model_dir, "--cluster", ",".join(addresses),
          "--save_checkpoints_steps", "2", *extra]


def _newest_step(model_dir):
  index = os.path.join(model_dir, "checkpoint")
  if not os.path.exists(index):
    return 0
  found = re.search(r'^model_checkpoint_path: "model.ckpt-(\d+)"',
                    open(index).read(), re.M)
  return int(found.group(1)) if found else 0


def test_killed_worker_is_one_line_then_resume_gives_one_process_losses(
    workers, tmp_path):
  """2 tasks (this run's client and one worker) train with the losses of
  layouts/cpu_ep_2 in one process; killing the worker ends the client
  within --worker_timeout_s with one line; restarting both (now with the
  master variables spread) finishes with the uninterrupted losses and
  checkpoint; it then evaluates on cpu_1 and on the cluster."""
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  addresses = _addresses(2)
  model_dir = str(tmp_path / "cluster")
  worker = workers(addresses, 1)
  client = subprocess.Popen(
      _train(model_dir, addresses, "--steps", "1000", "--worker_timeout_s",
             "5"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=dict(os.environ, PYTHONUNBUFFERED="1"))
  try:
    deadline = time.time() + 300
    while time.time() < deadline and client.poll() is None and (
        _newest_step(model_dir) < 4):
      time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    killed_at = time.time()
    output, error = client.communicate(timeout=60)
    waited = time.time() - killed_at
  finally:
    if client.poll() is None:
      client.send_signal(signal.SIGKILL)
      client.wait()
  assert client.returncode == 1, error[-3000:]
  assert waited < 5 + 10, waited
  last = error.strip().splitlines()[-1]
  assert last.startswith(
      "switch-mtf: error: worker task 1 at %s stopped answering" %
      addresses[1]), error[-3000:]
  assert "Traceback" not in error
  killed = helpers.losses(output)
  start = _newest_step(model_dir)
  assert start >= 4 and max(killed) >= start

  workers(addresses, 1)
  # Resumed with the master variables spread over both tasks: each writes
  # its shards of the checkpoints (one filesystem here).
  resumed = _cli(*_train(model_dir, addresses, "--steps",
                                str(start + 3), "--spread_variables")[3:])
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming from the checkpoint at step %d" % start in resumed.stdout
  shards = [f for f in os.listdir(model_dir)
            if f.startswith("model.ckpt-%d.data-" % (start + 3))]
  assert len(shards) > 2, shards

  reference_dir = str(tmp_path / "one_process")
  reference = _cli(
      "train", *MODEL, "--gin_file=layouts/cpu_ep_2", "--model_dir",
      reference_dir, "--steps", str(start + 3))
  assert reference.returncode == 0, reference.stderr[-3000:]
  expected = helpers.losses(reference.stdout)
  for step, loss in killed.items():
    assert loss == expected[step], (step, loss, expected[step])
  losses = helpers.losses(resumed.stdout)
  assert sorted(losses) == [start + 1, start + 2, start + 3]
  for step, loss in losses.items():
    assert loss == expected[step], (step, loss, expected[step])
  ours = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  theirs = tf.train.load_checkpoint(tf.train.latest_checkpoint(reference_dir))
  names = sorted(theirs.get_variable_to_shape_map())
  assert names == sorted(ours.get_variable_to_shape_map())
  for name in names:
    # Same printed losses, same checkpoint to float32 rounding: slices
    # computed in two processes round differently from one process's
    # (measured: at most 5e-7 after 6 steps; a cluster run repeated is
    # bit-identical).
    np.testing.assert_allclose(ours.get_tensor(name), theirs.get_tensor(name),
                               rtol=1e-5, atol=1e-6, err_msg=name)

  values = {}
  for layout, extra in (("cpu_1", []), ("multihost_ep", [
      "--cluster", ",".join(addresses)])):   # the worker still serves
    evaluated = _cli("eval", *MODEL[:2], "--gin_file=layouts/" + layout,
                            "--model_dir", model_dir, *extra)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    found = re.search(r"^step %d: validation neg_log_perplexity (-[0-9.]+)"
                      % (start + 3), evaluated.stdout, re.M)
    assert found, evaluated.stdout
    values[layout] = float(found.group(1))
  assert values["cpu_1"] == pytest.approx(values["multihost_ep"], abs=2e-4)


def _one_line_exit_2(result, model_dir, message):
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if "switch-mtf: error" in l]
  assert len(errors) == 1 and message in errors[0], result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert not os.path.exists(model_dir)


def test_a_worker_of_another_cluster_is_refused(workers, tmp_path):
  addresses = _addresses(3)
  workers(addresses, 1)   # started for 3 tasks
  model_dir = str(tmp_path / "never")
  result = _cli(*_train(model_dir, addresses[:2], "--steps", "2")[3:])
  _one_line_exit_2(result, model_dir, "worker task 1 at %s was started with "
                   "--cluster=%s --task=1, not this cluster" % (
                       addresses[1], ",".join(addresses)))
  # The right cluster, but hosts without the GPUs asked for.
  workers(addresses, 2)
  result = _cli(*_train(model_dir, addresses, "--steps", "2",
                        "--gpus_per_host=2")[3:])
  _one_line_exit_2(result, model_dir, "the mesh needs /job:worker/replica:0/"
                   "task:0/device:GPU:0, which task 0 does not have")


def test_unreachable_worker_and_impossible_layouts_are_one_line(tmp_path):
  addresses = _addresses(2)   # nothing serves the worker's port
  model_dir = str(tmp_path / "never")
  result = _cli(*_train(model_dir, addresses, "--steps", "2",
                               "--worker_timeout_s", "2")[3:])
  _one_line_exit_2(result, model_dir, "worker task 1 at %s is unreachable "
                   "after 2 s" % addresses[1])
  result = _cli(*_train(
      model_dir, addresses, "--steps", "2",
      "--gin_param=utils.run.mesh_shape = 'batch:4'")[3:])
  _one_line_exit_2(result, model_dir, "'batch:4' needs 4 devices but the "
                   "cluster has 2")
  result = _cli("train", *MODEL, "--gin_file=layouts/multihost_ep",
                       "--model_dir", model_dir, "--steps", "2")
  _one_line_exit_2(result, model_dir, "add --cluster=HOST:PORT")
  result = _cli("train", *MODEL, "--gin_file=layouts/cpu_ep_2",
                "--model_dir", model_dir, "--steps", "2", "--gpus_per_host=2")
  _one_line_exit_2(result, model_dir, "--gpus_per_host are for --cluster "
                   "runs")
  result = _cli(*_train(model_dir, addresses, "--steps", "2",
                               "--tpu", "my-tpu")[3:])
  _one_line_exit_2(result, model_dir, "--cluster and --tpu=my-tpu")


def test_a_lost_worker_is_one_line_whoever_notices(monkeypatch):
  """TensorFlow's error for a lost task (eval, score: a plain session) and
  a second training session (TensorFlow recovered a worker by itself) both
  end in one line."""
  from switch_mtf import errors  # pylint: disable=g-import-not-at-top
  from switch_mtf.train import training  # pylint: disable=g-import-not-at-top

  class UnavailableError(Exception):
    pass
  message, status = errors.user_error(UnavailableError(
      "Graph execution error:\n\nSocket closed\nAdditional GRPC error "
      "information from remote target /job:worker/replica:0/task:1"))
  assert status == 1 and message.startswith(
      "TensorFlow lost a task of the --cluster run (UnavailableError: "
      "Additional GRPC error information from remote target /job:worker/")
  assert errors.user_error(UnavailableError("no cluster here")) is None

  exits = []
  monkeypatch.setattr(errors, "exit_now", lambda *a: exits.append(a))
  hook = training.OneSessionHook()
  hook.after_create_session(None, None)
  assert not exits
  hook.after_create_session(None, None)
  assert len(exits) == 1 and exits[0][1] == 1
  assert "TensorFlow restarted the session" in exits[0][0]
