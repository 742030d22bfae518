"""session_config.for_cpu: five grappler passes off on TensorFlow's CPU
build, everything else of the given options kept; used by training's
Estimator and the evaluation scorer.  session_config.unoptimized: grappler
off, for the emptiness check's session."""
import tensorflow.compat.v1 as tf
from tensorflow.core.protobuf import rewriter_config_pb2

from switch_mtf import config
from switch_mtf.train import run
from switch_mtf.train import session_config
from switch_mtf.train import training
from switch_mtf.tasks import embedded

Rewriter = rewriter_config_pb2.RewriterConfig


def _passes(proto):
  rewrite = proto.graph_options.rewrite_options
  return (rewrite.layout_optimizer, rewrite.remapping,
          rewrite.memory_optimization, rewrite.function_optimization,
          rewrite.disable_tfg_optimizer)


def test_passes_off_and_the_rest_kept(monkeypatch):
  monkeypatch.setattr(tf.test, "is_built_with_cuda", lambda: False)
  given = tf.ConfigProto(isolate_session_state=True,
                         allow_soft_placement=True)
  given.graph_options.rewrite_options.meta_optimizer_iterations = Rewriter.ONE
  out = session_config.for_cpu(given)
  assert _passes(out) == (Rewriter.OFF, Rewriter.OFF, Rewriter.NO_MEM_OPT,
                          Rewriter.OFF, True)
  assert out.isolate_session_state and out.allow_soft_placement
  assert out.graph_options.rewrite_options.meta_optimizer_iterations == (
      Rewriter.ONE)
  assert _passes(given) == (Rewriter.DEFAULT, Rewriter.DEFAULT,
                            Rewriter.DEFAULT_MEM_OPT, Rewriter.DEFAULT,
                            False)   # not changed
  assert _passes(session_config.for_cpu()) == _passes(out)


def test_cuda_build_keeps_the_defaults(monkeypatch):
  monkeypatch.setattr(tf.test, "is_built_with_cuda", lambda: True)
  given = tf.ConfigProto(isolate_session_state=True)
  assert session_config.for_cpu(given) is given
  assert session_config.for_cpu() is None


def test_training_estimator_uses_them(monkeypatch, tmp_path):
  monkeypatch.setattr(tf.test, "is_built_with_cuda", lambda: False)
  task = embedded.register()
  config.parse(["models/small/dense", "layouts/cpu_1"], [])
  model = run.make_model(str(tmp_path), 8, {"inputs": 64, "targets": 16})
  estimator = training.training_estimator(model, task.name, seed=3)
  proto = estimator._session_config  # pylint: disable=protected-access
  assert _passes(proto) == _passes(session_config.for_cpu())
  assert proto.allow_soft_placement   # the Estimator's default kept
  assert estimator.config.tf_random_seed == 3


def test_emptiness_check_runs_without_grappler(monkeypatch):
  """The check's session has grappler off, and still tells a dataset with
  an element from an empty one."""
  configs = []
  session = tf.Session

  def recording(*args, **kwargs):
    configs.append(kwargs.get("config"))
    return session(*args, **kwargs)
  monkeypatch.setattr(tf, "Session", recording)
  with tf.Graph().as_default():
    assert run._has_element(tf.data.Dataset.range(3))  # pylint: disable=protected-access
    assert not run._has_element(  # pylint: disable=protected-access
        tf.data.Dataset.range(3).filter(lambda x: x > 5))
  assert len(configs) == 2
  assert all(c.graph_options.rewrite_options.disable_meta_optimizer
             for c in configs)
