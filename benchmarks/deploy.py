"""Measured deploy speed of an OMGD config's generators: batch-1 latency in each export runtime.

  python benchmarks/deploy.py --config=configs/omgd.py:unet_s16 [--size=256]
                              [--formats=stablehlo,tflite,onnx] [--iters=20]

Builds every generator role of the config (randomly initialised: latency does not depend on the
weights, so no run is needed), exports each in the export graph mode to every format
(gankd_jax/export.py, with its parity check) and times it in that format's runtime at 1 and 2
threads (the StableHLO runtime is XLA:CPU, timed with its own threading), median after warm-up.
Prints params, MACs (as the papers count them), latency per runtime, and the student's measured
speed-up over each teacher next to the MACs ratio. For a trained run use
`python -m gankd_jax.export --workdir=DIR --format=F --output=FILE --benchmark`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from gankd_jax.cli import fail, parse_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/omgd.py:unet_s16", "Config (optionally :VARIANT).")
flags.DEFINE_integer("size", 0, "Image side; 0: the config's crop size.")
flags.DEFINE_list("formats", ["stablehlo", "tflite", "onnx"], "Runtimes to time.")
flags.DEFINE_integer("iters", 20, "Timed calls per network and thread count (median reported).")


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  from gankd_jax import export
  from gankd_jax.methods import build_method
  from gankd_jax.methods.common import inference_network
  config = FLAGS.config
  size = FLAGS.size or int(config.data.crop_size)
  try:
    for fmt in FLAGS.formats:
      export.check_format(fmt)
    method = build_method(config)
  except ValueError as error:
    fail(str(error))
  networks = {}
  for role in method.generator_roles:
    module = method.generators[role]
    variables = module.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
    networks[role] = inference_network(module, variables, (size, size, 3))
  for fmt in FLAGS.formats:
    rows = export.benchmark(networks, method.generator_roles, fmt, size=size, iters=FLAGS.iters)
    print(export.format_benchmark(rows, fmt), flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
