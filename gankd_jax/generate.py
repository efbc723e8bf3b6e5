"""Images from a StyleGAN2 generator, as the reference's generate.py makes them.

  python -m gankd_jax.generate --network=FILE.pkl|FILE.pth|WORKDIR[:role] --seeds=0-7,12
      --outdir=DIR [--trunc=1.0] [--noise-mode=const|random|none] [--class=N]
      [--precision=float32|bfloat16]

--network: a StyleGAN2-ADA network pickle (its G_ema, read without torch and without running the
code it carries: weights/network_pickle.py), a torch.save state dict of a generator, or a run
directory of ours: a StyleGAN2 run's EMA generator (role `generator`) of its latest checkpoint, or
any unconditional generator role of another method's run (WORKDIR:role, e.g. runs/mse_d4:student;
those take no --trunc, --noise-mode or --class).

For each seed, as NVlabs/stylegan2-ada-pytorch's generate.py does:
z = np.random.RandomState(seed).randn(1, z_dim), the one-hot label of --class (required by a
conditional network, ignored with a warning by an unconditional one), G(z, c, truncation_psi,
noise_mode) and `seed%04d.png` = (img * 127.5 + 128) clipped to [0, 255], cast to uint8.
--seeds takes comma-separated seeds and inclusive ranges ("0-7", "1,5,12", "0-7,12": the
reference's num_range, plus mixing the two). noise_mode "random" draws from
jax.random.PRNGKey(seed) (the reference's draws come from torch's unseeded global generator).
The generator is compiled once for all seeds by the inference path (gankd_jax/inference.py), in
--precision (float32 by default, as the reference computes).
Bad input (seeds, class, network) is one line on stderr and exit status 2, before any compute.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import sys

from absl import app, flags, logging

from gankd_jax.cli import define_precision_flag, fail, parse_flags

FLAGS = flags.FLAGS
NOISE_MODES = ("const", "random", "none")
MAX_SEED = 2**32 - 1  # np.random.RandomState's seed range.


def define_flags():
  """Defines the command's flags; only when run as a command (see evaluate.py)."""
  flags.DEFINE_string("network", None, "Network pickle (.pkl), generator state dict (.pth) or "
                      "WORKDIR[:role] of a StyleGAN2 run.")
  flags.DEFINE_string("seeds", None, "Seeds: comma-separated numbers and ranges, e.g. 0-7,12.")
  flags.DEFINE_string("outdir", None, "Where to write seed%04d.png.")
  flags.DEFINE_float("trunc", 1.0, "Truncation psi.")
  flags.DEFINE_enum("noise-mode", "const", list(NOISE_MODES), "Noise mode.")
  flags.DEFINE_integer("class", None, "Class label (required by conditional networks).")
  define_precision_flag("float32")


def parse_seeds(text: str) -> list[int]:
  """'0-7,12' -> [0, ..., 7, 12]; one-line ValueError for anything else."""
  seeds: list[int] = []
  for part in (text or "").split(","):
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
    if not match:
      raise ValueError(f"--seeds: bad seed list {text!r} (expected numbers and ranges, e.g. 0-7,12)")
    first, last = int(match.group(1)), int(match.group(2) or match.group(1))
    if last < first:
      raise ValueError(f"--seeds: empty range {part.strip()!r} in {text!r}")
    if last > MAX_SEED:
      raise ValueError(f"--seeds: seed {last} is over {MAX_SEED}")
    seeds.extend(range(first, last + 1))
  return seeds


def split_network(network: str) -> tuple[str, str | None]:
  """'DIR:role' -> (DIR, role) for a run directory; a file (or a plain DIR) -> (path, None)."""
  if os.path.exists(network):
    return network, None
  head, sep, role = network.rpartition(":")
  if sep and role and os.path.exists(head):
    return head, role
  raise ValueError(f"--network: no such file or run directory: {network}")


@dataclasses.dataclass(frozen=True, eq=False)  # Hashed by identity: a static jit argument.
class LatentGenerator:
  """A run's unconditional generator other than StyleGAN2 (e.g. a DCGAN): z -> images, with no
  labels, truncation or noise. Has the StyleGAN2 module's `apply` signature for `synthesize`."""
  network: object  # methods.base.Network (apply_fn, variables, input_shape)
  z_dim: int
  c_dim: int = 0

  def apply(self, variables, z, c, truncation_psi, noise_mode, rngs):
    del c, truncation_psi, noise_mode, rngs
    return self.network.apply_fn(variables, z)


def _workdir_generator(workdir: str, role: str | None):
  """(module, variables) of a latent generator role of one of our runs' latest checkpoint."""
  from gankd_jax import runs  # pylint: disable=import-outside-toplevel
  from gankd_jax.models import stylegan2  # pylint: disable=import-outside-toplevel
  restored = runs.restore_run(workdir)
  method, roles = restored.method, restored.method.generator_roles
  if role is None:
    if len(roles) != 1:
      raise ValueError(f"--network: {workdir} has the generator roles {', '.join(roles)}; name one "
                       f"as {workdir}:ROLE")
    role = roles[0]
  if role not in roles:
    raise ValueError(f"--network: {workdir} (a {restored.config.method} run) has no generator role "
                     f"'{role}'; its roles: {', '.join(roles)}")
  if isinstance(getattr(method, "generator", None), stylegan2.Generator):
    return method.generator, restored.state.generator_ema
  network = method.networks(restored.state, restored.frozen)[role]
  if len(network.input_shape) != 1:
    raise ValueError(f"--network: {workdir}:{role} translates images (its input is "
                     f"{'x'.join(map(str, network.input_shape))}), it does not generate from a latent")
  return LatentGenerator(network, network.input_shape[0]), network.variables


