"""'embedded_edges2photo': a small real edges->photo dataset that needs no download.

Why: tests, smoke runs and the out-of-the-box default need real paired images on machines
without network access. scikit-image ships a few colour photos inside its wheel and scikit-learn
two more (a Chinese temple and a flower, `sklearn:` below); from each we cut many square crops at
several scales, resize them to `crop_size`, and compute an edge map with Canny on the greyscale
crop, drawn black on white as in edges2shoes. A = edge map (3 identical channels), B = photo
crop, both uint8.

The held-out split is made BY REGION of every photo: the top `TRAIN_ROWS` of each photo's rows
train, the bottom `1 - HELD_OUT_FROM` are held out, and the rows between are a margin that
neither uses. Until BUILD_VERSION 2 it was made by source photo (a cat and a cup held out, eight
other photos trained), and the teachers of the 1000-step default, having seen nothing like a cat
or a cup, painted generic mottled textures on them that resembled no target (issue 18): the
held-out examples must come from the distribution the teachers train on. Held out by region, the
held-out crops show the same scenes, colours and textures as the training crops, yet share no
source pixel with them: each region is cut out of the photo before any crop is taken or resized
(so no resampling filter reaches across the boundary), no crop straddles it, and the margin keeps
the nearly identical rows next to the boundary out of both splits. Splitting by rows also keeps
the two motorcycle stereo views disjoint: rectified views show a scene point on the same row.
Crop sides are fractions of the photo's short side (its height: every source is landscape or
square), the same in both splits, so both see the same zooms; training crops overlap by half
(more pairs), held-out crops tile their region without overlap (fewer, distinct pairs, so the
evaluation stays cheap).

Everything is deterministic; the built arrays are cached as .npz under ~/.cache/gankd_jax/ (or
$GANKD_CACHE), keyed by the build parameters and written atomically, so concurrent processes can
share it.
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
BUILD_VERSION = 3
# Source photo -> files in skimage/data (or sklearn/datasets/images with the "sklearn:" prefix).
SOURCES = {
    "astronaut": ("astronaut.png",),
    "rocket": ("rocket.jpg",),
    "motorcycle": ("motorcycle_left.png", "motorcycle_right.png"),
    "hubble_deep_field": ("hubble_deep_field.jpg",),
    "retina": ("retina.jpg",),
    "ihc": ("ihc.png",),
    "chelsea": ("chelsea.png",),
    "coffee": ("coffee.png",),
    "china": ("sklearn:china.jpg",),
    "flower": ("sklearn:flower.jpg",),
}
# Rows [0, TRAIN_ROWS) of every photo train, rows [HELD_OUT_FROM, 1) are held out (fractions of
# its height); the 5 % between is a margin neither split uses.
TRAIN_ROWS = 0.6
HELD_OUT_FROM = 0.65
# Crop sides as fractions of the photo's short side; at most the held-out region's 35 % height.
CROP_SCALES = (0.35, 0.25, 0.18, 0.13)


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


def grid_offsets(length: int, side: int, stride: int) -> list[int]:
  """Evenly spaced starts of `side`-long crops inside [0, length), at most `stride` apart;
  none when the crop does not fit."""
  if length < side:
    return []
  if length == side:
    return [0]
  count = math.ceil((length - side) / max(1, stride)) + 1
  return [round(i * (length - side) / (count - 1)) for i in range(count)]


def split_rows(height: int, split: str) -> tuple[int, int]:
  """The [top, bottom) rows of a photo of `height` rows that `split` crops from (module doc)."""
  if split == "train":
    return 0, round(TRAIN_ROWS * height)
  return round(HELD_OUT_FROM * height), height


def crop_boxes(width: int, height: int, scales: Sequence[float], *, short_side: int,
               overlap: bool = True) -> list[tuple[int, int, int, int]]:
  """(left, top, right, bottom) square boxes inside a width x height region, every scale, row-major
  order; sides are `scale * short_side` (the photo's, not the region's); neighbours overlap by
  half a side if `overlap`, else they tile the region."""
  boxes = []
  for scale in scales:
    side = max(1, round(scale * short_side))
    stride = side // 2 if overlap else side
    for top in grid_offsets(height, side, stride):
      for left in grid_offsets(width, side, stride):
        boxes.append((left, top, left + side, top + side))
  return boxes


def edge_map(photo: np.ndarray, sigma: float) -> np.ndarray:
  """Canny edges of a uint8 RGB image as a uint8 3-channel image: 0 on edges, 255 elsewhere."""
  from skimage.color import rgb2gray
  from skimage.feature import canny
  edges = canny(rgb2gray(photo), sigma=sigma)
  return np.repeat(np.where(edges, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def load_photo(file_name: str) -> np.ndarray:
  """A SOURCES file as uint8 RGB (H, W, 3)."""
  with Image.open(source_file_path(file_name)) as image:
    return np.asarray(image.convert("RGB"))


def photo_crops(photo: np.ndarray, split: str, crop_size: int,
                scales: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
  """The crops of one photo's `split` region, bicubic-resized to crop_size: uint8 (N, S, S, 3),
  and their boxes in the photo's coordinates, int (N, 4) as (left, top, right, bottom)."""
  height, width = photo.shape[:2]
  top, bottom = split_rows(height, split)
  # Only the region's own pixels exist for the crops: a resampling filter cannot read across.
  region = Image.fromarray(photo[top:bottom])
  boxes = crop_boxes(width, bottom - top, scales, short_side=min(height, width),
                     overlap=split == "train")
  crops = [np.asarray(region.resize((crop_size, crop_size), Image.BICUBIC, box=box))
           for box in boxes]
  boxes = np.asarray(boxes, np.int32).reshape(-1, 4) + np.asarray([0, top, 0, top], np.int32)
  return np.stack(crops), boxes


