"""The ``switch-mtf`` command line."""
import argparse
import json
import os
import sys

from switch_mtf.train import cluster
from switch_mtf import errors
from switch_mtf import garbage_collection
from switch_mtf import text_files
from switch_mtf.errors import ConfigError


def _set_up_tensorflow():
  import logging  # pylint: disable=g-import-not-at-top
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  # TensorFlow's deprecation warnings for Mesh TF's TF1 code are not the
  # user's business; our progress lines are.
  tf.get_logger().setLevel(logging.ERROR)
  logging.getLogger("absl").setLevel(logging.ERROR)
  # Mesh TF is graph code (TF1): the Estimator builds its graphs anyway, and
  # the in-process scorer and data checks build theirs the same way.
  tf.disable_eager_execution()


def _import_stack():
  """Mesh TF, seqio, t5 and our modules on them: imported once per process,
  full garbage collections deferred meanwhile (``garbage_collection``)."""
  with garbage_collection.long_lived_imports("mesh_tensorflow", "seqio", "t5"):
    import switch_mtf.tasks.local  # pylint: disable=g-import-not-at-top,unused-import
    import switch_mtf.train.run  # pylint: disable=g-import-not-at-top,unused-import


def _demo(args):
  _import_stack()
  from switch_mtf.reproduction import demo  # pylint: disable=g-import-not-at-top
  _set_up_tensorflow()
  demo.run(steps=args.steps, num_devices=args.devices,
           num_experts=args.experts, seed=args.seed,
           output_dir=args.output_dir)


def _reproduce(args):
  _prepare(args)   # gin, and the tasks --task needs (e.g. local_*)
  from switch_mtf.reproduction import plan as reproduction  # pylint: disable=g-import-not-at-top
  names = (args.experiments.split(",") if args.experiments
           else reproduction.QUICK_EXPERIMENTS if args.quick
           else reproduction.EXPERIMENTS)
  reproduction.reproduce(names, quick=args.quick,
                         output_dir=args.output_dir, task=args.task,
                         extra_params=args.gin_param, steps=args.steps)


def _info(args):
  from switch_mtf.moe import accounting  # pylint: disable=g-import-not-at-top
  from switch_mtf import config  # pylint: disable=g-import-not-at-top
  config.parse(args.gin_file, args.gin_param)
  lengths = config.query("utils.run.sequence_length",
                         {"inputs": 512, "targets": 114})
  mesh_shape, layout = config.mesh_and_layout()
  report = accounting.count(
      config.query("utils.run.model_type", "bitransformer"),
      args.vocab_size, lengths, args.batch_size, layout=layout,
      mesh_shape=mesh_shape,
      master_bytes=4 if args.master_dtype == "float32" else 2)
  if args.json:
    print(json.dumps(report.as_dict(), indent=1))
  else:
    print("\n".join(accounting.format_report(report)))


def _prepare(args):
  """Imports the stack and the --module_import modules, parses gin,
  registers the tasks --task needs and checks that it exists."""
  import importlib  # pylint: disable=g-import-not-at-top
  _import_stack()
  from switch_mtf import config  # pylint: disable=g-import-not-at-top
  from switch_mtf.train import run  # pylint: disable=g-import-not-at-top
  _set_up_tensorflow()
  for name in args.module_import:
    try:
      importlib.import_module(name)
    except ImportError as e:
      raise ConfigError("--module_import=%s: %s" % (name, e)) from None
  config.parse(args.gin_file, args.gin_param)
  _register_tasks(args)
  run.check_task(args.task)
  args.chief = cluster.join(args)


def _run_setup(args):
  """``_prepare``; returns (the run module, the sequence lengths)."""
  _prepare(args)
  from switch_mtf import config  # pylint: disable=g-import-not-at-top
  from switch_mtf.train import run  # pylint: disable=g-import-not-at-top
  return run, config.query("utils.run.sequence_length",
                           {"inputs": 512, "targets": 114})


_TFDS_TASK_PREFIXES = ("c4_", "glue_", "super_glue_", "squad_")


