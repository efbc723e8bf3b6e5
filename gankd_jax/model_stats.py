"""Parameter counts and MACs of every network of a config, without data or training.

  python -m gankd_jax.model_stats --config=configs/omgd.py:unet_s16 [--json]

MACs are per image at the config's image size (convolutions and matrix products, counted as
torchprofile counts them). Nothing is allocated: shapes are traced abstractly.
"""

import json

from absl import app, flags
from ml_collections import config_flags

from gankd_jax.cli import fail, parse_flags, text_table

FLAGS = flags.FLAGS


def define_flags():
  """Defines the command's flags; only when run as a command, so that importing this module
  beside another command (tests, notebooks) does not define a flag twice."""
  config_flags.DEFINE_config_file("config", None, "Config file (optionally :VARIANT).", lock_config=True)
  flags.DEFINE_bool("json", False, "Print {\"networks\": {ROLE: {\"params\", \"macs\"}}} as JSON.")
  flags.mark_flags_as_required(["config"])


def compute(config) -> dict:
  """{"networks": {role: {"params", "macs"}}, "image_size"}: shapes only, no weights read (the
  method's frozen inputs are not loaded: `init_state` is traced with none)."""
  import jax
  import jax.numpy as jnp
  from gankd_jax import runs, stats
  from gankd_jax.methods import build_method

  method = build_method(config)
  example = runs.example_batch(config.data)
  state = jax.eval_shape(method.init_state, jax.random.key(0), example, {})
  networks = {}
  for role, net in method.networks(state, {}).items():
    x = jax.ShapeDtypeStruct((1, *net.input_shape), jnp.float32)
    macs, filters = stats.mac_parts(net.apply_fn, net.variables, x)
    networks[role] = {"params": stats.count_params(net.variables["params"]), "macs": macs}
    if filters:  # StyleGAN2's FIR resampling.
      networks[role]["macs_with_filters"] = macs + filters
  return {"networks": networks, "image_size": runs.image_size(config.data)}


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
  size = result["image_size"]
  networks = result["networks"]
  filtered = any("macs_with_filters" in s for s in networks.values())
  rows = [["network", "params", "MACs", *(["MACs with FIR filters"] if filtered else []), ""]]
  for role, s in networks.items():
    rows.append([role, f"{s['params']:,}", f"{s['macs']:,}",
                 *([f"{s.get('macs_with_filters', s['macs']):,}"] if filtered else []),
                 f" {s['params'] / 1e6:.3f} M, {s['macs'] / 1e9:.3f} G"])
  print(f"per {size}x{size} image (per latent for latent generators)")
  print("\n".join(text_table(rows)))
  student = networks.get("student")
  generators = [r for r in networks if r.startswith("teacher") and "discriminator" not in r]
  for role in (r for r in generators if student):
    t = networks[role]
    print(f"student vs {role}: {t['params'] / student['params']:.1f}x fewer params, "
          f"{t['macs'] / max(student['macs'], 1):.1f}x fewer MACs, MACs reduced by "
          f"{100 * (1 - student['macs'] / t['macs']):.2f} %")
  paper = FLAGS.config.get("paper_macs_reduction")
  if paper:
    print(f"the paper's MACs reduction for this setup: {paper:.2f} % (MACs here count "
          "convolutions, modulated convolutions and fully connected layers, not the FIR "
          "resampling filters, as the StyleGAN-compression papers count them)")
  if filtered and student:
    for role in generators:
      t = networks[role]
      print(f"with the FIR filters counted: student vs {role}: MACs reduced by "
            f"{100 * (1 - student['macs_with_filters'] / t['macs_with_filters']):.2f} %")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
