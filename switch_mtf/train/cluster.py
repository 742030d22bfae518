"""Several machines without TPUs: Mesh TF over TensorFlow's gRPC runtime.

One client builds the whole graph and a placement mesh puts each slice on a
device of a ``tf.distribute.Server`` task (``/job:worker/replica:0/task:K``):
TensorFlow's in-graph replication.  The client is the chief: its own server
is task 0, so the input pipeline, the master variables and the checkpoints
live in its process and its model_dir; the workers (tasks 1..N-1) compute.
TensorFlow's runtime moves the tensors; there is no transport of ours.

TensorFlow's gRPC servers have no authentication: private networks only.

What TensorFlow leaves to us, done here:
- a worker unreachable at the start, or one that stops answering during a
  run, makes the client exit with one line within ``timeout_s`` (TensorFlow
  would wait forever, or treat it as a preemption and go on with an input
  pipeline that no longer matches the restored step);
- a worker started with another cluster or task is refused before anything
  is written: each worker keeps its ``--cluster``/``--task`` in a variable
  on its own device, which the chief reads.
"""
import errno
import socket
import threading
import time

from switch_mtf import errors
from switch_mtf.errors import ConfigError

JOB = "worker"
DEFAULT_TIMEOUT_S = 30.0
_IDENTITY = "switch_mtf_cluster_identity"
# Mesh shape sizes a layout may name instead of numbers (layouts/multihost_*).
_SIZES = ("cluster_devices", "cluster_hosts", "devices_per_host")


def parse(text):
  """The ``--cluster`` list as a tuple of HOST:PORT strings."""
  entries = [e.strip() for e in (text or "").split(",")]
  example = "e.g. --cluster=10.0.0.1:2222,10.0.0.2:2222"
  for entry in entries:
    host, sep, port = entry.rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
      raise ConfigError("--cluster entry %r is not HOST:PORT with a port "
                        "1-65535: %s" % (entry, example))
  if len(entries) < 2:
    raise ConfigError("--cluster=%s names one task: list this client (task "
                      "0) and at least one worker, %s" % (text, example))
  if len(set(entries)) != len(entries):
    raise ConfigError("--cluster=%s names an address twice: give each task "
                      "its own HOST:PORT" % text)
  return tuple(entries)


def check_worker_task(addresses, task):
  if not 1 <= task < len(addresses):
    raise ConfigError(
        "--task=%d is out of range: --cluster lists tasks 0-%d and task 0 is "
        "the client's (switch-mtf train/eval --cluster=...), so start workers "
        "as --task=1 to --task=%d" % (task, len(addresses) - 1,
                                      len(addresses) - 1))


def _host_port(address):
  host, _, port = address.rpartition(":")
  return host.strip("[]"), int(port)


def check_port_free(address):
  """One line if this machine cannot listen on ``address``'s port (gRPC
  would share a port it reuses, or fail later with a vague message)."""
  _, port = _host_port(address)
  probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    probe.bind(("", port))
  except OSError as e:
    raise ConfigError(
        "port %d (%s in --cluster) is %s on this machine: stop what uses it "
        "or give this task another port in --cluster, on every host" % (
            port, address, "in use" if e.errno == errno.EADDRINUSE
            else "not available (%s)" % e.strerror)) from None
  finally:
    probe.close()


def reachable(address, timeout_s=2.0):
  try:
    with socket.create_connection(_host_port(address), timeout=timeout_s):
      return True
  except OSError:
    return False


def device_names(addresses, gpus_per_host=0):
  """The mesh devices of a cluster, task-major: every GPU of each host, or
  one CPU device per host when ``gpus_per_host`` is 0."""
  per_host = (["device:GPU:%d" % i for i in range(gpus_per_host)]
              if gpus_per_host else ["device:CPU:0"])
  return ["/job:%s/replica:0/task:%d/%s" % (JOB, task, device)
          for task in range(len(addresses)) for device in per_host]


