"""Unconditional image datasets (GANs from a latent code): TFDS catalog datasets and plain folders.

An unconditional dataset has `num_examples`, `image_shape` (S, S, C), `get(index)` (the raw
uint8 HWC image) and `example(index, rng)` -> {"image": float32 (S, S, C) in [-1, 1], "index":
int32}. The index lets a method draw each evaluation example's latent code from the example
itself, so generated evaluation images do not depend on batch size or process count. The shared
pipeline (`pipeline.GlobalBatchIterator`, `eval_batches`) batches these dicts unchanged.

The transform: centre square crop (of side `center_crop`, or the largest), resize to S with PIL
bicubic, convert to C channels (PIL's ITU-R 601-2 luma for grey), and in training an optional
random horizontal flip drawn from the pipeline's per-example generator.
"""
from __future__ import annotations

import abc
import dataclasses
import os
from typing import Optional

import numpy as np
from PIL import Image

from gankd_jax.data import images

TFDS_NAMES = ("mnist", "cifar10", "celeb_a")
FOLDER_NAME = "image_folder"
# Native channels, evaluation split and centre crop of the TFDS datasets. CelebA: the 108 px
# centre crop that DCGAN implementations use for faces (carpedm20/DCGAN-tensorflow) before resizing.
TFDS_DEFAULTS = {
    "mnist": {"channels": 1, "eval_split": "test", "center_crop": 0},
    "cifar10": {"channels": 3, "eval_split": "test", "center_crop": 0},
    "celeb_a": {"channels": 3, "eval_split": "validation", "center_crop": 108},
}