def load_generator(network: str):
  """(module, variables) of the generator --network names."""
  path, role = split_network(network)
  if os.path.isdir(path):
    return _workdir_generator(path, role)
  if role is not None:
    raise ValueError(f"--network: {path} is a file; ':{role}' only names a run's generator")
  from gankd_jax.weights import network_pickle  # pylint: disable=import-outside-toplevel
  return network_pickle.load_network(path, "G_ema")


def class_label(c_dim: int, class_idx: int | None, *, warn: bool = True):
  """The [1, c_dim] one-hot label (zeros for an unconditional network)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  label = np.zeros([1, c_dim], np.float32)
  if c_dim:
    if class_idx is None:
      raise ValueError("--class: must specify a class label with --class when using a conditional "
                       f"network (c_dim {c_dim})")
    if not 0 <= class_idx < c_dim:
      raise ValueError(f"--class: {class_idx} is not a class of this network (0..{c_dim - 1})")
    label[0, class_idx] = 1
  elif class_idx is not None and warn:
    print("warning: --class ignored: the network is unconditional", file=sys.stderr)
  return label


@functools.lru_cache(maxsize=None)
def _jitted_apply():
  import jax  # pylint: disable=import-outside-toplevel

  @functools.partial(jax.jit, static_argnames=("module", "noise_mode"))
  def apply(module, variables, z, c, truncation_psi, key, noise_mode):
    return module.apply(variables, z, c, truncation_psi=truncation_psi, noise_mode=noise_mode,
                        rngs={"noise": key})
  return apply


def synthesize(module, variables, z, c, *, truncation_psi: float = 1.0, noise_mode: str = "const",
               seed: int = 0):
  """G(z, c) as float NHWC images, compiled once per module and noise mode (psi is traced)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  return _jitted_apply()(module, variables, np.asarray(z, np.float32), np.asarray(c, np.float32),
                         np.float32(truncation_psi), jax.random.PRNGKey(seed), noise_mode)


def images(module, variables, seeds, *, truncation_psi: float = 1.0, noise_mode: str = "const",
           class_idx: int | None = None, precision: str = "float32"):
  """Yields (seed, uint8 HWC image) per seed, as the reference's generate.py computes them."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  if noise_mode not in NOISE_MODES:
    raise ValueError(f"--noise-mode: {noise_mode!r} is not one of {', '.join(NOISE_MODES)}")
  import jax  # pylint: disable=import-outside-toplevel
  from gankd_jax.inference import compile_inference  # pylint: disable=import-outside-toplevel
  label = class_label(module.c_dim, class_idx, warn=False)  # generate() warned already.
  # One compile for every seed, the weights as constants (the inference path); psi stays an input.
  forward = compile_inference(
      lambda v, z, c, psi, key: module.apply(v, z, c, truncation_psi=psi, noise_mode=noise_mode,
                                             rngs={"noise": key}), variables, precision=precision)
  for seed in seeds:
    z = np.random.RandomState(seed).randn(1, module.z_dim)
    img = np.asarray(forward(np.asarray(z, np.float32), np.asarray(label, np.float32),
                             np.float32(truncation_psi), jax.random.PRNGKey(seed)))[0]
    # float32 arithmetic, then truncation toward zero, as torch's .clamp(0, 255).to(torch.uint8).
    yield seed, (img * np.float32(127.5) + np.float32(128)).clip(0, 255).astype(np.uint8)


def generate(network: str, seeds, outdir: str, *, truncation_psi: float = 1.0,
             noise_mode: str = "const", class_idx: int | None = None,
             precision: str = "float32") -> list[str]:
  """Writes outdir/seed%04d.png per seed; returns the paths."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  if noise_mode not in NOISE_MODES:
    raise ValueError(f"--noise-mode: {noise_mode!r} is not one of {', '.join(NOISE_MODES)}")
  module, variables = load_generator(network)
  class_label(module.c_dim, class_idx)  # Checked before any compute.
  if isinstance(module, LatentGenerator) and (truncation_psi != 1.0 or noise_mode != "const"):
    raise ValueError(f"--trunc and --noise-mode apply to StyleGAN2 generators only; {network} is "
                     "another kind (leave them at 1.0 and const)")
  os.makedirs(outdir, exist_ok=True)
  paths = []
  for seed, img in images(module, variables, seeds, truncation_psi=truncation_psi,
                          noise_mode=noise_mode, class_idx=class_idx, precision=precision):
    path = os.path.join(outdir, f"seed{seed:04d}.png")
    Image.fromarray(img[:, :, 0] if img.shape[-1] == 1 else img).save(path)
    paths.append(path)
  return paths


def main(argv):
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.ERROR)  # JAX's backend probing notes are not ours to print.
  for name in ("network", "seeds", "outdir"):
    if not FLAGS[name].value:
      fail(f"--{name} is required")
  from gankd_jax import xla_cpu  # pylint: disable=import-outside-toplevel
  xla_cpu.configure(inference=True)
  try:
    seeds = parse_seeds(FLAGS.seeds)
    paths = generate(FLAGS.network, seeds, FLAGS.outdir, truncation_psi=FLAGS.trunc,
                     noise_mode=FLAGS["noise-mode"].value, class_idx=FLAGS["class"].value,
                     precision=FLAGS.precision)
  except ValueError as error:
    fail(str(error))
  print(f"wrote {len(paths)} images to {FLAGS.outdir}", file=sys.stderr)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
