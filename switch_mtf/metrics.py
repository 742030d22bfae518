"""Evaluation summaries (plain Python).

The paper reports GLUE and SuperGLUE as averages: each task's score is the
mean of its metrics (e.g. MRPC: mean of F1 and accuracy; STS-B: mean of
Pearson and Spearman), and the benchmark score is the mean over its tasks.
"""


def task_score(metrics):
  """The mean of one task's metrics ({name: value}), or None if none."""
  values = [float(v) for v in metrics.values()]
  return sum(values) / len(values) if values else None


def benchmark_average(per_task):
  """The mean over tasks of ``task_score`` ({task: {metric: value}})."""
  scores = [s for s in map(task_score, per_task.values()) if s is not None]
  return sum(scores) / len(scores) if scores else None