def expand_layout(addresses, gpus_per_host=0):
  """Rebinds a cluster layout (``utils.run.mesh_devices = "cluster"``) to
  this cluster's devices, its sizes (``cluster_devices``, ``cluster_hosts``,
  ``devices_per_host``) to numbers; one line for a layout that cannot run
  on the cluster.  The operative config then records the real mesh."""
  import gin  # pylint: disable=g-import-not-at-top
  from switch_mtf import config  # pylint: disable=g-import-not-at-top
  devices = config.query("utils.run.mesh_devices")
  shape = config.query("utils.run.mesh_shape", "")
  if devices != "cluster":
    raise ConfigError(
        "--cluster needs a layout that spreads over the cluster "
        "(utils.run.mesh_devices = \"cluster\"), e.g. "
        "--gin_file=layouts/multihost_ep; this one lists %s" % (devices,))
  names = device_names(addresses, gpus_per_host)
  sizes = {"cluster_devices": len(names), "cluster_hosts": len(addresses),
           "devices_per_host": len(names) // len(addresses)}
  dims = []
  for dim in shape.split(","):
    name, _, size = dim.partition(":")
    dims.append("%s:%s" % (name.strip(), sizes.get(size.strip(),
                                                   size.strip())))
  shape = ",".join(dims)
  try:
    total = 1
    for dim in dims:
      total *= int(dim.split(":")[1])
  except ValueError:
    raise ConfigError("utils.run.mesh_shape %r: each size must be a number "
                      "or one of %s" % (shape, ", ".join(_SIZES))) from None
  if total > len(names):
    raise ConfigError(
        "utils.run.mesh_shape %r needs %d devices but the cluster has %d "
        "(%d hosts x %d %s): add workers to --cluster, set "
        "--gpus_per_host, or size the mesh with cluster_devices" % (
            shape, total, len(names), len(addresses), sizes[
                "devices_per_host"], "GPUs" if gpus_per_host else "CPU"))
  with gin.unlock_config():
    gin.bind_parameter("utils.run.mesh_shape", shape)
    gin.bind_parameter("utils.run.mesh_devices", names[:total])
  return names[:total]


def _identity(addresses, task):
  return "%s task=%d" % (",".join(addresses), task)


def _identity_variable(task, initial=""):
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  with tf.device("/job:%s/replica:0/task:%d/device:CPU:0" % (JOB, task)):
    # A reference variable lives in the worker's resource manager across
    # sessions, where the chief's session can read it.
    return tf.Variable(initial, name=_IDENTITY, use_resource=False,
                       trainable=False, collections=[])


def start_server(addresses, task):
  """This process's server, as task ``task`` of the cluster."""
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  check_port_free(addresses[task])
  spec = tf.train.ClusterSpec({JOB: list(addresses)})
  return tf.distribute.Server(spec, job_name=JOB, task_index=task,
                              start=True)


def serve(addresses, task, lifetime_s=None, out=print):
  """The worker: serves as task ``task`` until stopped (SIGINT/SIGTERM) or
  for ``lifetime_s`` seconds."""
  import signal  # pylint: disable=g-import-not-at-top
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  check_worker_task(addresses, task)
  server = start_server(addresses, task)
  graph = tf.Graph()
  with graph.as_default():
    identity = _identity_variable(task, _identity(addresses, task))
    # Only its own device: a session of this server would otherwise wait
    # for every other task of the cluster to be up.
    own = tf.ConfigProto(device_filters=["/job:%s/task:%d" % (JOB, task)])
    with tf.Session(server.target, graph=graph, config=own) as session:
      session.run(identity.initializer)
  stop = threading.Event()
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, lambda *_: stop.set())
  out("worker task %d of %d serving at %s%s" % (
      task, len(addresses), addresses[task],
      "" if lifetime_s is None else " for %g s" % lifetime_s))
  stop.wait(lifetime_s)


def _check_devices(target, devices):
  """One line for a mesh device no task has (e.g. --gpus_per_host larger
  than a host's GPUs)."""
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  with tf.Session(target, graph=tf.Graph()) as session:
    found = {tf.DeviceSpec.from_string(d.name).to_string()
             for d in session.list_devices()}
  for device in devices:
    if tf.DeviceSpec.from_string(device).to_string() not in found:
      task = device.split("/task:")[1].split("/")[0]
      have = sorted(d.rsplit("/", 1)[1] for d in found
                    if "/task:%s/" % task in d)
      raise ConfigError(
          "the mesh needs %s, which task %s does not have (it has %s): lower "
          "--gpus_per_host or the mesh size" % (device, task, ", ".join(have)))


