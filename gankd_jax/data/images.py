"""Image file helpers: listing, up-front validation, decoding and pixel conversions.

Everything here works on uint8 HWC RGB numpy arrays (what PIL decodes) until the
last step, `to_unit_range`, which gives the project's float32 [-1, 1] convention.
Validation decodes every file fully, before any training compute and before a run's
workdir is made, so a bad dataset (a truncated JPEG passes a header check) fails in seconds with
a one-line `ImageFileError` that names the offending file, not hours into training. It runs in a
thread pool (PIL decodes with the GIL released) and remembers the files that decoded, keyed by
(path, size, mtime), in a JSON file per image folder under the package cache
(`$GANKD_CACHE/image_checks/`, else `~/.cache/gankd_jax/image_checks/`), so a second start only
stats the files. The user's data folder is never written to.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np
from PIL import Image

# The pix2pix / CycleGAN image extensions (case-insensitive here).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")
CHECK_CACHE_VERSION = 1


class ImageFileError(ValueError):
  """An image file that cannot be decoded (one line naming it); the CLI exits 2 on it."""


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
  """Return (width, height) of an image after decoding every pixel; ImageFileError if unusable."""
  try:
    with Image.open(path) as image:
      image.load()  # The whole file: a truncated one fails here, not when a batch reaches it.
      size = image.size
  except Exception as error:  # PIL raises many types for broken files.
    raise ImageFileError(
        f"cannot decode image file {path}: {type(error).__name__}: {error}") from None
  check_even_width(path, size, require_even_width)
  return size


def check_even_width(path: str, size: tuple[int, int], require_even_width: bool) -> None:
  if require_even_width and size[0] % 2:
    raise ImageFileError(
        f"image file {path} has odd width {size[0]}; an aligned A|B image needs an even width")


def check_cache_path(directory: str) -> str:
  """The validation cache file of the images under `directory` (one per folder, never inside it)."""
  from gankd_jax.weights import download
  real = os.path.realpath(directory)
  key = hashlib.sha256(real.encode()).hexdigest()[:16]
  name = "-".join(real.strip(os.sep).split(os.sep)[-2:]) or "root"  # e.g. edges2shoes-train
  return os.path.join(download.cache_dir(), "image_checks", f"{name}-{key}.json")


def _read_check_cache(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as stream:
      stored = json.load(stream)
    return stored["files"] if stored.get("version") == CHECK_CACHE_VERSION else {}
  except (OSError, ValueError, KeyError, TypeError, AttributeError):
    return {}  # Missing or unreadable: every file is decoded again.


def _write_check_cache(path: str, files: dict) -> None:
  """Atomic (temporary file + rename), so processes starting together share it safely."""
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
      json.dump({"version": CHECK_CACHE_VERSION, "files": files}, stream)
    os.chmod(tmp_path, 0o644)  # mkstemp makes it private; the cache is shareable.
    os.replace(tmp_path, path)
  except OSError:
    pass  # A read-only cache: only the next start's speed suffers.


def validate_image_files(paths: Sequence[str], *, require_even_width: bool = False,
                         num_threads: int = 8,
                         cache_for: Optional[str] = None) -> list[tuple[int, int]]:
  """Decode every file in parallel and return their (width, height) sizes.

  `cache_for`: the folder the files come from; files that decoded before with the same size and
  mtime are not decoded again (see the module doc). Raises the error of the first bad file in
  sorted order, so the message is reproducible.
  """
  cache_path = check_cache_path(cache_for) if cache_for else None
  known = _read_check_cache(cache_path) if cache_path else {}

  def check(path):
    try:
      stat = os.stat(path)
    except OSError as error:
      return None, None, ImageFileError(f"cannot read image file {path}: {error.strerror}")
    stamp = [stat.st_size, stat.st_mtime_ns]
    entry = known.get(path)
    try:
      if isinstance(entry, list) and entry[:2] == stamp:
        size = (int(entry[2]), int(entry[3]))
        check_even_width(path, size, require_even_width)
      else:
        size = inspect_image_file(path, require_even_width=require_even_width)
    except ImageFileError as error:
      return None, None, error
    return size, stamp, None

  with ThreadPoolExecutor(max(1, num_threads)) as pool:
    results = list(pool.map(check, paths))
  if cache_path:
    files = {path: [*stamp, *size] for path, (size, stamp, _) in zip(paths, results) if size}
    if files != known:
      _write_check_cache(cache_path, files)
  for _, _, error in results:
    if error is not None:
      raise error
  return [size for size, _, _ in results]


def decode_rgb(path: str) -> np.ndarray:
  """Decode an image file to a uint8 (H, W, 3) RGB array (grey/alpha converted as pix2pix does)."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except Exception as error:
    raise ImageFileError(f"cannot decode image file {path}: {type(error).__name__}: {error}") from None


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
