"""Image data: dataset sources, their transforms and the global-batch pipeline.

Paired datasets (x -> y) yield (A, B) pairs; unconditional ones (`unconditional.py`: embedded
digits, TFDS mnist / cifar10 / celeb_a, a plain image folder) yield {"image", "index"} dicts;
unpaired ones (`unpaired.py`: embedded two-style digits, CycleGAN folders, TFDS cycle_gan) yield
{"A", "B"} with B drawn at random in training, {"A", "B", "mask_A", "mask_B"} in evaluation.

`build_dataset(config.data, 'train' | 'eval')` gives a dataset with `num_examples`,
`image_shape`, `get(index)` (raw uint8 pair) and `example(index, rng)` (float32 [-1, 1] pair);
`GlobalBatchIterator` and `eval_batches` turn it into per-process numpy batches.
"""
from __future__ import annotations

import ml_collections

from gankd_jax.data import digits, unconditional, unpaired
from gankd_jax.data import embedded
from gankd_jax.data.embedded import EmbeddedPhotoPairs
from gankd_jax.data.paired import (AlignedFolderDataset, PairedDataset, PairTransform,
                                   build_aligned_folder, make_pair_transform)
from gankd_jax.data.pipeline import GlobalBatchIterator, eval_batches, num_eval_steps

FOLDER_NAME = "pix2pix_folder"
UNCONDITIONAL_NAMES = (digits.DATASET_NAME, *unconditional.TFDS_NAMES, unconditional.FOLDER_NAME)
UNPAIRED_NAMES = unpaired.DATASET_NAMES
EMBEDDED_NAMES = embedded.DATASET_NAMES  # grey2photo (the default) and edges2photo
DATASET_NAMES = (*EMBEDDED_NAMES, FOLDER_NAME, *UNCONDITIONAL_NAMES, *UNPAIRED_NAMES)
# train_eval: the training images prepared as for evaluation (no randomness), for an evaluator
# whose reference side is train + eval (unpaired data only).
SPLITS = ("train", "eval", "val", "test", "train_eval")

__all__ = [
    "AlignedFolderDataset", "DATASET_NAMES", "EmbeddedPhotoPairs", "GlobalBatchIterator",
    "PairTransform", "PairedDataset", "build_dataset", "default_data_config", "eval_batches",
    "num_eval_steps", "unconditional_data_config", "unpaired_data_config",
]


def default_data_config() -> ml_collections.ConfigDict:
  """Data config with defaults: the embedded grey->photo set at 64x64."""
  return ml_collections.ConfigDict({
      "name": embedded.DATASET_NAME,  # embedded_grey2photo | embedded_edges2photo | pix2pix_folder
      "path": ml_collections.FieldReference(None, field_type=str),
      "direction": "AtoB",
      "load_size": ml_collections.FieldReference(None, field_type=int),  # None: crop_size
      "crop_size": 64,
      "flip": True,
      "eval_split": ml_collections.FieldReference(None, field_type=str),  # None: val, else test
      "num_threads": 8,
  })


def unconditional_data_config() -> ml_collections.ConfigDict:
  """Data config of the unconditional datasets, with defaults: embedded digits at 32x32."""
  return ml_collections.ConfigDict({
      "name": digits.DATASET_NAME,  # digits | mnist | cifar10 | celeb_a | image_folder
      "path": ml_collections.FieldReference(None, field_type=str),  # image_folder's folder
      "data_dir": ml_collections.FieldReference(None, field_type=str),  # TFDS data_dir
      "image_size": 32,
      "channels": 0,      # 0: the dataset's own (1 for digits / mnist, 3 otherwise)
      "center_crop": ml_collections.FieldReference(None, field_type=int),  # None: per dataset
      "flip": False,
      "eval_split": ml_collections.FieldReference(None, field_type=str),  # None: per dataset
      "num_threads": 4,
  })


def unpaired_data_config() -> ml_collections.ConfigDict:
  """Data config of the unpaired (CycleGAN) datasets, with defaults: embedded digits at 64x64."""
  return ml_collections.ConfigDict({
      "name": unpaired.EMBEDDED_NAME,  # embedded_unpaired | cycle_gan_folder | cycle_gan (TFDS)
      "path": ml_collections.FieldReference(None, field_type=str),  # cycle_gan_folder's folder
      "tfds_name": "horse2zebra",  # TFDS cycle_gan/<tfds_name>
      "data_dir": ml_collections.FieldReference(None, field_type=str),  # TFDS data_dir
      "crop_size": 64,
      # None: round(crop_size * 286 / 256), the reference's 286 -> 256.
      "load_size": ml_collections.FieldReference(None, field_type=int),
      "flip": True,
      "eval_split": ml_collections.FieldReference(None, field_type=str),  # None: test
      "holdout_fraction": 0.1,  # eval_split=holdout: this part of each train domain is held out
      "num_threads": 8,
  })


def build_dataset(data_config, split: str):
  """Dataset named by `data_config.name` for `split` ('train' or 'eval'; 'val'/'test' pick
  that folder explicitly). Only 'train' applies random crop/flip."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  name = data_config.name
  if split == "train_eval" and name not in UNPAIRED_NAMES:
    raise ValueError(f"data.name={name}: an evaluator's reference=train+eval needs unpaired data "
                     f"({', '.join(UNPAIRED_NAMES)}); use reference=eval")
  if name == digits.DATASET_NAME:
    return digits.build(data_config, split)
  if name in UNCONDITIONAL_NAMES:
    return unconditional.build(data_config, split)
  if name in UNPAIRED_NAMES:
    return unpaired.build(data_config, split)
  if name in EMBEDDED_NAMES:
    transform = make_pair_transform(data_config.crop_size, data_config.get("load_size"),
                                    data_config.get("flip", True), train=split == "train")
    return EmbeddedPhotoPairs("train" if split == "train" else "test", transform,
                              task=embedded.task_of(name),
                              direction=data_config.get("direction", "AtoB"))
  if name == FOLDER_NAME:
    return build_aligned_folder(
        data_config.get("path"), split, direction=data_config.get("direction", "AtoB"),
        crop_size=data_config.crop_size, load_size=data_config.get("load_size"),
        flip=data_config.get("flip", True), eval_split=data_config.get("eval_split"),
        num_threads=data_config.get("num_threads", 8))
  raise ValueError(f"unknown data.name {name!r}; choices: {', '.join(DATASET_NAMES)}")
