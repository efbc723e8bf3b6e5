"""Unpaired (CycleGAN) datasets: domain A and domain B images with no correspondence.

LOCAL STAND-IN of the `unpaired` helper's module (contract: /work/wt/CYCLE_CONTRACT.md, section
"Data"), so the method branch runs before that module is merged; the lead takes that helper's
version. Only the embedded source is here: domain A = the edge maps of the first half of the
embedded edges->photo examples, domain B = the photos of the second half (so no A has its B).
"""

from __future__ import annotations

from typing import Optional

import ml_collections
import numpy as np

from gankd_jax.data import embedded, images, paired

EMBEDDED_NAME = "embedded_unpaired"
FOLDER_NAME = "cycle_gan_folder"
TFDS_NAME = "cycle_gan"
NAMES = (EMBEDDED_NAME, FOLDER_NAME, TFDS_NAME)


def unpaired_data_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "name": EMBEDDED_NAME,
      "path": ml_collections.FieldReference(None, field_type=str),
      "tfds_name": "horse2zebra",
      "data_dir": ml_collections.FieldReference(None, field_type=str),
      "crop_size": 64,
      "load_size": ml_collections.FieldReference(None, field_type=int),
      "flip": True,
      "eval_split": ml_collections.FieldReference(None, field_type=str),
      "holdout_fraction": 0.1,
      "num_threads": 4,
  })


class UnpairedDataset:
  """`example(index, rng)` -> {"A", "B"} (train: B at a random index, own crop and flip each);
  eval: {"A", "B", "mask_A", "mask_B"}."""

  def __init__(self, a: np.ndarray, b: np.ndarray, crop_size: int, load_size: int, flip: bool,
               train: bool):
    self.a, self.b, self.train = a, b, train
    self.crop_size, self.load_size, self.flip = crop_size, load_size, flip
    self.domain_sizes = {"A": len(a), "B": len(b)}
    self.num_examples = max(len(a), len(b))

  @property
  def image_shape(self):
    return (self.crop_size, self.crop_size, 3)

  def __len__(self):
    return self.num_examples

  def _transform(self, image, rng):
    if rng is None:
      image = images.resize_bicubic(image, self.crop_size, self.crop_size)
    else:
      aug = paired.sample_augmentation(rng, self.load_size, self.crop_size, self.flip)
      image = paired.apply_augmentation(image, aug, self.load_size, self.crop_size)
    return images.to_unit_range(image).astype(np.float32)

  def example(self, index: int, rng: Optional[np.random.Generator] = None):
    n_a, n_b = len(self.a), len(self.b)
    if self.train and rng is not None:
      b_index = int(rng.integers(0, n_b))
      return {"A": self._transform(self.a[index % n_a], rng),
              "B": self._transform(self.b[b_index], rng)}
    return {"A": self._transform(self.a[index % n_a], None),
            "B": self._transform(self.b[index % n_b], None),
            "mask_A": np.float32(index < n_a), "mask_B": np.float32(index < n_b)}


def build(data_config, split: str) -> UnpairedDataset:
  if data_config.name != EMBEDDED_NAME:
    raise ValueError(f"data.name={data_config.name}: only {EMBEDDED_NAME} in this stand-in")
  crop = int(data_config.crop_size)
  load = data_config.get("load_size") or round(crop * 286 / 256)
  train = split == "train"
  pairs = embedded.load_pairs("train" if train else "test", crop)
  half = len(pairs["A"]) // 2
  return UnpairedDataset(pairs["A"][:half], pairs["B"][half:], crop, load,
                         data_config.get("flip", True), train)
