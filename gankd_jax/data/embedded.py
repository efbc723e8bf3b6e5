"""'embedded_edges2photo': a small real edges->photo dataset that needs no download.

Why: tests, smoke runs and the out-of-the-box default need real paired images on machines
without network access. scikit-image ships a few colour photos inside its wheel and scikit-learn two more (a Chinese
temple and a flower, `sklearn:` below); from each we
cut many overlapping square crops at several scales, resize them to `crop_size`, and compute an
edge map with Canny on the greyscale crop, drawn black on white as in edges2shoes.
A = edge map (3 identical channels), B = photo crop, both uint8.

The held-out split is made BY SOURCE PHOTO (the two motorcycle stereo views count as one
source), so no test crop shares pixels with a training crop. Everything is deterministic; the
built arrays are cached as .npz under ~/.cache/gankd_jax/ (or $GANKD_CACHE), keyed by
the build parameters and written atomically, so concurrent processes can share it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from gankd_jax.data.paired import PairedDataset, PairTransform, check_direction
from gankd_jax.weights import download

DATASET_NAME = "embedded_edges2photo"
BUILD_VERSION = 2
# Source photo -> files in skimage/data (or sklearn/datasets/images with the "sklearn:" prefix);
# files of one source never straddle the split.
SOURCES = {
    "astronaut": ("astronaut.png",),
    "rocket": ("rocket.jpg",),
    "motorcycle": ("motorcycle_left.png", "motorcycle_right.png"),
    "hubble_deep_field": ("hubble_deep_field.jpg",),
    "retina": ("retina.jpg",),
    "ihc": ("ihc.png",),
    "chelsea": ("chelsea.png",),
    "coffee": ("coffee.png",),
    # Two more natural photos for training: the held-out cat and cup are natural photos too.
    "china": ("sklearn:china.jpg",),
    "flower": ("sklearn:flower.jpg",),
}
TEST_SOURCES = ("chelsea", "coffee")
# Crop sides as fractions of the photo's short side; neighbouring crops overlap by half.
CROP_SCALES = (1.0, 0.7, 0.5, 0.35, 0.25, 0.18)


def skimage_data_dir() -> str:
  """Folder of the photos bundled in the scikit-image wheel (no pooch download involved)."""
  import skimage.data
  return os.path.dirname(skimage.data.__file__)


def source_file_path(file_name: str) -> str:
  """Where a SOURCES entry lives inside the installed wheels."""
  if file_name.startswith("sklearn:"):
    import sklearn.datasets
    return os.path.join(os.path.dirname(sklearn.datasets.__file__), "images",
                        file_name[len("sklearn:"):])
  return os.path.join(skimage_data_dir(), file_name)


def default_cache_dir() -> str:
  """The package's one cache folder: `$GANKD_CACHE`, else ~/.cache/gankd_jax."""
  return download.cache_dir()


def default_edge_sigma(crop_size: int) -> float:
  """Canny smoothing that gives edges2shoes-like sparse outlines: 1.5 px at 64 px, scaled."""
  return 1.5 * crop_size / 64.0


