"""Batch-1 inference latency of each generator family, ours beside PyTorch's, in one sitting.

  python benchmarks/latency.py [--size=256] [--iters=20]
  python benchmarks/latency.py --reference=/path/to/OMGD --torch_python=/path/to/venv/bin/python

Times the four generator families OMGD's experiments use, randomly initialised (latency does not
depend on the values), batch 1, eval mode, median of --iters calls after --warmup:

  unet_ngf64            the pix2pix U-Net teacher (batch norm, num_downs = log2(size))
  unet_ngf16            OMGD's U-Net student
  mobile_resnet_ngf16   OMGD's CycleGAN / ResNet student (instance norm, 9 blocks)
  resnet_9blocks_ngf64  the CycleGAN teacher (instance norm)

Ours run through `gankd_jax.metrics.latency`: the inference path (gankd_jax/inference.py: weights
as compile-time constants, forward-only layer forms, the XLA:CPU options for forward passes),
every core it sees, in --precision. With
--reference (a bytedance/OMGD checkout; none of its code is in this repository) and
--torch_python (an interpreter with torch), the same modules in PyTorch are timed by
--torch_script (default: ../shared/reference/latency_torch.py beside this repository: torch with
2 threads, no_grad, eval mode) in a subprocess; the two sides alternate for --rounds rounds and
each reports its best round's medians, so a load change hits both. Machines drift 15-50 % between
hours: only the ratio of one sitting means anything.
"""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from gankd_jax.cli import fail, parse_flags, text_table  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = ("unet_ngf64", "unet_ngf16", "mobile_resnet_ngf16", "resnet_9blocks_ngf64")

FLAGS = flags.FLAGS
flags.DEFINE_integer("size", 256, "Image side.")
flags.DEFINE_list("families", list(FAMILIES), "Which generators to time.")
flags.DEFINE_integer("iters", 20, "Timed calls per generator (median reported).")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "Ours in this config.precision.")
flags.DEFINE_integer("warmup", 3, "Untimed calls first.")
flags.DEFINE_integer("rounds", 2, "Alternations of ours and PyTorch's (with --reference).")
flags.DEFINE_string("reference", "", "A bytedance/OMGD checkout, to time PyTorch's modules too.")
flags.DEFINE_string("torch_python", "", "Python interpreter with torch, for --reference.")
flags.DEFINE_string("torch_script", os.path.join(os.path.dirname(REPO), "shared", "reference",
                                                 "latency_torch.py"),
                    "The reference side's timing script (prints RESULT {name: ms}).")
flags.DEFINE_string("json", "", "Also write the results here.")


def generator_fields(family: str, size: int) -> dict:
  """Our module and fields for a family name of FAMILIES."""
  import math
  depth = int(math.log2(size))
  return {"unet_ngf64": dict(name="unet", ngf=64, norm="batch", num_downs=depth),
          "unet_ngf16": dict(name="unet", ngf=16, norm="batch", num_downs=depth),
          "mobile_resnet_ngf16": dict(name="mobile_resnet", ngf=16, norm="instance"),
          "resnet_9blocks_ngf64": dict(name="resnet_9blocks", ngf=64, norm="instance")}[family]


def time_ours(families, size: int, iters: int, warmup: int, precision: str) -> dict[str, float]:
  import jax
  import jax.numpy as jnp
  from gankd_jax import models
  from gankd_jax.metrics.latency import measure_latency
  out = {}
  x = jnp.zeros((1, size, size, 3))
  for family in families:
    module = models.build_generator(**generator_fields(family, size))
    variables = module.init(jax.random.key(0), x, train=False)
    result = measure_latency(lambda v, x, m=module: m.apply(v, x, train=False), variables,
                             (size, size, 3), warmup=warmup, iters=iters, precision=precision)
    out[family] = result["median_ms"]
  return out


def time_reference(size: int) -> dict[str, float]:
  """The reference script's RESULT line, run by --torch_python."""
  done = subprocess.run([FLAGS.torch_python, FLAGS.torch_script, FLAGS.reference, str(size)],
                        capture_output=True, text=True, check=False)
  lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
  if done.returncode or not lines:
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    fail(f"the reference timing ({FLAGS.torch_script}) failed: {tail}")
  return json.loads(lines[-1][len("RESULT "):])


def main(argv):
  del argv
  unknown = [f for f in FLAGS.families if f not in FAMILIES]
  if unknown:
    fail(f"--families: unknown '{unknown[0]}'; choose from {', '.join(FAMILIES)}")
  if FLAGS.size < 8 or FLAGS.size & (FLAGS.size - 1):
    fail(f"--size must be a power of two >= 8 (the U-Nets' depth is log2(size)), got {FLAGS.size}")
  if FLAGS.reference:
    for flag, path, kind in (("--reference", FLAGS.reference, os.path.isdir),
                             ("--torch_python", FLAGS.torch_python, os.path.isfile),
                             ("--torch_script", FLAGS.torch_script, os.path.isfile)):
      if not path or not kind(path):
        fail(f"{flag}: not found: {path or '(unset)'} (--reference needs all three)")
  from gankd_jax import xla_cpu
  xla_cpu.configure(inference=True)
  import jax

  ours, theirs = {}, {}
  for _ in range(FLAGS.rounds if FLAGS.reference else 1):
    for family, ms in time_ours(FLAGS.families, FLAGS.size, FLAGS.iters, FLAGS.warmup,
                                FLAGS.precision).items():
      ours[family] = min(ms, ours.get(family, float("inf")))
    if FLAGS.reference:
      for family, ms in time_reference(FLAGS.size).items():
        theirs[family] = min(ms, theirs.get(family, float("inf")))
  rows = [["generator", "ours ms", *(["PyTorch ms", "ours / PyTorch"] if theirs else [])]]
  for family in FLAGS.families:
    row = [family, f"{ours[family]:.2f}"]
    if theirs:
      row += [f"{theirs[family]:.2f}", f"{ours[family] / theirs[family]:.2f}"]
    rows.append(row)
  print(f"batch 1, {FLAGS.size}x{FLAGS.size}, median of {FLAGS.iters} after {FLAGS.warmup} "
        f"warm-up calls, best of {FLAGS.rounds if theirs else 1} round(s); ours on "
        f"{jax.default_backend()} in {FLAGS.precision} (the inference path)"
        + (", PyTorch float32 with 2 threads" if theirs else ""))
  print("\n".join(text_table(rows)))
  if FLAGS.json:
    with open(FLAGS.json, "w") as handle:
      json.dump({"size": FLAGS.size, "precision": FLAGS.precision, "ours_ms": ours,
                 "pytorch_ms": theirs}, handle, indent=2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
