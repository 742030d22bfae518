"""TensorBoard's graph of a training run: serialized in a thread while the
first steps run (training._add_graph_once), in the events file once, and on
disk when training returns, even when that thread ends after the run's
last step (the end of training waits for it)."""
import glob
import time

import tensorflow.compat.v1 as tf

from switch_mtf import config
from switch_mtf.train import run
from switch_mtf.tasks import embedded

LENGTHS = {"inputs": 32, "targets": 8}


def test_graph_written_once_and_flushed_when_its_thread_ends_last(
    tmp_path, monkeypatch):
  tf.disable_eager_execution()
  add_graph = tf.summary.FileWriter.add_graph

  def slow_add_graph(self, *args, **kwargs):
    time.sleep(3)   # longer than the two steps below
    return add_graph(self, *args, **kwargs)
  monkeypatch.setattr(tf.summary.FileWriter, "add_graph", slow_add_graph)
  task = embedded.register()
  config.parse(["models/small/dense", "layouts/cpu_1"],
               ["utils.run.sequence_length = %r" % LENGTHS])
  model = run.make_model(str(tmp_path), 4, LENGTHS)
  started = time.time()
  run.train(model, task.name, 2, out=lambda line: None)
  assert time.time() - started > 3   # training waited for the graph
  # Read in this process, with the writer still open: what is on disk.
  events = [event for name in glob.glob(str(tmp_path / "events.out.*"))
            for event in tf.train.summary_iterator(name)]
  graphs = [event.graph_def for event in events if event.graph_def]
  assert len(graphs) == 1
  graph = tf.GraphDef.FromString(graphs[0])
  assert any(node.op == "AssignAddVariableOp" for node in graph.node)
