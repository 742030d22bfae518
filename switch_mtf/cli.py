"""The ``switch-mtf`` command line."""
import argparse
import sys

from switch_mtf.errors import ConfigError


def _demo(args):
  from switch_mtf import demo  # pylint: disable=g-import-not-at-top
  demo.run(steps=args.steps, num_devices=args.devices,
           num_experts=args.experts, seed=args.seed,
           output_dir=args.output_dir)


def _info(args):
  import json  # pylint: disable=g-import-not-at-top
  from switch_mtf import accounting  # pylint: disable=g-import-not-at-top
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


def _add_gin_flags(parser):
  parser.add_argument(
      "--gin_file", action="append", default=[],
      help="gin file (repeatable): a name in switch_mtf's gin/ tree such as "
      "models/switch_base_8 or layouts/cpu_ep_2, or a path")
  parser.add_argument(
      "--gin_param", action="append", default=[],
      help="gin binding (repeatable), e.g. 'SwitchFFN.num_experts = 16'")


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog="switch-mtf",
      description="Switch Transformer on Mesh TensorFlow.")
  commands = parser.add_subparsers(dest="command", required=True)
  demo = commands.add_parser(
      "demo", help="train and evaluate a small Switch LM on the embedded "
      "offline corpus, on a virtual multi-device CPU mesh (a few minutes)")
  demo.add_argument("--steps", type=int, default=1500)
  demo.add_argument("--devices", type=int, default=2,
                    help="virtual CPU devices; the experts are split over them")
  demo.add_argument("--experts", type=int, default=8)
  demo.add_argument("--seed", type=int, default=0)
  demo.add_argument("--output_dir", default="runs/demo",
                    help="where the results JSON and the loss plot go")
  demo.set_defaults(func=_demo)

  info = commands.add_parser(
      "info", help="parameters, FLOPs, expert capacity and memory of a gin "
      "model and layout, without building the TensorFlow graph")
  _add_gin_flags(info)
  info.add_argument("--vocab_size", type=int, default=32100,
                    help="vocabulary size (T5: 32000 pieces + 100 sentinels)")
  info.add_argument("--batch_size", type=int, default=128,
                    help="sequences per batch, for the token groups")
  info.add_argument("--master_dtype", default="float32",
                    choices=["float32", "bfloat16"],
                    help="dtype of the stored weights, for the memory estimate")
  info.add_argument("--json", action="store_true",
                    help="print the whole report as JSON")
  info.set_defaults(func=_info)
  args = parser.parse_args(argv)
  try:
    args.func(args)
  except ConfigError as e:
    # gin appends "In call to configurable ..." lines; the first line is ours.
    print("switch-mtf: error: %s" % str(e).splitlines()[0], file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("switch-mtf: interrupted", file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
