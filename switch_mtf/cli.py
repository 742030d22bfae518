"""The ``switch-mtf`` command line."""
import argparse
import sys

from switch_mtf.errors import ConfigError


def _demo(args):
  from switch_mtf import demo  # pylint: disable=g-import-not-at-top
  demo.run(steps=args.steps, num_devices=args.devices,
           num_experts=args.experts, seed=args.seed,
           output_dir=args.output_dir)


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