def _default_vocabulary(vocabulary, offline=False):
  """The named vocabulary; else T5's (TFDS tasks) or bytes (``offline``:
  the local-file tasks, which must work without a network)."""
  from switch_mtf.tasks import vocabularies  # pylint: disable=g-import-not-at-top
  if vocabulary:
    return vocabulary
  if offline:
    return vocabularies.byte_vocabulary()
  return vocabularies.sentencepiece(vocabularies.T5_VOCABULARY)


def _register_tasks(args):
  """The embedded tasks, and (only when asked for) the TFDS ones of
  tasks/text_to_text.py (--vocabulary, --tfds_data_dir) or the local-file
  ones of tasks/local.py (files bound in gin: local_data.*)."""
  from switch_mtf.tasks import embedded  # pylint: disable=g-import-not-at-top
  vocabulary = None
  if args.vocabulary:
    from switch_mtf import config  # pylint: disable=g-import-not-at-top
    from switch_mtf.tasks import local  # pylint: disable=g-import-not-at-top
    from switch_mtf.tasks import vocabularies  # pylint: disable=g-import-not-at-top

    def local_texts():
      return local.training_texts(
          config.query("local_data.pretraining"),
          config.query("local_data.text_to_text_files"))
    vocabulary = vocabularies.from_flag(
        args.vocabulary, training_texts=(
            local_texts if args.task.startswith("local_") else None))
  embedded.register(vocabulary=vocabulary)
  embedded.register_closed_book_qa(vocabulary=vocabulary)
  if args.task.startswith(_TFDS_TASK_PREFIXES):
    from switch_mtf.tasks import text_to_text  # pylint: disable=g-import-not-at-top
    text_to_text.register_all(_default_vocabulary(vocabulary),
                              args.tfds_data_dir)
  if args.task.startswith("local_"):
    from switch_mtf.tasks import local  # pylint: disable=g-import-not-at-top
    local.register(_default_vocabulary(vocabulary, offline=True))


def _checkpoint(run, model_dir, flag="--model_dir"):
  """(path, step) of the newest intact checkpoint; one line if none."""
  return run.intact_checkpoint(model_dir, flag)


def _user_model(run, args, lengths, **kwargs):
  """An MtfModel for eval/predict/score whose gin is the user's: upstream
  parses the model directory's operative config before these, so the
  user's whole configuration is re-applied after it."""
  import gin  # pylint: disable=g-import-not-at-top
  extra = list(kwargs.pop("gin_bindings", []))
  return _make_model(run, args, lengths,
                     gin_bindings=[gin.config_str()] + extra, **kwargs)


def _check_fits(run, model, args, path):
  """The user's gin model against the checkpoint (one line if another)."""
  if not args.tpu:
    run.scorer(model, args.task).check(path)


def _make_model(run, args, lengths, **kwargs):
  chief = getattr(args, "chief", None)
  return run.make_model(args.model_dir, args.batch_size, lengths,
                        tpu=args.tpu, tpu_topology=args.tpu_topology,
                        master=chief.target if chief else None, **kwargs)


def _train(args, setup=None, init_checkpoint=None):
  run, lengths = setup or _run_setup(args)
  model = _make_model(run, args, lengths, learning_rate=args.learning_rate,
                      save_checkpoints_steps=args.save_checkpoints_steps,
                      keep_checkpoint_max=args.keep_checkpoint_max)
  run.train(model, args.task, args.steps, seed=args.seed,
            every=args.log_every, router_every=args.router_every,
            init_checkpoint=init_checkpoint)
  print("trained to step %d; checkpoints in %s"
        % (run.latest_step(args.model_dir), args.model_dir))


def _eval(args):
  run, lengths = _run_setup(args)
  path, step = _checkpoint(run, args.model_dir)
  beam = getattr(args, "beam_size", 1)
  model = _user_model(run, args, lengths, gin_bindings=(
      ["Bitransformer.decode.beam_size = %d" % beam] if beam > 1 else []))
  _check_fits(run, model, args, path)
  from switch_mtf.train import workflows  # pylint: disable=g-import-not-at-top
  workflows.evaluate(model, args.task, args.model_dir, step, args.split)


def _train_and_eval(args):
  _train(args)
  args.split = "validation"
  _eval(args)