@dataclasses.dataclass(frozen=True)
class ImageTransform:
  """Raw uint8 image -> float32 [-1, 1] (S, S, C); flips only when `train` and given an rng."""
  image_size: int
  channels: int
  center_crop: int = 0
  flip: bool = False
  train: bool = True

  def __post_init__(self):
    if self.image_size <= 0:
      raise ValueError(f"data.image_size must be positive, got {self.image_size}")
    if self.channels not in (1, 3):
      raise ValueError(f"data.channels must be 1 or 3 (or 0 for the dataset's own), got "
                       f"{self.channels}")

  def to_uint8(self, image: np.ndarray) -> np.ndarray:
    """Crop, resize and convert channels: uint8 (S, S, C)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
      image = image[..., 0]
    height, width = image.shape[:2]
    side = min(height, width) if self.center_crop <= 0 else min(self.center_crop, height, width)
    top, left = (height - side) // 2, (width - side) // 2
    pil = Image.fromarray(image[top:top + side, left:left + side])
    if pil.size != (self.image_size, self.image_size):
      pil = pil.resize((self.image_size, self.image_size), Image.BICUBIC)
    pil = pil.convert("L" if self.channels == 1 else "RGB")
    out = np.asarray(pil)
    return out[..., None] if out.ndim == 2 else out

  def __call__(self, image: np.ndarray, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    out = self.to_uint8(image)
    if self.train and rng is not None:
      mirror = bool(rng.random() < 0.5)  # Always one draw, so streams do not depend on `flip`.
      if self.flip and mirror:
        out = out[:, ::-1]
    return images.to_unit_range(out)


class ImageDataset(abc.ABC):
  """Base class: subclasses set `num_examples` and `transform` and implement `get`."""
  num_examples: int
  transform: ImageTransform

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.transform.image_size, self.transform.image_size, self.transform.channels)

  def __len__(self) -> int:
    return self.num_examples

  @abc.abstractmethod
  def get(self, index: int) -> np.ndarray:
    """The raw uint8 image (H, W) or (H, W, C)."""

  def example(self, index: int, rng: Optional[np.random.Generator] = None) -> dict[str, np.ndarray]:
    if not 0 <= index < self.num_examples:
      raise IndexError(f"example index {index} out of range [0, {self.num_examples})")
    return {"image": self.transform(self.get(index), rng), "index": np.int32(index)}


class ArrayImages(ImageDataset):
  """Images held in memory as one uint8 array (N, H, W[, C])."""

  def __init__(self, array: np.ndarray, transform: ImageTransform, labels=None):
    if len(array) == 0:
      raise ValueError("dataset has no images")
    self.array = array
    self.labels = labels
    self.transform = transform
    self.num_examples = len(array)

  def get(self, index: int) -> np.ndarray:
    return self.array[index]


class FolderImages(ImageDataset):
  """Every image file under a folder (recursive, sorted), checked up front, decoded lazily."""

  def __init__(self, directory: str, transform: ImageTransform, num_threads: int = 8):
    if not os.path.isdir(directory):
      raise ValueError(f"data.path {directory} does not exist or is not a directory")
    self.files = images.list_image_files(directory)
    if not self.files:
      raise ValueError(f"no image files ({', '.join(images.IMAGE_EXTENSIONS)}) found in "
                       f"{directory}")
    images.validate_image_files(self.files, num_threads=num_threads, cache_for=directory)
    self.directory = directory
    self.transform = transform
    self.num_examples = len(self.files)

  def get(self, index: int) -> np.ndarray:
    return images.decode_rgb(self.files[index])


def folder_split_dir(path: Optional[str], split: str, eval_split: Optional[str]) -> str:
  """A folder with train/ (and test/ or val/) subfolders splits by them; otherwise every image
  is used for training and for evaluation (the usual practice for unconditional GANs)."""
  if not path:
    raise ValueError("data.path is not set; an image_folder dataset needs the folder path")
  if not os.path.isdir(path):
    raise ValueError(f"data.path {path} does not exist or is not a directory")
  if not os.path.isdir(os.path.join(path, "train")):
    return path
  if split == "train":
    return os.path.join(path, "train")
  names = [eval_split] if eval_split else ["test", "val"]
  for name in names:
    if os.path.isdir(os.path.join(path, name)):
      return os.path.join(path, name)
  raise ValueError(f"{path} has a train/ folder but no {' or '.join(n + '/' for n in names)} "
                   "folder for evaluation")


def open_tfds_source(name: str, split: str, data_dir: Optional[str] = None,
                     download: bool = True):
  """`tfds.data_source` of a non-empty split (random access); any failure is one line."""
  import tensorflow_datasets as tfds
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    count = len(source)
  except Exception as error:  # TFDS raises many kinds; the user needs one line.
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    raise ValueError(f"TFDS dataset '{name}' split '{split}' is not available "
                     f"({type(error).__name__}: {first[:200]}); prepare it with "
                     f"`tfds build {name} --file_format=array_record` or set "
                     "data.data_dir") from None
  if count == 0:
    raise ValueError(f"TFDS dataset '{name}' split '{split}' has no examples")
  return source


class TFDSImages(ImageDataset):
  """A TFDS catalog dataset read by random access (`tfds.data_source`, ArrayRecord files)."""

  def __init__(self, name: str, split: str, transform: ImageTransform,
               data_dir: Optional[str] = None, download: bool = True):
    self.source = open_tfds_source(name, split, data_dir, download)
    self.num_examples = len(self.source)
    self.name = name
    self.transform = transform

  def get(self, index: int) -> np.ndarray:
    return np.asarray(self.source[index]["image"])


def resolve_channels(name: str, configured: int) -> int:
  """data.channels, 0 meaning the dataset's own (grey for digits / MNIST, else RGB)."""
  if configured:
    return int(configured)
  if name in TFDS_DEFAULTS:
    return TFDS_DEFAULTS[name]["channels"]
  return 1 if name == "digits" else 3


def image_shape(data_config) -> tuple[int, int, int]:
  """(S, S, C) the unconditional dataset `data_config` yields, without loading it."""
  size = int(data_config.image_size)
  return size, size, resolve_channels(data_config.name, int(data_config.get("channels", 0)))


def build(data_config, split: str, *, native_channels: Optional[int] = None) -> ImageDataset:
  """The unconditional dataset `data_config.name` for 'train' or 'eval'."""
  name = data_config.name
  channels = int(data_config.get("channels", 0)) or native_channels or resolve_channels(name, 0)
  defaults = TFDS_DEFAULTS.get(name, {})
  center_crop = data_config.get("center_crop", None)
  if center_crop is None:
    center_crop = defaults.get("center_crop", 0)
  transform = ImageTransform(int(data_config.image_size), channels, int(center_crop),
                             bool(data_config.get("flip", False)), train=split == "train")
  eval_split = data_config.get("eval_split", None)
  if name in TFDS_NAMES:
    tfds_split = "train" if split == "train" else (eval_split or defaults["eval_split"])
    return TFDSImages(name, tfds_split, transform, data_config.get("data_dir", None),
                      download=bool(data_config.get("download", True)))
  if name == FOLDER_NAME:
    directory = folder_split_dir(data_config.get("path", None), split, eval_split)
    return FolderImages(directory, transform, int(data_config.get("num_threads", 8)))
  raise ValueError(f"unknown unconditional dataset {name!r}")