def grid_offsets(length: int, side: int) -> list[int]:
  """Evenly spaced crop starts covering [0, length) with about half-side overlap."""
  if length <= side:
    return [0]
  count = math.ceil((length - side) / max(1, side // 2)) + 1
  return [round(i * (length - side) / (count - 1)) for i in range(count)]


def crop_boxes(width: int, height: int, scales: Sequence[float]) -> list[tuple[int, int, int, int]]:
  """(left, top, right, bottom) square crop boxes, every scale, row-major order."""
  boxes = []
  for scale in scales:
    side = max(1, round(scale * min(width, height)))
    for top in grid_offsets(height, side):
      for left in grid_offsets(width, side):
        boxes.append((left, top, left + side, top + side))
  return boxes


def edge_map(photo: np.ndarray, sigma: float) -> np.ndarray:
  """Canny edges of a uint8 RGB image as a uint8 3-channel image: 0 on edges, 255 elsewhere."""
  from skimage.color import rgb2gray
  from skimage.feature import canny
  edges = canny(rgb2gray(photo), sigma=sigma)
  return np.repeat(np.where(edges, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def photo_crops(path: str, crop_size: int, scales: Sequence[float]) -> np.ndarray:
  """All crops of one photo, bicubic-resized to crop_size: uint8 (N, S, S, 3)."""
  with Image.open(path) as image:
    image = image.convert("RGB")
    crops = [np.asarray(image.resize((crop_size, crop_size), Image.BICUBIC, box=box))
             for box in crop_boxes(*image.size, scales)]
  return np.stack(crops)


def build_pairs(sources: Sequence[str], crop_size: int, scales: Sequence[float],
                edge_sigma: float) -> dict[str, np.ndarray]:
  """Edge/photo pairs for the given sources: {'A', 'B': uint8 (N,S,S,3), 'source': int (N,)}."""
  a_parts, b_parts, source_ids = [], [], []
  for name in sources:
    if name not in SOURCES:
      raise ValueError(f"unknown embedded source photo {name!r}; choices: {sorted(SOURCES)}")
    for file_name in SOURCES[name]:
      photos = photo_crops(source_file_path(file_name), crop_size, scales)
      a_parts.append(np.stack([edge_map(p, edge_sigma) for p in photos]))
      b_parts.append(photos)
      source_ids.append(np.full(len(photos), list(SOURCES).index(name), np.int32))
  return {"A": np.concatenate(a_parts), "B": np.concatenate(b_parts),
          "source": np.concatenate(source_ids)}


def cache_key(split: str, crop_size: int, scales: Sequence[float], edge_sigma: float) -> str:
  """Short hash of everything that changes the built arrays."""
  import skimage
  import sklearn
  params = {"version": BUILD_VERSION, "split": split, "crop_size": crop_size,
            "scales": list(scales), "edge_sigma": edge_sigma, "sources": SOURCES,
            "test": TEST_SOURCES, "skimage": skimage.__version__, "sklearn": sklearn.__version__}
  return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def save_npz_atomic(path: str, arrays: dict[str, np.ndarray]) -> None:
  """Write to a temporary file in the same folder, then rename: readers never see half a file."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  handle, tmp_path = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp.npz")
  try:
    with os.fdopen(handle, "wb") as stream:
      np.savez(stream, **arrays)
    os.chmod(tmp_path, 0o644)  # mkstemp makes it private; the cache is shareable
    os.replace(tmp_path, path)
  except BaseException:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    raise


def load_pairs(split: str, crop_size: int = 64, *, scales: Sequence[float] = CROP_SCALES,
               edge_sigma: Optional[float] = None,
               cache_dir: Optional[str] = None) -> dict[str, np.ndarray]:
  """Pairs of the 'train' or 'test' split, from the cache when present (built otherwise)."""
  if split not in ("train", "test"):
    raise ValueError(f"embedded split must be 'train' or 'test', got {split!r}")
  sigma = default_edge_sigma(crop_size) if edge_sigma is None else float(edge_sigma)
  sources = TEST_SOURCES if split == "test" else [s for s in SOURCES if s not in TEST_SOURCES]
  cache_dir = default_cache_dir() if cache_dir is None else cache_dir
  path = os.path.join(cache_dir, f"{DATASET_NAME}_{split}_{crop_size}_"
                                 f"{cache_key(split, crop_size, scales, sigma)}.npz")
  try:
    with np.load(path) as cached:
      return {key: cached[key] for key in ("A", "B", "source")}
  except (OSError, KeyError, ValueError):
    pass  # missing or unreadable cache: rebuild.
  pairs = build_pairs(sources, crop_size, scales, sigma)
  try:
    save_npz_atomic(path, pairs)
  except OSError:
    pass  # read-only home: caching is an optimisation only.
  return pairs


class EmbeddedEdgesToPhoto(PairedDataset):
  """In-memory edges->photo pairs built from scikit-image's bundled photos (see module doc)."""

  def __init__(self, split: str, transform: PairTransform, *, direction: str = "AtoB",
               cache_dir: Optional[str] = None):
    self.direction = check_direction(direction)
    pairs = load_pairs(split, transform.crop_size, cache_dir=cache_dir)
    self.split = split
    self.transform = transform
    self.a, self.b = (pairs["A"], pairs["B"]) if direction == "AtoB" else (pairs["B"], pairs["A"])
    self.source_ids = pairs["source"]
    self.num_examples = len(self.a)

  @property
  def source_names(self) -> list[str]:
    """Name of the photo each example was cut from."""
    names = list(SOURCES)
    return [names[i] for i in self.source_ids]

  def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    return self.a[index], self.b[index]