def _score(args):
  run, lengths = _run_setup(args)
  path, step = _checkpoint(run, args.model_dir)
  inputs = text_files.read_lines(args.inputs_file, "--inputs_file")
  targets = text_files.read_lines(args.targets_file, "--targets_file")
  if len(inputs) != len(targets):
    raise ConfigError("--inputs_file has %d lines but --targets_file has %d: "
                      "give one target per input" % (len(inputs),
                                                     len(targets)))
  model = _user_model(run, args, lengths)
  _check_fits(run, model, args, path)
  scores = run.score_strings(model, inputs, targets, args.task, step)
  text_files.write_lines(args.output_file, ["%.6f" % s for s in scores])
  print("wrote %d log-likelihoods (checkpoint of step %d) to %s"
        % (len(scores), step, args.output_file))


def _finetune(args):
  from switch_mtf.train import workflows  # pylint: disable=g-import-not-at-top
  run, lengths = _run_setup(args)
  _, step = _checkpoint(run, args.pretrained_model_dir,
                        "--pretrained_model_dir")
  model = _make_model(
      run, args, lengths,
      learning_rate=args.learning_rate or workflows.FINETUNE_LEARNING_RATE,
      save_checkpoints_steps=args.save_checkpoints_steps,
      keep_checkpoint_max=args.keep_checkpoint_max,
      gin_bindings=workflows.finetune_bindings(args.gin_param))
  run.finetune(model, args.task, args.steps, args.pretrained_model_dir,
               seed=args.seed, every=args.log_every,
               router_every=args.router_every)
  print("fine-tuned from step %d to step %d; checkpoints in %s" % (
      step, run.latest_step(args.model_dir), args.model_dir))


def _upcycle(args):
  from switch_mtf.train import workflows  # pylint: disable=g-import-not-at-top
  run, lengths = _run_setup(args)
  prefix, written = workflows.upcycled_start(
      args.dense_model_dir, args.model_dir,
      run.vocabulary(args.task).vocab_size, lengths, args.batch_size)
  if written:
    print("upcycled %s into %s (every expert a copy of the dense "
          "feed-forward layer, a new router)" % (args.dense_model_dir,
                                                  prefix))
  _train(args, setup=(run, lengths), init_checkpoint=prefix)


def _distill(args):
  from switch_mtf.train import workflows  # pylint: disable=g-import-not-at-top
  run, lengths = _run_setup(args)
  with workflows.distilling(
      args.teacher_model_dir, args.model_dir,
      run.vocabulary(args.task).vocab_size, lengths, args.batch_size,
      (args.gin_file, args.gin_param),
      initialize_student=args.student_init == "teacher") as prefix:
    if prefix:
      print("distilling %s into the gin model (student %s; checkpoint %s)"
            % (args.teacher_model_dir, "initialized from the teacher's "
               "non-expert weights" if args.student_init == "teacher" else
               "from its initializer", prefix))
    _train(args, setup=(run, lengths), init_checkpoint=prefix)


def _convert(args):
  from switch_mtf.hf import conversion as hf_conversion  # pylint: disable=g-import-not-at-top
  _set_up_tensorflow()
  if args.from_hf:
    hf_conversion.import_hf(args.from_hf, args.model_dir,
                            routing=args.routing)
    print("fine-tune it with: switch-mtf finetune --pretrained_model_dir=%s "
          "--gin_file=layouts/... --task=... (its vocabulary must have the "
          "checkpoint's vocab_size rows after padding to a multiple of 128)"
          % args.model_dir)
  else:
    hf_conversion.export_hf(args.model_dir, args.to_hf,
                            expert_capacity=args.expert_capacity,
                            max_shard_bytes=int(args.max_shard_mb * 2**20))


def _predict(args):
  run, lengths = _run_setup(args)
  path, step = _checkpoint(run, args.model_dir)
  inputs = text_files.read_lines(args.input_file, "--input_file")
  model = _user_model(run, args, lengths)
  _check_fits(run, model, args, path)
  outputs = run.decode_strings(model, inputs, args.task, path,
                               beam_size=args.beam_size)
  text_files.write_lines(args.output_file, outputs)
  print("wrote %d decoded lines (checkpoint of step %d) to %s"
        % (len(outputs), step, args.output_file))


