"""Images per second of StyleGAN2's G and D steps, lazy regularisation amortised.

  python benchmarks/stylegan2_step.py --config=configs/stylegan2.py:paper256 [--json]
  python benchmarks/stylegan2_step.py --config=configs/stylegan2.py:small [--precision=bfloat16]

Times each phase of methods/stylegan2.py jitted on its own, on random images at the config's
size: Gmain, Greg (path length), Dmain, Dreg (R1), and the fused step of every phase variant.
A G step costs Gmain + Greg / pl_interval, a D step Dmain + Dreg / r1_interval (the reference's
amortisation); images/s = batch / seconds. Medians of --steps timed calls after one warm-up call
(compilation excluded), with each phase's GMAC/s (XLA's count of the program's multiply-adds).
paper256: the reference's per-GPU batch 8 at 256x256.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from gankd_jax.cli import fail, parse_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/stylegan2.py:paper256",
                                "Config (optionally :VARIANT).")
flags.DEFINE_integer("batch_size", 0, "Global batch size (0: the config's).")
flags.DEFINE_integer("steps", 3, "Timed calls per phase (median reported).")
flags.DEFINE_enum("precision", None, ["float32", "bfloat16"],
                  "config.precision for the phases (default: the config's).")
flags.DEFINE_bool("json", False, "Print the results as one JSON line last.")


def main(argv):
  del argv
  import jax
  from gankd_jax import stats
  from gankd_jax.metrics.latency import median_seconds
  from gankd_jax.methods import build_method
  from gankd_jax.models import layers

  config = FLAGS.config
  if FLAGS.batch_size:
    config.batch_size = FLAGS.batch_size
  if FLAGS.precision:
    config.precision = FLAGS.precision
  if config.data.name == "image_folder":  # Random images stand in for the folder: RGB shapes.
    config.data.update(name="digits", channels=3)
  try:
    method = build_method(config)
  except ValueError as e:
    fail(str(e))
  size, channels = method.image_shape[0], method.image_shape[2]
  batch_size = config.batch_size
  keys = jax.random.split(jax.random.key(0), 3)
  real = jax.random.uniform(keys[0], (batch_size, size, size, channels), minval=-1, maxval=1)
  state = jax.jit(method.init_state)(keys[1], {"image": real}, {})
  g, d, step = state.generator, state.discriminator, state.step
  loss = config.loss

  # The method's phases, timed one by one, in the run's precision (as train.make_train_step).
  # pylint: disable=protected-access
  precise = lambda fn: jax.jit(layers.with_precision(layers.precision_of(config), fn))
  phases = {
      "Gmain": precise(lambda g, d, k: method._g_main(g, d.params, batch_size, k, step)),
      "Greg": precise(lambda g, d, k: method._g_reg(g, state.pl_mean, batch_size, k, step)),
      "Dmain": precise(lambda g, d, k: method._d_main(g, d, real, k, step)),
      "Dreg": precise(lambda g, d, k: method._d_reg(d, real, step)),
  }
  seconds = {name: median_seconds(fn, g, d, keys[2], iters=FLAGS.steps)
             for name, fn in phases.items()}
  gmac = {name: stats.executed_macs(fn, g, d, keys[2]) / 1e9 for name, fn in phases.items()}
  g_step = seconds["Gmain"] + (seconds["Greg"] / loss.pl_interval if loss.pl_weight else 0.0)
  d_step = seconds["Dmain"] + (seconds["Dreg"] / loss.r1_interval if loss.r1_gamma else 0.0)
  results = {
      "image_size": size, "batch_size": batch_size, "devices": jax.device_count(),
      "platform": jax.devices()[0].platform, "precision": config.precision,
      "seconds": {k: round(v, 4) for k, v in seconds.items()},
      "gmac": {k: round(v, 2) for k, v in gmac.items()},
      "G_images_per_s": round(batch_size / g_step, 2), "D_images_per_s": round(batch_size / d_step, 2),
      "train_images_per_s": round(batch_size / (g_step + d_step), 2),
  }
  print(f"{size}x{size}x{channels}, batch {batch_size}, {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s), {config.precision}")
  for name, value in seconds.items():
    print(f"  {name:6s} {value * 1000:9.1f} ms  {gmac[name]:8.2f} GMAC  "
          f"{gmac[name] / value:6.1f} GMAC/s")
  print(f"G step {g_step * 1000:.1f} ms ({results['G_images_per_s']} img/s), D step "
        f"{d_step * 1000:.1f} ms ({results['D_images_per_s']} img/s), training "
        f"{results['train_images_per_s']} img/s (regularisation amortised)")
  if FLAGS.json:
    print(json.dumps(results))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
