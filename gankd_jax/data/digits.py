"""'digits': scikit-learn's handwritten digits as an embedded unconditional dataset (no download).

Why: the unconditional methods need real images on machines without network access.
`sklearn.datasets.load_digits()` ships 1797 handwritten digits (8x8, 17 grey levels 0..16, white
strokes on black, as MNIST) inside the scikit-learn wheel.

Preparation, deterministic:
- Split: per class, a fixed permutation (`numpy.random.default_rng(SPLIT_SEED)`) sends
  `round(TEST_FRACTION * count)` digits to the held-out 'test' split and the rest to 'train';
  the digit classifier (metrics/digit_classifier.py) is trained on 'train' only and its accuracy
  is measured on 'test'.
- Upsampling: 8x8 -> S x S (32 by default) with PIL's bicubic filter (Keys a = -0.5) on the
  float image (mode 'F', so no 8-bit rounding before the filter), clipped to [0, 16] (bicubic
  overshoots at stroke edges) and scaled to uint8 0..255. Bicubic keeps strokes smooth where
  nearest-neighbour would give 4x4 blocks and Lanczos rings more.
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from gankd_jax.data.unconditional import ArrayImages, ImageTransform

DATASET_NAME = "digits"
TEST_FRACTION = 0.2
SPLIT_SEED = 0
MAX_VALUE = 16.0  # load_digits' grey levels are 0..16.
NUM_CLASSES = 10


@functools.lru_cache(maxsize=1)
def _load_raw() -> tuple[np.ndarray, np.ndarray]:
  try:
    from sklearn.datasets import load_digits
  except ImportError:
    raise ValueError("the 'digits' dataset needs scikit-learn (pip install scikit-learn)") from None
  bunch = load_digits()
  return bunch.images.astype(np.float32), bunch.target.astype(np.int32)


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
  """Sorted indices of `split` ('train' or 'test'): a per-class deterministic holdout."""
  if split not in ("train", "test"):
    raise ValueError(f"digits split must be 'train' or 'test', got {split!r}")
  rng = np.random.default_rng(SPLIT_SEED)
  chosen = []
  for label in range(NUM_CLASSES):
    members = np.flatnonzero(labels == label)
    order = rng.permutation(members)
    num_test = int(round(TEST_FRACTION * len(members)))
    chosen.append(order[:num_test] if split == "test" else order[num_test:])
  return np.sort(np.concatenate(chosen))


def upsample(digit: np.ndarray, size: int) -> np.ndarray:
  """One 8x8 digit (0..16 floats) -> uint8 (size, size), bicubic (see the module doc)."""
  image = Image.fromarray(np.asarray(digit, np.float32), mode="F")
  if size != digit.shape[0]:
    image = image.resize((size, size), Image.BICUBIC)
  scaled = np.clip(np.asarray(image), 0.0, MAX_VALUE) * (255.0 / MAX_VALUE)
  return np.round(scaled).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def load_split(split: str, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (N, size, size), labels int32 (N,)) of the 'train' or 'test' split."""
  raw, labels = _load_raw()
  indices = split_indices(labels, split)
  upsampled = np.stack([upsample(raw[i], size) for i in indices])
  upsampled.setflags(write=False)
  return upsampled, labels[indices]


def build(data_config, split: str) -> ArrayImages:
  """'train' -> the training split; anything else -> the held-out 'test' split."""
  size = int(data_config.image_size)
  if size <= 0:
    raise ValueError(f"data.image_size must be positive, got {size}")
  channels = int(data_config.get("channels", 0)) or 1
  transform = ImageTransform(size, channels, 0, bool(data_config.get("flip", False)),
                             train=split == "train")
  array, labels = load_split("train" if split == "train" else "test", size)
  return ArrayImages(array, transform, labels=labels)