def _at_least(minimum):
  """An argparse type: an integer >= ``minimum``."""
  def parse(text):
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError("%r is not an integer" % text) from None
    if value < minimum:
      raise argparse.ArgumentTypeError("%d: must be at least %d" % (
          value, minimum))
    return value
  return parse


def _add_run_flags(parser, train):
  _add_gin_flags(parser)
  cluster.add_flags(parser)
  parser.add_argument("--model_dir", required=True,
                      help="checkpoints, operative_config.gin, summaries")
  parser.add_argument("--task", default="switch_mtf_embedded_span_corruption",
                      help="seqio task or mixture")
  parser.add_argument(
      "--vocabulary", default=None,
      help="'embedded' (SentencePiece trained on the embedded corpus, "
      "cached), 'bytes', 'trained' (SentencePiece trained on the local "
      "task's training files, cached), or a SentencePiece model path; "
      "default: bytes for the embedded and local tasks, T5's "
      "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model for the TFDS "
      "ones")
  parser.add_argument("--tfds_data_dir", default=None,
                      help="where the prepared TFDS datasets are (C4, GLUE, "
                      "SuperGLUE, SQuAD tasks)")
  parser.add_argument("--module_import", action="append", default=[],
                      help="Python module to import first (repeatable), e.g. "
                      "one that registers your seqio tasks")
  parser.add_argument("--batch_size", type=_at_least(1), default=8,
                      help="sequences per batch")
  parser.add_argument("--tpu", default=None,
                      help="TPU name or address: run with TPUEstimator and "
                      "the SIMD mesh (use a tpu_* layout)")
  parser.add_argument("--tpu_topology", default=None,
                      help="TPU topology, e.g. 4x4 (TPU runs only)")
  if train:
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the data order, the initial weights and "
                        "the router/dropout noise: same seed, same losses")
    parser.add_argument("--log_every", type=_at_least(1), default=10,
                        help="print a progress line every N steps")
    parser.add_argument("--router_every", type=_at_least(0), default=100,
                        help="print router health per Switch layer every N "
                        "steps (0: never)")
    parser.add_argument("--steps", type=_at_least(1), required=True,
                        help="train: until this global step; finetune: "
                        "this many steps after the pre-trained checkpoint")
    parser.add_argument("--learning_rate", type=float, default=None,
                        help="constant learning rate (default: T5's inverse "
                        "square root schedule, 1/sqrt(max(step, 1e4)))")
    parser.add_argument("--save_checkpoints_steps", type=_at_least(1), default=100)
    parser.add_argument("--keep_checkpoint_max", type=_at_least(1), default=5)
  else:
    parser.add_argument("--split", default="validation")
    parser.add_argument("--beam_size", type=_at_least(1), default=1,
                        help="eval/predict decoding: greedy (1) or beam "
                        "search")


def _add_gin_flags(parser):
  parser.add_argument(
      "--gin_file", action="append", default=[],
      help="gin file (repeatable): a name in switch_mtf's gin/ tree such as "
      "models/switch_base_8 or layouts/cpu_ep_2, or a path")
  parser.add_argument(
      "--gin_param", action="append", default=[],
      help="gin binding (repeatable), e.g. 'SwitchFFN.num_experts = 16'")


def _report_bad_records():
  """One line per local task that skipped unreadable records."""
  local = sys.modules.get("switch_mtf.tasks.local")
  for counter in (local.COUNTERS.values() if local else ()):
    if counter.count:
      print("switch-mtf: %s" % counter.summary(), file=sys.stderr)


def _parser():
  """The command line: one sub-command per workflow."""
  parser = argparse.ArgumentParser(
      prog="switch-mtf",
      description="Switch Transformer on Mesh TensorFlow.")
  parser.add_argument(
      "--debug", action="store_true",
      help="show the traceback of errors that are otherwise one line (also "
      "with SWITCH_MTF_DEBUG=1)")
  commands = parser.add_subparsers(dest="command", required=True)
  _add_overview_commands(commands)
  _add_model_commands(commands)
  _add_checkpoint_commands(commands)
  cluster.add_worker_command(commands)
  return parser


