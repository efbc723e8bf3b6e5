"""Apply an image-to-image generator to a folder of images, as junyanz's `test.py --eval` does.

  python -m gankd_jax.translate --network=FILE.pth|WORKDIR[:role] --input=DIR --output=DIR
      [--size=256] [--direction=AtoB] [--paired=auto|true|false] [--arch=NAME[,key=value...]]
      [--precision=float32|bfloat16]

--network: a PyTorch generator checkpoint (pix2pix / CycleGAN `latest_net_G.pth`, gan-compression
or OMGD; read without torch, architecture detected or forced by --arch: see
weights/generator_pth.py), or a run directory of ours and one of its generator roles
(WORKDIR:role; without a role, `student` when the run has one). The generator runs through the
inference path (gankd_jax/inference.py) in --precision: by default the run's config.precision, or
float32 for a .pth.

Per image (files with the reference's image extensions, in sorted order), as the reference's
test path does with its test defaults (load_size = crop_size = --size, no flip):
RGB, for a paired A|B image the A half (the B half with --direction=BtoA), bicubic resize to
size x size (PIL, as torchvision's Resize of a PIL image), [0, 1] then (x - 0.5) / 0.5, the
generator in eval mode (BatchNorm running statistics, no dropout), and its `tensor2im`:
`(y + 1) / 2 * 255` in float32, truncated to uint8. The result is `OUTPUT/<input stem>.png`, so it
can be compared file by file with the reference's `<stem>_fake_B.png`.
--paired=auto treats a folder whose images are all twice as wide as high as paired.
Bad input (network, empty folder, an image that cannot be decoded) is one line on stderr and
exit status 2, before any image is written.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from gankd_jax.cli import define_precision_flag, fail, parse_flags

FLAGS = flags.FLAGS
# The reference's data/image_folder.py IMG_EXTENSIONS (compared case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff")
DIRECTIONS = ("AtoB", "BtoA")
PAIRED = ("auto", "true", "false")


def define_flags():
  """Defines the command's flags; only when run as a command (see evaluate.py)."""
  flags.DEFINE_string("network", None, "PyTorch generator (.pth) or WORKDIR[:role] of our run.")
  flags.DEFINE_string("input", None, "Folder of input images.")
  flags.DEFINE_string("output", None, "Folder for OUTPUT/<stem>.png.")
  flags.DEFINE_integer("size", 256, "Images are resized to size x size (bicubic).")
  flags.DEFINE_enum("direction", "AtoB", list(DIRECTIONS), "Half of a paired image to translate.")
  flags.DEFINE_enum("paired", "auto", list(PAIRED), "Whether input images are A|B pairs.")
  flags.DEFINE_string("arch", None, "Force the architecture of a .pth (e.g. unet_256,ngf=64).")
  define_precision_flag(None, "default: a run's config.precision, float32 for a .pth")