def _unreachable(addresses, task, seconds):
  return ConfigError(
      "worker task %d at %s is unreachable after %g s: start it there with "
      "`switch-mtf worker --cluster=%s --task=%d` (or fix its address)" % (
          task, addresses[task], seconds, ",".join(addresses), task))


def _check_identity(addresses, target, task, deadline, timeout_s):
  """Reads the worker's --cluster/--task; one line if it differs."""
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  graph = tf.Graph()
  with graph.as_default():
    value = _identity_variable(task).value()
    # The worker pulls a tensor from task 0: it can reach the client too.
    with tf.device("/job:%s/replica:0/task:0/device:CPU:0" % JOB):
      sent = tf.constant(task)
    with tf.device("/job:%s/replica:0/task:%d/device:CPU:0" % (JOB, task)):
      echoed = tf.identity(sent)
  own = "/job:%s/replica:0/task:" % JOB
  session_config = tf.ConfigProto(
      device_filters=[own + "0", own + str(task)],
      operation_timeout_in_ms=int(max(1.0, min(timeout_s, 10.0)) * 1000))
  refusal = "start it with --cluster=%s --task=%d" % (",".join(addresses),
                                                      task)
  with tf.Session(target, graph=graph, config=session_config) as session:
    while True:
      try:
        found = session.run(value).decode("utf-8", "replace")
        if session.run(echoed) != task:
          raise ConfigError("worker task %d at %s answered wrongly: %s" % (
              task, addresses[task], refusal))
        break
      except tf.errors.InvalidArgumentError:   # it has no such device
        raise ConfigError(
            "the server at %s was not started as task %d of this cluster: "
            "%s" % (addresses[task], task, refusal)) from None
      except (tf.errors.FailedPreconditionError,   # not yet published
              tf.errors.DeadlineExceededError, tf.errors.UnavailableError):
        if time.time() > deadline:
          raise ConfigError(
              "the server at %s (task %d) is not a switch-mtf worker or does "
              "not answer (every task must reach every other, task 0 at %s "
              "included): %s" % (addresses[task], task, addresses[0],
                                 refusal)) from None
        time.sleep(0.5)
  if found != _identity(addresses, task):
    raise ConfigError(
        "worker task %d at %s was started with --cluster=%s --task=%s, not "
        "this cluster: %s" % (task, addresses[task],
                              found.split(" task=")[0],
                              found.rsplit("=", 1)[-1], refusal))


class Watchdog(threading.Thread):
  """Exits the process with one line when a worker stops accepting
  connections for ``timeout_s`` (a run waiting on it would hang)."""

  def __init__(self, addresses, timeout_s, interval_s=1.0):
    super().__init__(name="switch_mtf_cluster_watchdog", daemon=True)
    self._addresses = addresses
    self._timeout_s = timeout_s
    self._interval_s = min(interval_s, timeout_s / 3.0)

  def run(self):
    last_seen = {task: time.time() for task in range(1, len(self._addresses))}
    while True:
      for task in last_seen:
        now = time.time()
        if reachable(self._addresses[task], min(2.0, self._timeout_s / 3.0)):
          last_seen[task] = now
        elif now - last_seen[task] > self._timeout_s:
          errors.exit_now(
              "worker task %d at %s stopped answering (no connection for %g "
              "s): restart it with `switch-mtf worker --cluster=%s --task=%d`, "
              "then run this command again; it resumes from the last good "
              "checkpoint" % (task, self._addresses[task], self._timeout_s,
                              ",".join(self._addresses), task), 1)
      time.sleep(self._interval_s)


