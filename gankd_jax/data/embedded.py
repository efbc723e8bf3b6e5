"""'embedded_grey2photo' (the default) and 'embedded_edges2photo': small real paired datasets
that need no download.

Why: tests, smoke runs and the out-of-the-box default need real paired images on machines
without network access. scikit-image ships a few colour photos inside its wheel and scikit-learn
two more (a Chinese temple and a flower, `sklearn:` below); from each we cut many overlapping
square crops at several scales and resize them to `crop_size`. B = the photo crop; A = its
luminance (ITU-R 601, 3 identical channels: pix2pix's black-and-white -> colour task) for
grey2photo, or its Canny edge map drawn black on white (as in edges2shoes) for edges2photo; all
uint8. grey2photo is the default because its teachers visibly learn within the demo's budget: an
edge map of a natural photo leaves colour and texture open, and on edges2photo the 64 px default's
teachers printed generic texture after 1000 steps (held-out wide teacher 11.5 dB PSNR, below the
12.8 dB of painting every crop the training crops' mean colour), while from luminance the
structure is given and the colours are what they learn.

The held-out split is made BY REGION of every photo, so that it comes from the same
distribution as the training split (a split by photo held out a cat and a cup that looked like
nothing the teachers trained on, and they learned nothing visible on it): the left
`HOLDOUT_FRACTION` of each photo's width is the 'test' region, the rest the 'train' region, and
crops are cut inside each region separately (the region is cut out before resizing, so not even
the bicubic filter reads across the boundary): no pixel is shared by a training and a test crop.
Crop sides are the same fractions of the photo's short side in both regions (the same
magnifications); a side that does not fit a region is left out there, so the narrow test strip
holds only the smaller crops. The motorcycle's two stereo views are one source: only the left view
gives test crops; the right view gives training crops from its own right-hand part only, which
shows only scene points that the left view has in its training region too (a rectified pair's
disparity is positive: a point at column x of the left view is at x - d, d >= 0, in the right).

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

# What A is, per task (B is always the photo); the first is the default.
TASKS = ("grey2photo", "edges2photo")
DATASET_NAMES = tuple(f"embedded_{task}" for task in TASKS)
DATASET_NAME = DATASET_NAMES[0]
BUILD_VERSION = 3
# Source photo -> files in skimage/data (or sklearn/datasets/images with the "sklearn:" prefix);
# the first file of a source gives both splits, any further view training crops only.
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
# The held-out strip: this fraction of every photo's width, at its left edge.
HOLDOUT_FRACTION = 0.25
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


def split_region(split: str, width: int, height: int) -> tuple[int, int, int, int]:
  """(left, top, right, bottom) of a photo's 'test' strip (left edge) or 'train' rest."""
  column = round(HOLDOUT_FRACTION * width)
  return (0, 0, column, height) if split == "test" else (column, 0, width, height)


def crop_boxes(region: tuple[int, int, int, int], short_side: int,
               scales: Sequence[float]) -> list[tuple[int, int, int, int]]:
  """Square crop boxes inside `region`, sides `scale * short_side` (those that fit), row-major."""
  left, top, right, bottom = region
  boxes = []
  for scale in scales:
    side = max(1, round(scale * short_side))
    if side > min(right - left, bottom - top):
      continue  # a crop this large would leave the region
    for y in grid_offsets(bottom - top, side):
      for x in grid_offsets(right - left, side):
        boxes.append((left + x, top + y, left + x + side, top + y + side))
  return boxes


def luminance(photo: np.ndarray) -> np.ndarray:
  """ITU-R 601 luma (PIL's 'L') of a uint8 RGB image, as a uint8 3-channel image."""
  grey = np.asarray(Image.fromarray(photo).convert("L"))
  return np.repeat(grey[..., None], 3, axis=-1)


def input_image(task: str, photo: np.ndarray, edge_sigma: float) -> np.ndarray:
  """A of one pair: the photo's luminance (grey2photo) or its edge map (edges2photo); `task`
  checked by the caller."""
  return luminance(photo) if task == "grey2photo" else edge_map(photo, edge_sigma)


def check_task(task: str) -> None:
  if task not in TASKS:
    raise ValueError(f"unknown embedded task {task!r}; choices: {', '.join(TASKS)}")


def task_of(dataset_name: str) -> str:
  """'embedded_grey2photo' -> 'grey2photo'."""
  if dataset_name not in DATASET_NAMES:
    raise ValueError(f"not an embedded paired dataset: {dataset_name!r}; choices: "
                     f"{', '.join(DATASET_NAMES)}")
  return dataset_name[len("embedded_"):]


