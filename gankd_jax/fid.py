"""Command line FID, as pytorch-fid computes it, in JAX.

  python -m gankd_jax.fid PATH1 PATH2 [--inception_weights=FILE] [--batch_size=N]
      [--precision=float32|bfloat16]
      prints `FID: <value>`; a PATH is a folder of images or an .npz with `mu` and `sigma`
  python -m gankd_jax.fid --save_stats PATH OUT.npz
      writes pytorch-fid-compatible statistics of the images in PATH

Folders are read as pytorch-fid reads them: the image files directly inside (not sub-folders),
sorted, each converted to RGB (greyscale and RGBA are fine) and scaled to [0, 1]. Images of mixed
sizes are each resized to 299x299 on the host with the network's own bilinear (no antialias)
resize, then batched. Every file is checked before any compute; a corrupt one is named.
Weights: `--inception_weights`, else the cache, else a download of pytorch-fid's
pt_inception-2015-12-05-6726825d.pth (checked against its SHA-256 prefix).
--precision=bfloat16 runs the Inception's convolutions in bfloat16 (config.precision); the default,
float32, is what pytorch-fid computes, and the one to compare with published FIDs.
"""
from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from gankd_jax.cli import define_precision_flag, fail, parse_flags

FLAGS = flags.FLAGS


def define_flags():
  """Defines the command's flags; only when run as a command, so that importing this module
  beside another command (tests, notebooks) does not define a flag twice."""
  flags.DEFINE_string("inception_weights", None,
                      "pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or an .npz of the same tensors).")
  flags.DEFINE_integer("batch_size", 50, "Images per Inception batch (rounded up to the device count).")
  flags.DEFINE_bool("save_stats", False, "Write the statistics of PATH (a folder) to OUT.npz instead.")
  flags.DEFINE_integer("num_devices", 0, "Devices to shard batches over (0: all).")
  define_precision_flag("float32", "float32 is pytorch-fid's")


def list_folder_images(folder: str) -> list[str]:
  """Image files directly inside `folder`, sorted (pytorch-fid's listing, any extension case)."""
  from gankd_jax.data.images import is_image_file
  if not os.path.isdir(folder):
    raise ValueError(f"{folder} is neither a folder of images nor an .npz statistics file")
  files = sorted(os.path.join(folder, n) for n in os.listdir(folder)
                 if is_image_file(n) and os.path.isfile(os.path.join(folder, n)))
  if len(files) < 2:
    raise ValueError(f"{folder} holds {len(files)} image file(s); FID statistics need at least 2")
  return files


def load_image_01(path: str, size: int) -> np.ndarray:
  """One file as pytorch-fid loads it (RGB, [0, 1]), resized to `size` x `size` on the host."""
  from gankd_jax.data.images import decode_rgb
  from gankd_jax.models.inception import resize_bilinear_numpy
  image = decode_rgb(path).astype(np.float32) / 255.0
  return resize_bilinear_numpy(image, size, size)


def inception_extractor(weights: str | None, batch_size: int, mesh=None, *, flag="--inception_weights",
                        precision: str = "float32"):
  """A sharded extractor of pytorch-fid Inception {"pool", "logits"} for [0, 1] images, in
  `precision` (config.precision)."""
  from gankd_jax.metrics.features import FeatureExtractor
  from gankd_jax.models import inception, layers
  from gankd_jax.weights import download
  path = download.resolve(download.INCEPTION_FID, weights, flag=flag)
  variables = inception.load_inception(path)
  return FeatureExtractor(layers.with_precision(precision, inception.InceptionV3().apply), variables,
                          batch_size, mesh)


def folder_statistics(files: list[str], extractor) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) of the Inception pool features of `files`, streamed batch by batch."""
  from gankd_jax.metrics.fid import GaussianStats
  from gankd_jax.models.inception import INPUT_SIZE, POOL_FEATURES
  stats = GaussianStats(POOL_FEATURES)
  for start in range(0, len(files), extractor.batch_size):
    batch = np.stack([load_image_01(f, INPUT_SIZE) for f in files[start:start + extractor.batch_size]])
    stats.update(extractor(batch)["pool"])
  return stats.result()


def validate_path(path: str) -> list[str] | None:
  """None for an .npz (checked when read), else the folder's image files (all checked now)."""
  from gankd_jax.data.images import validate_image_files
  if path.endswith(".npz"):
    if not os.path.isfile(path):
      raise ValueError(f"statistics file {path} does not exist")
    return None
  files = list_folder_images(path)
  validate_image_files(files, cache_for=path)
  return files


def main(argv):
  paths = argv[1:]
  if len(paths) != 2:
    fail("expected two paths: PATH1 PATH2 (or --save_stats PATH OUT.npz)")
  if FLAGS.batch_size <= 0:
    fail(f"--batch_size must be positive, got {FLAGS.batch_size}")
  from gankd_jax import parallel
  from gankd_jax.metrics import fid
  try:
    if FLAGS.save_stats:
      source, out = paths
      if os.path.exists(out):
        raise ValueError(f"{out} exists; not overwriting it")
      if not out.endswith(".npz"):
        raise ValueError(f"output {out} must end in .npz")
      if source.endswith(".npz"):
        raise ValueError(f"--save_stats takes a folder of images, got {source}")
      files = validate_path(source)
    else:
      files_by_path = [validate_path(p) for p in paths]
    mesh = parallel.make_mesh(FLAGS.num_devices or None)
    needs_network = FLAGS.save_stats or any(f is not None for f in files_by_path)
    extractor = (inception_extractor(FLAGS.inception_weights, FLAGS.batch_size, mesh,
                                     precision=FLAGS.precision) if needs_network else None)
    if FLAGS.save_stats:
      mu, sigma = folder_statistics(files, extractor)
      fid.save_stats(out, mu, sigma)
      print(f"saved statistics of {len(files)} images to {out}")
      return
    stats = [fid.load_stats(p) if f is None else folder_statistics(f, extractor)
             for p, f in zip(paths, files_by_path)]
    value = fid.frechet_distance(*stats[0], *stats[1])
  except ValueError as error:
    fail(str(error))
  print(f"FID: {value}")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