class Chief(object):
  """This client as task 0: its server, the checked workers, the watchdog.

  ``target`` is the session master for the Estimator and the scorer.
  """

  def __init__(self, addresses, devices, timeout_s=DEFAULT_TIMEOUT_S):
    if not timeout_s >= 1:
      raise ConfigError("--worker_timeout_s=%g: must be at least 1 (seconds)"
                        % timeout_s)
    self.addresses = addresses
    self.timeout_s = timeout_s
    self.server = start_server(addresses, 0)
    self.target = self.server.target
    deadline = time.time() + timeout_s
    for task in range(1, len(addresses)):
      while not reachable(addresses[task]):
        if time.time() > deadline:
          raise _unreachable(addresses, task, timeout_s)
        time.sleep(0.2)
      _check_identity(addresses, self.target, task, deadline, timeout_s)
    _check_devices(self.target, devices)
    Watchdog(addresses, timeout_s).start()


def join(args, out=print):
  """For ``--cluster`` runs (train, eval, finetune...): the layout bound to
  the cluster's devices, this process started as task 0 and the workers
  checked (once per process: ``args.chief``); returns the Chief (None
  without ``--cluster``)."""
  if not getattr(args, "cluster", None):
    if getattr(args, "spread_variables", False) or getattr(
        args, "gpus_per_host", 0):
      raise ConfigError("--spread_variables and --gpus_per_host are for "
                        "--cluster runs: add --cluster=HOST:PORT,...")
    return None
  addresses = parse(args.cluster)
  if getattr(args, "tpu", None):
    raise ConfigError("--cluster and --tpu=%s: TPU pods run on TPUEstimator "
                      "with their own workers; drop --cluster" % args.tpu)
  if args.gpus_per_host < 0:
    raise ConfigError("--gpus_per_host=%d: must be 0 (CPU) or more" %
                      args.gpus_per_host)
  devices = expand_layout(addresses, args.gpus_per_host)
  if getattr(args, "chief", None):   # train_and_eval: its second command
    return args.chief
  chief = Chief(addresses, devices, args.worker_timeout_s)
  if args.spread_variables:
    from switch_mtf import compat  # pylint: disable=g-import-not-at-top
    compat.spread_master_variables(device_names(addresses))
  available = len(device_names(addresses, args.gpus_per_host))
  out("cluster of %d tasks ready (this client is task 0 at %s); mesh on %d "
      "devices%s; master variables %s" % (
          len(addresses), addresses[0], len(devices),
          "" if len(devices) == available
          else " (%d of the cluster's devices unused)" % (
              available - len(devices)),
          "spread over every host" if args.spread_variables
          else "on task 0"))
  return chief


def add_flags(parser):
  """--cluster, --gpus_per_host, --worker_timeout_s on a run command."""
  parser.add_argument(
      "--cluster", default=None,
      help="HOST:PORT,HOST:PORT,...: run on TensorFlow gRPC workers; the "
      "first entry is this client (task 0), the others `switch-mtf worker` "
      "processes; needs a cluster layout (layouts/multihost_ep)")
  parser.add_argument("--gpus_per_host", type=int, default=0,
                      help="with --cluster: GPUs per host in the mesh (0: "
                      "one CPU device per host)")
  parser.add_argument(
      "--spread_variables", action="store_true",
      help="with --cluster: spread the master variables over the hosts' "
      "memory (for models larger than one host); every host then writes its "
      "part of each checkpoint, so --model_dir must be a filesystem all "
      "hosts share at the same path")
  parser.add_argument("--worker_timeout_s", type=float,
                      default=DEFAULT_TIMEOUT_S,
                      help="with --cluster: exit when a worker is "
                      "unreachable this long")


def add_worker_command(commands):
  worker = commands.add_parser(
      "worker", help="serve as a TensorFlow gRPC worker of a --cluster run "
      "(private networks only: no authentication)")
  worker.add_argument("--cluster", required=True,
                      help="the same HOST:PORT list as the client's")
  worker.add_argument("--task", type=int, required=True,
                      help="this worker's position in --cluster (1, 2, ...)")
  worker.add_argument("--lifetime_s", type=float, default=None,
                      help="stop after this many seconds (default: serve "
                      "until stopped)")
  worker.set_defaults(func=lambda args: serve(
      parse(args.cluster), args.task, args.lifetime_s))