def edge_map(photo: np.ndarray, sigma: float) -> np.ndarray:
  """Canny edges of a uint8 RGB image as a uint8 3-channel image: 0 on edges, 255 elsewhere."""
  from skimage.color import rgb2gray
  from skimage.feature import canny
  edges = canny(rgb2gray(photo), sigma=sigma)
  return np.repeat(np.where(edges, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def photo_crops(path: str, split: str, crop_size: int,
                scales: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
  """The crops of one photo's `split` region, bicubic-resized to crop_size: uint8 (N, S, S, 3),
  and their boxes in the photo's pixels: int32 (N, 4) (left, top, right, bottom)."""
  with Image.open(path) as image:
    image = image.convert("RGB")
    region = split_region(split, *image.size)
    boxes = crop_boxes(region, min(image.size), scales)
    # Resample from the region alone: the filter then never reads a pixel of the other split.
    part = image.crop(region)
    crops = [np.asarray(part.resize((crop_size, crop_size), Image.BICUBIC,
                                    box=(l - region[0], t - region[1], r - region[0],
                                         b - region[1])))
             for l, t, r, b in boxes]
  return (np.stack(crops) if crops else np.zeros((0, crop_size, crop_size, 3), np.uint8),
          np.asarray(boxes, np.int32).reshape(-1, 4))


def build_pairs(split: str, crop_size: int, scales: Sequence[float], edge_sigma: float,
                sources: Sequence[str] = tuple(SOURCES), *,
                task: str = TASKS[0]) -> dict[str, np.ndarray]:
  """The `task`'s pairs of one split: {'A', 'B': uint8 (N,S,S,3), 'source': int (N,),
  'box': int (N, 4), each crop's box in its source photo's pixels}."""
  check_task(task)
  if split not in ("train", "test"):
    raise ValueError(f"embedded split must be 'train' or 'test', got {split!r}")
  a_parts, b_parts, source_ids, box_parts = [], [], [], []
  for name in sources:
    if name not in SOURCES:
      raise ValueError(f"unknown embedded source photo {name!r}; choices: {sorted(SOURCES)}")
    # Further views of a source train only (see the module doc for why that keeps the split).
    views = SOURCES[name][:1] if split == "test" else SOURCES[name]
    for file_name in views:
      photos, boxes = photo_crops(source_file_path(file_name), split, crop_size, scales)
      a_parts.append(np.asarray([input_image(task, p, edge_sigma) for p in photos],
                                np.uint8).reshape(photos.shape))
      b_parts.append(photos)
      source_ids.append(np.full(len(photos), list(SOURCES).index(name), np.int32))
      box_parts.append(boxes)
  return {"A": np.concatenate(a_parts), "B": np.concatenate(b_parts),
          "source": np.concatenate(source_ids), "box": np.concatenate(box_parts)}


def cache_key(split: str, crop_size: int, scales: Sequence[float], edge_sigma: float,
              task: str) -> str:
  """Short hash of everything that changes the built arrays."""
  import skimage
  import sklearn
  params = {"version": BUILD_VERSION, "task": task, "split": split, "crop_size": crop_size,
            "scales": list(scales), "edge_sigma": edge_sigma, "sources": SOURCES,
            "holdout": HOLDOUT_FRACTION, "skimage": skimage.__version__,
            "sklearn": sklearn.__version__}
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


def load_pairs(split: str, crop_size: int = 64, *, task: str = TASKS[0],
               scales: Sequence[float] = CROP_SCALES, edge_sigma: Optional[float] = None,
               cache_dir: Optional[str] = None) -> dict[str, np.ndarray]:
  """The `task`'s pairs of the 'train' or 'test' split, from the cache when present (built
  otherwise)."""
  check_task(task)
  if split not in ("train", "test"):
    raise ValueError(f"embedded split must be 'train' or 'test', got {split!r}")
  sigma = default_edge_sigma(crop_size) if edge_sigma is None else float(edge_sigma)
  cache_dir = default_cache_dir() if cache_dir is None else cache_dir
  path = os.path.join(cache_dir, f"embedded_{task}_{split}_{crop_size}_"
                                 f"{cache_key(split, crop_size, scales, sigma, task)}.npz")
  try:
    with np.load(path) as cached:
      return {key: cached[key] for key in ("A", "B", "source", "box")}
  except (OSError, KeyError, ValueError):
    pass  # missing or unreadable cache: rebuild.
  pairs = build_pairs(split, crop_size, scales, sigma, task=task)
  try:
    save_npz_atomic(path, pairs)
  except OSError:
    pass  # read-only home: caching is an optimisation only.
  return pairs


class EmbeddedPhotoPairs(PairedDataset):
  """In-memory grey->photo or edges->photo pairs built from the photos bundled in scikit-image
  and scikit-learn (see module doc)."""

  def __init__(self, split: str, transform: PairTransform, *, task: str = TASKS[0],
               direction: str = "AtoB", cache_dir: Optional[str] = None):
    self.direction = check_direction(direction)
    pairs = load_pairs(split, transform.crop_size, task=task, cache_dir=cache_dir)
    self.task = task
    self.split = split
    self.transform = transform
    self.a, self.b = (pairs["A"], pairs["B"]) if direction == "AtoB" else (pairs["B"], pairs["A"])
    self.source_ids = pairs["source"]
    self.boxes = pairs["box"]  # (left, top, right, bottom) of each crop in its source photo
    self.num_examples = len(self.a)

  @property
  def source_names(self) -> list[str]:
    """Name of the photo each example was cut from."""
    names = list(SOURCES)
    return [names[i] for i in self.source_ids]

  def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    return self.a[index], self.b[index]
