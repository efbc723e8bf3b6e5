"""The machine's reachable multiply-add rate, to read the step benchmarks' GMAC/s against.

  python benchmarks/peak.py [--size=2048] [--json]

Times, on the default device, a float32 (size x size) @ (size x size) dot, the same dot with
bfloat16 operands and a float32 result (what config.precision=bfloat16 runs), and a 3x3
convolution 128->128 on 4x128x128 maps (the U-Nets' middle layers) in both precisions, each
with the XLA options training at 256 px uses (gankd_jax/xla_cpu.py). Median of --iters calls
after one warm-up call. A large dot is the best case of the machine; a fused step's GMAC/s over
the dot's is how near the step runs to that limit.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from gankd_jax.cli import parse_flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("size", 2048, "Side of the square matrices.")
flags.DEFINE_integer("iters", 10, "Timed calls per kernel (median reported).")
flags.DEFINE_bool("json", False, "Print the GMAC/s as JSON on the last line.")


def main(argv):
  del argv
  from gankd_jax import xla_cpu
  xla_cpu.configure(256)
  import jax
  import jax.numpy as jnp
  from gankd_jax.metrics.latency import median_seconds
  from gankd_jax.models import layers

  n = FLAGS.size
  a, b = (jax.random.normal(k, (n, n)) for k in jax.random.split(jax.random.key(0), 2))
  x = jax.random.normal(jax.random.key(1), (4, 128, 128, 128))
  w = jax.random.normal(jax.random.key(2), (3, 3, 128, 128))
  conv_macs = 4 * 128 * 128 * 9 * 128 * 128

  def conv(x, w):
    return layers.conv_general_dilated(x, w, (1, 1), [(1, 1), (1, 1)])

  kernels = {
      "dot_float32": (jax.jit(jnp.matmul), n ** 3),
      "dot_bfloat16": (jax.jit(layers.with_precision("bfloat16", layers.matmul)), n ** 3),
      "conv3x3_float32": (jax.jit(conv), conv_macs),
      "conv3x3_bfloat16": (jax.jit(layers.with_precision("bfloat16", conv)), conv_macs),
  }
  rates = {}
  print(f"{jax.devices()[0].device_kind} ({jax.devices()[0].platform}), "
        f"{os.cpu_count()} CPU(s) visible")
  for name, (fn, macs) in kernels.items():
    args = (a, b) if name.startswith("dot") else (x, w)
    seconds = median_seconds(fn, *args, iters=FLAGS.iters)
    rates[name] = round(macs / seconds / 1e9, 1)
    print(f"{name:18s} {seconds * 1e3:8.1f} ms  {rates[name]:7.1f} GMAC/s")
  if FLAGS.json:
    print(json.dumps(rates))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
