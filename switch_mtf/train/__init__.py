"""Running models: t5's MtfModel set-up, the training loop and its hooks,
evaluation, and the workflows built from them.

- ``run``: the MtfModel/Estimator set-up, scoring, decoding, task checks.
- ``training``: the training call (seeds, exact resume, progress, NaN guard).
- ``evaluation``: in-process scoring of fixed validation examples.
- ``workflows``: pre-train, fine-tune, upcycle, distil: how each run starts.
- ``upcycling``, ``distillation``: sparse upcycling and distillation.
- ``model_dir``: who may write a model directory, and what it holds.
- ``mesh_program``: one Mesh TF graph run in a session (tests, scoring).
- ``cluster``: several machines without TPUs (TensorFlow gRPC tasks).
"""