def _add_overview_commands(commands):
  """demo, reproduce, info."""
  demo = commands.add_parser(
      "demo", help="pre-train and evaluate a small Switch Transformer "
      "(models/small/switch_8) on the embedded offline corpus, experts split "
      "over a virtual multi-device CPU mesh (a few minutes)")
  demo.add_argument("--steps", type=_at_least(1), default=600)
  demo.add_argument("--devices", type=_at_least(1), default=2,
                    help="virtual CPU devices; the experts are split over them")
  demo.add_argument("--experts", type=_at_least(1), default=8)
  demo.add_argument("--seed", type=int, default=0)
  demo.add_argument("--output_dir", default="runs/demo",
                    help="where the checkpoints (model/), the results JSON "
                    "and the plots go; a second run resumes from model/")
  demo.set_defaults(func=_demo)

  reproduce = commands.add_parser(
      "reproduce", help="the paper's claims in miniature: dense against "
      "Switch with 2-64 experts, capacity factor and top-2, load balancing, "
      "initialization, router policy, cost, closed-book QA, distillation, "
      "sparse upcycling; writes a "
      "Markdown report, plots and JSON (--quick: about 5 minutes)")
  reproduce.add_argument("--quick", action="store_true",
                         help="fewer models and steps (about 5 minutes on 2 "
                         "cores; full: about 65)")
  reproduce.add_argument("--steps", type=_at_least(2), default=None,
                         help="pre-training steps per run (default: 100 "
                         "quick, 2000 full); the other runs scale alike")
  reproduce.add_argument("--experiments", default=None,
                         help="comma-separated subset of: experts, capacity, "
                         "balance, init, policy, cost, knowledge, distill, "
                         "upcycle")
  reproduce.add_argument("--output_dir", default="runs/reproduce",
                         help="runs (reused when rerun) and report.md")
  reproduce.add_argument("--task", default="switch_mtf_embedded_span_"
                         "corruption", help="pre-training task, e.g. "
                         "local_span_corruption with --gin_param=\"local_data."
                         "pretraining = {...}\" for your own text")
  _add_gin_flags(reproduce)
  reproduce.add_argument("--module_import", action="append", default=[])
  reproduce.add_argument("--vocabulary", default=None)
  reproduce.add_argument("--tfds_data_dir", default=None)
  reproduce.set_defaults(func=_reproduce)

  info = commands.add_parser(
      "info", help="parameters, FLOPs, expert capacity and memory of a gin "
      "model and layout, without building the TensorFlow graph")
  _add_gin_flags(info)
  info.add_argument("--vocab_size", type=int, default=32100,
                    help="vocabulary size (T5: 32000 pieces + 100 sentinels)")
  info.add_argument("--batch_size", type=_at_least(1), default=128,
                    help="sequences per batch, for the token groups")
  info.add_argument("--master_dtype", default="float32",
                    choices=["float32", "bfloat16"],
                    help="dtype of the stored weights, for the memory estimate")
  info.add_argument("--json", action="store_true",
                    help="print the whole report as JSON")
  info.set_defaults(func=_info)