def build_pairs(split: str, crop_size: int, scales: Sequence[float], edge_sigma: float,
                sources: Sequence[str] = tuple(SOURCES)) -> dict[str, np.ndarray]:
  """Edge/photo pairs of one split: {'A', 'B': uint8 (N,S,S,3), 'source', 'file_id': int (N,),
  'box': int (N, 4), the crop in its file's pixels}."""
  if split not in ("train", "test"):
    raise ValueError(f"embedded split must be 'train' or 'test', got {split!r}")
  files = [f for names in SOURCES.values() for f in names]
  a_parts, b_parts, source_ids, file_ids, box_parts = [], [], [], [], []
  for name in sources:
    if name not in SOURCES:
      raise ValueError(f"unknown embedded source photo {name!r}; choices: {sorted(SOURCES)}")
    for file_name in SOURCES[name]:
      photos, boxes = photo_crops(load_photo(file_name), split, crop_size, scales)
      a_parts.append(np.stack([edge_map(p, edge_sigma) for p in photos]))
      b_parts.append(photos)
      box_parts.append(boxes)
      source_ids.append(np.full(len(photos), list(SOURCES).index(name), np.int32))
      file_ids.append(np.full(len(photos), files.index(file_name), np.int32))
  return {"A": np.concatenate(a_parts), "B": np.concatenate(b_parts),
          "source": np.concatenate(source_ids), "file_id": np.concatenate(file_ids),
          "box": np.concatenate(box_parts)}


def cache_key(split: str, crop_size: int, scales: Sequence[float], edge_sigma: float) -> str:
  """Short hash of everything that changes the built arrays."""
  import skimage
  import sklearn
  params = {"version": BUILD_VERSION, "split": split, "crop_size": crop_size,
            "scales": list(scales), "edge_sigma": edge_sigma, "sources": SOURCES,
            "rows": [TRAIN_ROWS, HELD_OUT_FROM], "skimage": skimage.__version__, "sklearn": sklearn.__version__}
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


PAIR_KEYS = ("A", "B", "source", "file_id", "box")


def load_pairs(split: str, crop_size: int = 64, *, scales: Sequence[float] = CROP_SCALES,
               edge_sigma: Optional[float] = None,
               cache_dir: Optional[str] = None) -> dict[str, np.ndarray]:
  """Pairs of the 'train' or 'test' split, from the cache when present (built otherwise)."""
  if split not in ("train", "test"):
    raise ValueError(f"embedded split must be 'train' or 'test', got {split!r}")
  sigma = default_edge_sigma(crop_size) if edge_sigma is None else float(edge_sigma)
  cache_dir = default_cache_dir() if cache_dir is None else cache_dir
  path = os.path.join(cache_dir, f"{DATASET_NAME}_{split}_{crop_size}_"
                                 f"{cache_key(split, crop_size, scales, sigma)}.npz")
  try:
    with np.load(path) as cached:
      return {key: cached[key] for key in PAIR_KEYS}
  except (OSError, KeyError, ValueError):
    pass  # missing or unreadable cache: rebuild.
  pairs = build_pairs(split, crop_size, scales, sigma)
  try:
    save_npz_atomic(path, pairs)
  except OSError:
    pass  # read-only home: caching is an optimisation only.
  return pairs


class EmbeddedEdgesToPhoto(PairedDataset):
  """In-memory edges->photo pairs built from the photos bundled in the scikit-image and
  scikit-learn wheels (see module doc)."""

  def __init__(self, split: str, transform: PairTransform, *, direction: str = "AtoB",
               cache_dir: Optional[str] = None):
    self.direction = check_direction(direction)
    pairs = load_pairs(split, transform.crop_size, cache_dir=cache_dir)
    self.split = split
    self.transform = transform
    self.a, self.b = (pairs["A"], pairs["B"]) if direction == "AtoB" else (pairs["B"], pairs["A"])
    self.source_ids = pairs["source"]
    self.file_ids = pairs["file_id"]  # index into SOURCES' files, in order
    self.boxes = pairs["box"]  # (left, top, right, bottom) in that file's pixels
    self.num_examples = len(self.a)

  @property
  def source_names(self) -> list[str]:
    """Name of the photo each example was cut from."""
    names = list(SOURCES)
    return [names[i] for i in self.source_ids]

  def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    return self.a[index], self.b[index]
