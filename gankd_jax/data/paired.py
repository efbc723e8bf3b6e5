"""Paired (x -> y) image datasets: the shared interface, the pix2pix transform and aligned folders.

A paired dataset has `num_examples`, `image_shape` (the (H, W, 3) it yields), `get(index)`
returning the raw uint8 (A, B) pair, and `example(index, rng)` returning the transformed
float32 [-1, 1] pair. Randomness only enters through the `rng` argument, so the input
pipeline decides which generator each example uses and batches are reproducible.

The transform follows pix2pix's `resize_and_crop` (+ flip): training resizes both halves to
`load_size` (bicubic), takes the same random `crop_size` crop and the same random horizontal
flip for A and B; evaluation resizes to `crop_size` only.
"""
from __future__ import annotations

import abc

import dataclasses
import os
from typing import Optional

import numpy as np

from gankd_jax.data import images

DIRECTIONS = ("AtoB", "BtoA")


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Where to crop (top, left) and whether to mirror; shared by A and B of one pair."""
  top: int
  left: int
  flip: bool


def sample_augmentation(rng: np.random.Generator, load_size: int, crop_size: int,
                        flip: bool) -> Augmentation:
  """Draw one crop offset and flip decision (always the same three draws, in this order)."""
  span = max(0, load_size - crop_size)
  left = int(rng.integers(0, span + 1))
  top = int(rng.integers(0, span + 1))
  mirror = bool(rng.random() < 0.5)
  return Augmentation(top=top, left=left, flip=flip and mirror)


def apply_augmentation(image: np.ndarray, aug: Augmentation, load_size: int,
                       crop_size: int) -> np.ndarray:
  """Resize to load_size, crop crop_size at the drawn offset, maybe mirror (uint8 in, uint8 out)."""
  image = images.resize_bicubic(image, load_size, load_size)
  image = image[aug.top:aug.top + crop_size, aug.left:aug.left + crop_size]
  return image[:, ::-1] if aug.flip else image


@dataclasses.dataclass(frozen=True)
class PairTransform:
  """pix2pix transform for an (A, B) pair; `train=False` or `rng=None` gives the eval transform."""
  crop_size: int
  load_size: int
  flip: bool = True
  train: bool = True

  def __post_init__(self):
    if self.crop_size <= 0:
      raise ValueError(f"data.crop_size must be positive, got {self.crop_size}")
    if self.load_size < self.crop_size:
      raise ValueError(
          f"data.load_size ({self.load_size}) must be >= data.crop_size ({self.crop_size})")

  def __call__(self, a: np.ndarray, b: np.ndarray,
               rng: Optional[np.random.Generator] = None) -> tuple[np.ndarray, np.ndarray]:
    if self.train and rng is not None:
      aug = sample_augmentation(rng, self.load_size, self.crop_size, self.flip)
      a = apply_augmentation(a, aug, self.load_size, self.crop_size)
      b = apply_augmentation(b, aug, self.load_size, self.crop_size)
    else:
      a = images.resize_bicubic(a, self.crop_size, self.crop_size)
      b = images.resize_bicubic(b, self.crop_size, self.crop_size)
    return images.to_unit_range(a), images.to_unit_range(b)


class PairedDataset(abc.ABC):
  """Base class: subclasses set `num_examples` and `transform` and implement `get`."""
  num_examples: int
  transform: PairTransform

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.transform.crop_size, self.transform.crop_size, 3)

  def __len__(self) -> int:
    return self.num_examples

  @abc.abstractmethod
  def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw uint8 (A, B) pair, direction already applied."""

  def example(self, index: int,
              rng: Optional[np.random.Generator] = None) -> tuple[np.ndarray, np.ndarray]:
    """Transformed float32 (A, B) pair in [-1, 1] of shape `image_shape`."""
    if not 0 <= index < self.num_examples:
      raise IndexError(f"example index {index} out of range [0, {self.num_examples})")
    a, b = self.get(index)
    return self.transform(a, b, rng)


def check_direction(direction: str) -> str:
  if direction not in DIRECTIONS:
    raise ValueError(f"data.direction must be one of {DIRECTIONS}, got {direction!r}")
  return direction


def resolve_split_dir(path: str, split: str, eval_split: Optional[str]) -> str:
  """Directory of a split: 'train', or the eval split ('val' if present else 'test')."""
  if not path:
    raise ValueError("data.path is not set; a pix2pix_folder dataset needs the folder path")
  if not os.path.isdir(path):
    raise ValueError(f"data.path {path} does not exist or is not a directory")
  if split == "train":
    name = "train"
  elif split in ("val", "test"):
    name = split
  elif split == "eval":
    if eval_split is not None:
      name = eval_split
    else:
      name = "val" if os.path.isdir(os.path.join(path, "val")) else "test"
  else:
    raise ValueError(f"split must be 'train', 'eval', 'val' or 'test', got {split!r}")
  directory = os.path.join(path, name)
  if not os.path.isdir(directory):
    raise ValueError(f"dataset split folder {directory} does not exist")
  return directory


class AlignedFolderDataset(PairedDataset):
  """pix2pix 'aligned' folder: each file is A|B side by side; decoded lazily per example.

  All files are decoded (and their widths checked even) when the dataset is built, in a thread
  pool and cached (images.validate_image_files), so a broken file fails before any compute
  rather than hours into training.
  """

  def __init__(self, directory: str, transform: PairTransform, *, direction: str = "AtoB",
               num_threads: int = 8):
    self.directory = directory
    self.direction = check_direction(direction)
    self.transform = transform
    if not os.path.isdir(directory):
      raise ValueError(f"dataset folder {directory} does not exist")
    self.files = images.list_image_files(directory)
    if not self.files:
      raise ValueError(
          f"no image files ({', '.join(images.IMAGE_EXTENSIONS)}) found in {directory}")
    self.sizes = images.validate_image_files(
        self.files, require_even_width=True, num_threads=num_threads, cache_for=directory)
    self.num_examples = len(self.files)

  def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    left, right = images.split_side_by_side(images.decode_rgb(self.files[index]))
    return (left, right) if self.direction == "AtoB" else (right, left)


def make_pair_transform(crop_size: int, load_size: Optional[int], flip: bool,
                        train: bool) -> PairTransform:
  """Transform from config fields; load_size None means crop_size (no resize jitter)."""
  return PairTransform(crop_size=int(crop_size),
                       load_size=int(crop_size if load_size is None else load_size),
                       flip=bool(flip), train=train)


def build_aligned_folder(path: str, split: str, *, direction: str, crop_size: int,
                         load_size: Optional[int], flip: bool, eval_split: Optional[str],
                         num_threads: int) -> AlignedFolderDataset:
  """Aligned-folder dataset for `split` ('train' gets the training transform)."""
  check_direction(direction)
  transform = make_pair_transform(crop_size, load_size, flip, train=split == "train")
  directory = resolve_split_dir(path, split, eval_split)
  return AlignedFolderDataset(directory, transform, direction=direction, num_threads=num_threads)
