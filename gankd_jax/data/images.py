"""Image file helpers: listing, up-front validation, decoding and pixel conversions.

Everything here works on uint8 HWC RGB numpy arrays (what PIL decodes) until the
last step, `to_unit_range`, which gives the project's float32 [-1, 1] convention.
Validation runs before any training compute so a bad dataset fails in seconds
with a one-line `ValueError` that names the offending file.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
from PIL import Image

# The pix2pix / CycleGAN image extensions (case-insensitive here).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(name: str) -> bool:
  """True when the file name has one of the supported image extensions."""
  return name.lower().endswith(IMAGE_EXTENSIONS)


def list_image_files(directory: str) -> list[str]:
  """All image files under `directory` (recursive), sorted so indices are stable."""
  found = []
  for root, dirs, names in os.walk(directory):
    dirs.sort()
    found.extend(os.path.join(root, n) for n in names if is_image_file(n))
  return sorted(found)


def inspect_image_file(path: str, *, require_even_width: bool = False) -> tuple[int, int]:
  """Return (width, height) of an image after PIL's integrity check; ValueError if unusable."""
  try:
    with Image.open(path) as image:
      size = image.size
      image.verify()
  except Exception as error:  # PIL raises many types for broken files.
    raise ValueError(f"cannot decode image file {path}: {type(error).__name__}: {error}") from None
  if require_even_width and size[0] % 2:
    raise ValueError(
        f"image file {path} has odd width {size[0]}; an aligned A|B image needs an even width")
  return size


def validate_image_files(paths: Sequence[str], *, require_even_width: bool = False,
                         num_threads: int = 8) -> list[tuple[int, int]]:
  """Check every file in parallel (I/O bound) and return their (width, height) sizes.

  Raises the error of the first bad file in sorted order, so the message is reproducible.
  """
  def check(path):
    try:
      return inspect_image_file(path, require_even_width=require_even_width), None
    except ValueError as error:
      return None, error

  with ThreadPoolExecutor(max(1, num_threads)) as pool:
    results = list(pool.map(check, paths))
  for _, error in results:
    if error is not None:
      raise error
  return [size for size, _ in results]


def decode_rgb(path: str) -> np.ndarray:
  """Decode an image file to a uint8 (H, W, 3) RGB array (grey/alpha converted as pix2pix does)."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except Exception as error:
    raise ValueError(f"cannot decode image file {path}: {type(error).__name__}: {error}") from None


def split_side_by_side(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Split an aligned pix2pix image into its left and right halves."""
  half = image.shape[1] // 2
  return image[:, :half], image[:, half:2 * half]


def resize_bicubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bicubic resize of a uint8 HWC image with PIL (the pix2pix resampler); no-op at equal size."""
  if image.shape[:2] == (height, width):
    return image
  return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))


def to_unit_range(image: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1], exactly ToTensor followed by Normalize(0.5, 0.5)."""
  return (image.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)
