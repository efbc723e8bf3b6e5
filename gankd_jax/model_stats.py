"""Parameter counts and MACs of every network of a config, without data or training.

  python -m gankd_jax.model_stats --config=configs/omgd.py:unet_s16 [--json]

MACs are per image at the config's image size (convolutions and matrix products, counted as
torchprofile counts them). Nothing is allocated: shapes are traced abstractly.
"""

import json

from absl import app, flags
from ml_collections import config_flags

from gankd_jax.cli import fail, parse_flags

FLAGS = flags.FLAGS


def define_flags():
  """Defines the command's flags; only when run as a command, so that importing this module
  beside another command (tests, notebooks) does not define a flag twice."""
  config_flags.DEFINE_config_file("config", None, "Config file (optionally :VARIANT).", lock_config=True)
  flags.DEFINE_bool("json", False, "Print {\"networks\": {ROLE: {\"params\", \"macs\"}}} as JSON.")
  flags.mark_flags_as_required(["config"])


def compute(config) -> dict:
  import jax
  import jax.numpy as jnp
  from gankd_jax import stats
  from gankd_jax.methods import build_method

  size = config.data.crop_size
  method = build_method(config)
  example = {"A": jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
             "B": jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)}
  state = jax.eval_shape(method.init_state, jax.random.key(0), example)
  networks = {}
  for role, net in method.networks(state).items():
    x = jax.ShapeDtypeStruct((1, *net.input_shape), jnp.float32)
    networks[role] = {"params": stats.count_params(net.variables["params"]),
                      "macs": stats.count_macs(net.apply_fn, net.variables, x)}
  return {"networks": networks}


def main(argv):
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    result = compute(FLAGS.config)
  except ValueError as e:
    fail(str(e))
  if FLAGS.json:
    print(json.dumps(result))
    return
  size = FLAGS.config.data.crop_size
  print(f"{'network':<16}{'params':>14}{'MACs':>18}   (per {size}x{size} image)")
  for role, s in result["networks"].items():
    print(f"{role:<16}{s['params']:>14,}{s['macs']:>18,}   {s['params'] / 1e6:.3f} M, {s['macs'] / 1e9:.3f} G")
  if "teacher_wide" in result["networks"] and "student" in result["networks"]:
    t, st = result["networks"]["teacher_wide"], result["networks"]["student"]
    print(f"student vs wide teacher: {t['params'] / st['params']:.1f}x fewer params, "
          f"{t['macs'] / st['macs']:.1f}x fewer MACs")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