def list_images(folder: str) -> list[str]:
  """Image files of a folder, sorted; one-line ValueError if there is none."""
  if not os.path.isdir(folder):
    raise ValueError(f"--input: {folder} is not a folder")
  names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS)
                 and os.path.isfile(os.path.join(folder, n)))
  if not names:
    raise ValueError(f"--input: {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
  return [os.path.join(folder, n) for n in names]


def read_images(paths: list[str]):
  """Decoded RGB PIL images; one-line ValueError naming the first that cannot be decoded."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  images = []
  for path in paths:
    try:
      with Image.open(path) as image:
        images.append(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
      raise ValueError(f"--input: cannot decode {path} ({type(error).__name__})") from None
  return images


def is_paired(images, paired: str) -> bool:
  if paired != "auto":
    return paired == "true"
  return all(image.width == 2 * image.height for image in images)


def preprocess(image, size: int, *, paired: bool, direction: str = "AtoB"):
  """(1, size, size, 3) float32 in [-1, 1], the reference's test transform."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  if paired:
    half = image.width // 2
    box = (0, 0, half, image.height) if direction == "AtoB" else (half, 0, image.width, image.height)
    image = image.crop(box)
  if image.size != (size, size):
    image = image.resize((size, size), Image.BICUBIC)
  x = np.asarray(image, np.float32) / np.float32(255)
  return ((x - np.float32(0.5)) / np.float32(0.5))[None]


def to_uint8(y):
  """The reference's tensor2im on one (H, W, C) output: (y + 1) / 2 * 255, truncated."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  y = np.asarray(y, np.float32)
  if y.shape[-1] == 1:
    y = np.tile(y, (1, 1, 3))
  return ((y + np.float32(1)) / np.float32(2) * np.float32(255)).astype(np.uint8)


def _workdir_translator(workdir: str, role: str | None, precision: str | None):
  from gankd_jax import runs  # pylint: disable=import-outside-toplevel
  from gankd_jax.inference import compile_inference  # pylint: disable=import-outside-toplevel
  from gankd_jax.models import layers  # pylint: disable=import-outside-toplevel
  restored = runs.restore_run(workdir)
  roles = restored.method.generator_roles
  if role is None:
    role = "student" if "student" in roles else (roles[0] if len(roles) == 1 else None)
    if role is None:
      raise ValueError(f"--network: {workdir} has the generator roles {', '.join(roles)}; name one "
                       f"as {workdir}:ROLE")
  if role not in roles:
    raise ValueError(f"--network: {workdir} has no generator role '{role}'; its roles: "
                     f"{', '.join(roles)}")
  network = restored.method.networks(restored.state, restored.frozen)[role]
  if len(network.input_shape) != 3:
    raise ValueError(f"--network: {workdir}:{role} does not translate images")
  return compile_inference(network.apply_fn, network.variables,
                           precision=precision or layers.precision_of(restored.config))


def load_translator(network: str, size: int, arch: str | None = None,
                    precision: str | None = None):
  """`forward(x)` of the generator --network names (checked to take size x size images),
  compiled by the inference path (gankd_jax/inference.py) in `precision` (None: a run's
  config.precision, float32 for a .pth)."""
  from gankd_jax import models  # pylint: disable=import-outside-toplevel
  from gankd_jax.inference import compile_inference  # pylint: disable=import-outside-toplevel
  from gankd_jax.generate import split_network  # pylint: disable=import-outside-toplevel
  from gankd_jax.weights import generator_pth  # pylint: disable=import-outside-toplevel
  path, role = split_network(network)
  if os.path.isdir(path):
    if arch:
      raise ValueError("--arch applies to .pth files, not to run directories")
    return _workdir_translator(path, role, precision)
  if role is not None:
    raise ValueError(f"--network: {path} is a file; ':{role}' only names a run's generator")
  imported = generator_pth.load_generator(path, arch)
  spec = imported.spec
  try:
    models.check_image_size(spec.family, size, **spec.generator_kwargs())
  except ValueError as error:
    raise ValueError(f"--size: {error}") from None
  for note in imported.notes:
    print(f"note: {note}", file=sys.stderr)
  module = imported.module
  return compile_inference(lambda v, x: module.apply(v, x, train=False), imported.variables,
                           precision=precision or "float32")


def translate(network: str, input_dir: str, output_dir: str, *, size: int = 256,
              direction: str = "AtoB", paired: str = "auto", arch: str | None = None,
              precision: str | None = None) -> list[str]:
  """Writes output_dir/<stem>.png per input image; returns the paths."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  if size <= 0:
    raise ValueError(f"--size must be positive, got {size}")
  if direction not in DIRECTIONS:
    raise ValueError(f"--direction: {direction!r} is not one of {', '.join(DIRECTIONS)}")
  paths = list_images(input_dir)
  stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
  if len(set(stems)) != len(stems):
    duplicate = next(s for s in stems if stems.count(s) > 1)
    raise ValueError(f"--input: two images of {input_dir} have the stem {duplicate!r}")
  images = read_images(paths)
  forward = load_translator(network, size, arch, precision)
  pairs = is_paired(images, paired)
  os.makedirs(output_dir, exist_ok=True)
  written = []
  for stem, image in zip(stems, images):
    x = preprocess(image, size, paired=pairs, direction=direction)
    y = np.asarray(forward(x))[0]
    out = os.path.join(output_dir, f"{stem}.png")
    Image.fromarray(to_uint8(y)).save(out)
    written.append(out)
  return written


def main(argv):
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.ERROR)
  for name in ("network", "input", "output"):
    if not FLAGS[name].value:
      fail(f"--{name} is required")
  from gankd_jax import xla_cpu  # pylint: disable=import-outside-toplevel
  xla_cpu.configure(inference=True)
  try:
    paths = translate(FLAGS.network, FLAGS.input, FLAGS.output, size=FLAGS.size,
                      direction=FLAGS.direction, paired=FLAGS.paired, arch=FLAGS.arch,
                      precision=FLAGS.precision)
  except ValueError as error:
    fail(str(error))
  print(f"wrote {len(paths)} images to {FLAGS.output}", file=sys.stderr)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
