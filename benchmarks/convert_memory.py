"""Peak memory of `switch-mtf convert` on a switch-base-8-sized checkpoint.

Writes a random Hugging Face checkpoint with the architecture of the
released google/switch-base-8 (d_model 768, ReLU d_ff 3072, 12 + 12 layers,
8 experts at every other layer, vocabulary 32,128: 619M parameters, 2.5 GB
in float32) as safetensors shards, then imports it and exports it back, each
in its own process, and records the peak resident memory of each process
against the size of the checkpoint: the conversion goes tensor by tensor,
so the whole process's peak (TensorFlow included) stays under the size of
the checkpoint and does not grow with the number of experts.  Results go to
benchmarks/results/convert_memory_e<experts>.{json,md}.

  .venv/bin/python benchmarks/convert_memory.py [--experts 8] [--keep DIR]
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def _write_random_checkpoint(path, experts):
  from switch_mtf.hf import conversion as hf_conversion  # pylint: disable=g-import-not-at-top
  from switch_mtf.hf import files as hf_files  # pylint: disable=g-import-not-at-top
  arch = hf_conversion.Architecture(
      vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_heads=12,
      encoder_layers=12, decoder_layers=12, num_experts=experts,
      encoder_sparse=tuple(range(1, 12, 2)),
      decoder_sparse=tuple(range(1, 12, 2)))
  plan = [(name, entry.hf_shape()) for entry in hf_conversion.tensor_map(arch)
          for name in entry.hf]
  rng = np.random.RandomState(0)
  os.makedirs(path)
  hf_files.write_safetensors(
      path, plan, lambda name: rng.standard_normal(
          dict(plan)[name]).astype(np.float32) * 0.05, 1 << 30)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf_conversion.hf_config(arch), f)
  return sum(int(np.prod(shape)) for _, shape in plan)


def _measure(args):
  """Runs `switch-mtf convert ARGS` in a child; (seconds, peak RSS bytes)."""
  start = time.time()
  result = subprocess.run(
      [sys.executable, "-c", "import resource, sys\n"
       "from switch_mtf import cli\ncode = cli.main(sys.argv[1:])\n"
       "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF)"
       ".ru_maxrss)\nsys.exit(code)"] + args,
      capture_output=True, text=True, check=False)
  if result.returncode:
    raise SystemExit(result.stderr[-2000:])
  peak = [int(line.split()[1]) for line in result.stdout.splitlines()
          if line.startswith("peak_rss_kb")][0]
  return time.time() - start, peak * 1024


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--experts", type=int, default=8)
  parser.add_argument("--keep", default=None,
                      help="work in this directory and keep it")
  args = parser.parse_args()
  work = args.keep or tempfile.mkdtemp(prefix="convert_memory_")
  try:
    hf_dir = os.path.join(work, "hf")
    params = _write_random_checkpoint(hf_dir, args.experts)
    size = 4 * params
    ours = os.path.join(work, "ours")
    import_s, import_peak = _measure(["convert", "--from_hf", hf_dir,
                                      "--model_dir", ours])
    export_s, export_peak = _measure(["convert", "--to_hf",
                                      os.path.join(work, "back"),
                                      "--model_dir", ours])
    # What any switch-mtf process holds: TensorFlow, Mesh TF, t5.
    _, baseline_peak = _measure(["info", "--gin_file=models/small/switch_8",
                                 "--vocab_size=512", "--batch_size=8"])
  finally:
    if not args.keep:
      shutil.rmtree(work, ignore_errors=True)
  results = {
      "machine": "%s, %d CPUs" % (platform.machine(), os.cpu_count()),
      "architecture": "switch-base-%d (d_model 768, d_ff 3072, 12+12 layers, "
                      "%d experts every other layer)" % ((args.experts,) * 2),
      "parameters": params, "checkpoint_bytes": size,
      "import": {"seconds": round(import_s, 1), "peak_rss_bytes": import_peak},
      "export": {"seconds": round(export_s, 1), "peak_rss_bytes": export_peak},
      "baseline_peak_rss_bytes": baseline_peak}
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, "convert_memory_e%d.json" % args.experts),
            "w") as f:
    json.dump(results, f, indent=1)
  gb = lambda b: "%.2f GB" % (b / 1e9)
  lines = [
      "# switch-mtf convert: peak memory", "",
      "`.venv/bin/python benchmarks/convert_memory.py` on %s: a random "
      "checkpoint of %s, %d parameters, %s in float32." % (
          results["machine"], results["architecture"], params, gb(size)), "",
      "| direction | seconds | peak resident memory of the process | "
      "peak / checkpoint size |",
      "|---|---|---|---|"]
  for name in ("import", "export"):
    r = results[name]
    lines.append("| %s | %.1f | %s | %.2f |" % (
        name, r["seconds"], gb(r["peak_rss_bytes"]),
        r["peak_rss_bytes"] / size))
  lines += ["", "For scale, the peak of `switch-mtf info` (TensorFlow, Mesh TF "
            "and t5 loaded, no checkpoint): %s." % gb(baseline_peak)]
  with open(os.path.join(RESULTS, "convert_memory_e%d.md" % args.experts),
            "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