def _add_model_commands(commands):
  """train, eval, train_and_eval, score, finetune, upcycle, distill."""
  train = commands.add_parser(
      "train", help="train (or resume training) a gin model on a seqio task "
      "with t5's MtfModel; checkpoints every --save_checkpoints_steps")
  _add_run_flags(train, train=True)
  train.set_defaults(func=_train)

  evaluate = commands.add_parser(
      "eval", help="negative log perplexity of the latest checkpoint on a "
      "split of the task (the paper's metric); works on any mesh/layout")
  _add_run_flags(evaluate, train=False)
  evaluate.set_defaults(func=_eval)

  both = commands.add_parser(
      "train_and_eval", help="train, then report the validation negative "
      "log perplexity of the last checkpoint")
  _add_run_flags(both, train=True)
  both.set_defaults(func=_train_and_eval)

  score = commands.add_parser(
      "score", help="log-likelihood of each line of --targets_file given the "
      "same line of --inputs_file, one number per line in --output_file")
  _add_run_flags(score, train=False)
  score.add_argument("--inputs_file", required=True)
  score.add_argument("--targets_file", required=True)
  score.add_argument("--output_file", required=True)
  score.set_defaults(func=_score)

  finetune = commands.add_parser(
      "finetune", help="fine-tune a pre-trained checkpoint on a task: "
      "dropout 0.1, expert dropout 0.4, constant learning rate 1e-3 "
      "(gin/runs/finetune.gin)")
  _add_run_flags(finetune, train=True)
  finetune.add_argument("--pretrained_model_dir", required=True)
  finetune.set_defaults(func=_finetune)

  upcycle = commands.add_parser(
      "upcycle", help="sparse upcycling: start the gin Switch model from "
      "the latest checkpoint of a dense model (every expert a copy of the "
      "dense feed-forward layer, a new router), then train --steps steps")
  _add_run_flags(upcycle, train=True)
  upcycle.add_argument("--dense_model_dir", required=True)
  upcycle.set_defaults(func=_upcycle)

  distill = commands.add_parser(
      "distill", help="distill a trained (Switch) teacher into the gin model "
      "(a FLOP-matched dense student): loss = 0.75 hard labels + 0.25 the "
      "teacher's probabilities (DistillingBitransformer.soft_weight); the "
      "student starts from the teacher's non-expert weights")
  _add_run_flags(distill, train=True)
  distill.add_argument("--teacher_model_dir", required=True,
                       help="the teacher's directory (latest checkpoint and "
                       "operative_config.gin)")
  distill.add_argument("--student_init", choices=["teacher", "random"],
                       default="teacher",
                       help="teacher: copy the teacher's non-expert weights "
                       "into the student (paper); random: its initializer")
  distill.set_defaults(func=_distill)


def _add_checkpoint_commands(commands):
  """convert, predict."""
  convert = commands.add_parser(
      "convert", help="Hugging Face SwitchTransformers checkpoint <-> "
      "switch_mtf checkpoint, tensor by tensor (the released google/switch-* "
      "models; gated-GELU experts too)")
  direction = convert.add_mutually_exclusive_group(required=True)
  direction.add_argument(
      "--from_hf", help="a Hugging Face directory (config.json + safetensors "
      "or pytorch_model.bin, sharded or not) to import into the new "
      "--model_dir (model.ckpt-0 and operative_config.gin)")
  direction.add_argument(
      "--to_hf", help="a new directory to export the latest checkpoint of "
      "--model_dir into (config.json + safetensors)")
  convert.add_argument("--model_dir", required=True)
  convert.add_argument(
      "--routing", choices=["hf", "paper"], default="hf",
      help="import: hf routes each sequence with Hugging Face's fixed "
      "expert_capacity (the same outputs); paper uses groups and capacity "
      "factors")
  convert.add_argument(
      "--expert_capacity", type=int, default=None,
      help="export: Hugging Face's slots per expert and sequence (default: "
      "the model's SwitchFFN.expert_capacity, else its eval capacity for one "
      "input sequence)")
  convert.add_argument("--max_shard_mb", type=float, default=1024,
                       help="export: largest safetensors shard")
  convert.set_defaults(func=_convert)

  predict = commands.add_parser(
      "predict", help="decode the lines of --input_file with the latest "
      "checkpoint into --output_file (greedy, or beam search)")
  _add_run_flags(predict, train=False)
  predict.add_argument("--input_file", required=True)
  predict.add_argument("--output_file", required=True)
  predict.set_defaults(func=_predict)


def main(argv=None):
  args = _parser().parse_args(argv)
  from switch_mtf import compat  # pylint: disable=g-import-not-at-top
  with garbage_collection.long_lived_imports("tensorflow"):
    compat.import_tensorflow_quietly()
  try:
    try:
      args.func(args)
    finally:
      _report_bad_records()
  except (Exception, KeyboardInterrupt) as e:  # pylint: disable=broad-except
    known = errors.user_error(e)
    if known is None or args.debug or os.environ.get("SWITCH_MTF_DEBUG"):
      raise
    print(errors.line(known[0]), file=sys.stderr)
    return known[1]
  return 0


if __name__ == "__main__":
  sys.exit(main())
