"""Unpaired (CycleGAN) image data: two domains A and B with no correspondence between their images.

Sources (`data.name`):
- 'cycle_gan_folder': the CycleGAN folder format, `trainA/`, `trainB/`, `testA/`, `testB/` and
  optionally `valA/`, `valB/` under `data.path`; every file is decoded once up front (cached,
  images.validate_image_files), so a truncated file fails before compute. Grey, palette and RGBA
  files are converted to RGB (alpha dropped) and any size is resized, as the reference does.
- 'cycle_gan': TFDS `cycle_gan/<data.tfds_name>` (splits trainA, trainB, testA, testB), read by
  random access (`tfds.data_source`, ArrayRecord files).
- 'embedded_unpaired' (the default): digits in two renderings, built from the scikit-learn wheel
  (no network); see "The embedded default" below.

Examples (the interface the CycleGAN method relies on):
- train: `num_examples` = max(|A|, |B|); `example(index, rng)` -> {"A", "B"} float32 (S, S, 3) in
  [-1, 1], with A = A[index % |A|] and B = B[an index drawn from rng] (the reference's
  UnalignedDataset with serial_batches off), and A and B each their own resize to `load_size`
  (bicubic, square: 'resize_and_crop') + random `crop_size` crop + random horizontal flip.
  Draw order, always the same: B's index, A's (left, top, flip), B's (left, top, flip). The
  pipeline gives each (seed, step, position) its own generator, so the global batch at step k
  does not depend on the process count.
- eval: `num_examples` = max(|A_eval|, |B_eval|), `domain_sizes` {"A", "B"}, `example(index)` ->
  {"A": A[index % n_a], "B": B[index % n_b], "mask_A", "mask_B"} (float32 1 for index < n), each
  resized to `crop_size`, no randomness: the masks let a metric count each domain's images once.
- train_eval: the training images (the holdout's kept part with eval_split=holdout) as eval
  examples, for a reference side of train + eval real images (the reference's FID statistics).

Evaluation split (`data.eval_split`): None or 'test' (testA/testB, what the reference selects
and reports on), 'val' (valA/valB), or 'holdout': a fixed part (`data.holdout_fraction`) of each
domain's training images, chosen by a seeded permutation of the sorted list and then EXCLUDED from
training, so selection need not look at the test split.

The embedded default ('embedded_unpaired'). Offline there are no Inception or VGG weights, and the
only FID feature network that works is the digit classifier shipped with the package
(metrics/digit_classifier.py: grey, 32x32), so the default translation is between two renderings
of scikit-learn's handwritten digits (digits.py):
- A: a digit as it is, white strokes on black (grey in RGB).
- B: a DIFFERENT digit image, thicker strokes (a max filter) in warm amber on a dark-blue ground.
- No A/B pairs exist: within each digits split, each class's images are dealt, by a seeded
  permutation, alternately to A and to B, so no image appears in both domains. Held out by image:
  testA/testB come from digits' held-out test split.
- Why light strokes on a dark ground for B (not dark ink on paper): the digit classifier sees the
  channel mean, and an inverted digit is outside its training distribution (test accuracy 4 % on
  inverted B, 96 % on B as rendered here, 99 % on A, at 64 px; tests/test_unpaired_data.py
  checks > 90 %), so its features would say little about the digits. As rendered, FID against B
  measures both the style and whether the digits survive: with the statistics of all real B
  images, testB scores 1.8 and testA untranslated 1122 (64 px).
- Why it is learnable in minutes on a CPU: A -> B is local (a colour map plus a dilation of a few
  pixels), within a ResNet generator's receptive field, on ~720 images per domain of 64 px.
Images are rendered at `crop_size` (8x8 digits, bicubic, like digits.py), deterministic, and cached
as .npz under $GANKD_CACHE (else ~/.cache/gankd_jax), keyed by the build parameters.
"""
from __future__ import annotations

import abc
import hashlib
import json
import os
from typing import Optional

import numpy as np
from PIL import Image, ImageFilter

from gankd_jax.data import digits, embedded, images, unconditional
from gankd_jax.data.paired import apply_augmentation, sample_augmentation

EMBEDDED_NAME = "embedded_unpaired"
FOLDER_NAME = "cycle_gan_folder"
TFDS_NAME = "cycle_gan"
DATASET_NAMES = (EMBEDDED_NAME, FOLDER_NAME, TFDS_NAME)
DOMAINS = ("A", "B")
EVAL_SPLITS = ("test", "val", "holdout")
# The reference's 286 -> 256 ratio of load_size to crop_size.
LOAD_RATIO = 286 / 256
HOLDOUT_SEED = 0
# Embedded default: build version, domain-dealing seed and the colours of domain B.
EMBEDDED_VERSION = 1
DEAL_SEED = 1
B_INK = (255, 190, 60)    # warm amber strokes
B_GROUND = (20, 30, 90)   # dark blue ground


def default_load_size(crop_size: int) -> int:
  """load_size None means the reference's ratio: 256 -> 286, 64 -> 72."""
  return int(round(crop_size * LOAD_RATIO))


def as_rgb(image: np.ndarray) -> np.ndarray:
  """uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> (H, W, 3), as PIL's convert('RGB')."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 3:
    return image
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  return np.asarray(Image.fromarray(image).convert("RGB"))


# --------------------------------------------------------------------------------- domains
class Domain(abc.ABC):
  """The images of one domain of one split: `len()` and `get(i)` -> uint8 (H, W, 3) RGB."""

  @abc.abstractmethod
  def __len__(self) -> int:
    """Number of images."""

  @abc.abstractmethod
  def get(self, index: int) -> np.ndarray:
    """Image `index`, uint8 RGB of its own size."""


class FileDomain(Domain):
  """Every image file under one folder (recursive, sorted), decoded in full up front (cached)."""

  def __init__(self, directory: str, num_threads: int = 8):
    if not os.path.isdir(directory):
      raise ValueError(f"domain folder {directory} does not exist")
    self.directory = directory
    self.files = images.list_image_files(directory)
    if not self.files:
      raise ValueError(f"no image files ({', '.join(images.IMAGE_EXTENSIONS)}) found in "
                       f"domain folder {directory}")
    images.validate_image_files(self.files, num_threads=num_threads, cache_for=directory)

  def __len__(self) -> int:
    return len(self.files)

  def get(self, index: int) -> np.ndarray:
    return images.decode_rgb(self.files[index])


class ArrayDomain(Domain):
  """Images held in one uint8 array (N, H, W, 3)."""

  def __init__(self, array: np.ndarray, name: str):
    if len(array) == 0:
      raise ValueError(f"{name} has no images")
    self.array = array

  def __len__(self) -> int:
    return len(self.array)

  def get(self, index: int) -> np.ndarray:
    return self.array[index]


class TFDSDomain(Domain):
  """One split of TFDS `cycle_gan/<config>`, by random access (ArrayRecord files)."""

  def __init__(self, name: str, split: str, data_dir: Optional[str] = None,
               download: bool = True):
    self.source = unconditional.open_tfds_source(name, split, data_dir, download)
    self.name = name
    self.count = len(self.source)

  def __len__(self) -> int:
    return self.count

  def get(self, index: int) -> np.ndarray:
    return as_rgb(self.source[index]["image"])


class SubsetDomain(Domain):
  """The images of `base` at `indices` (a holdout or its complement)."""

  def __init__(self, base: Domain, indices: np.ndarray):
    self.base = base
    self.indices = np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def get(self, index: int) -> np.ndarray:
    return self.base.get(int(self.indices[index]))


def holdout_split(count: int, fraction: float, what: str) -> tuple[np.ndarray, np.ndarray]:
  """(kept for training, held out) sorted indices: round(fraction * count) images, at least one
  each side, chosen by a fixed permutation (the same for every run and process)."""
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
    raise ValueError(f"data.holdout_fraction must be a number in (0, 1), got {fraction!r}")
  if count < 2:
    raise ValueError(f"{what} has {count} training image(s); data.eval_split=holdout needs at "
                     "least 2 (one to train on, one to hold out)")
  num_held = min(max(int(round(fraction * count)), 1), count - 1)
  order = np.random.default_rng(HOLDOUT_SEED).permutation(count)
  return np.sort(order[num_held:]), np.sort(order[:num_held])


# --------------------------------------------------------------------------------- datasets
def check_sizes(crop_size, load_size) -> tuple[int, int]:
  """(crop_size, load_size) as ints; load_size None -> default_load_size(crop_size)."""
  if isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size <= 0:
    raise ValueError(f"data.crop_size must be a positive integer, got {crop_size!r}")
  load_size = default_load_size(crop_size) if load_size is None else load_size
  if isinstance(load_size, bool) or not isinstance(load_size, int) or load_size < crop_size:
    raise ValueError(f"data.load_size ({load_size!r}) must be an integer >= data.crop_size "
                     f"({crop_size})")
  return crop_size, load_size


class UnpairedTrainDataset:
  """Training examples of the module doc: A by index, B drawn at random, independent transforms."""

  def __init__(self, domain_a: Domain, domain_b: Domain, *, crop_size: int,
               load_size: Optional[int] = None, flip: bool = True):
    self.crop_size, self.load_size = check_sizes(crop_size, load_size)
    self.domains = {"A": domain_a, "B": domain_b}
    self.flip = bool(flip)
    self.num_examples = max(len(domain_a), len(domain_b))

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.crop_size, self.crop_size, 3)

  @property
  def domain_sizes(self) -> dict[str, int]:
    return {name: len(domain) for name, domain in self.domains.items()}

  def __len__(self) -> int:
    return self.num_examples

  def _augment(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    aug = sample_augmentation(rng, self.load_size, self.crop_size, self.flip)
    return images.to_unit_range(apply_augmentation(image, aug, self.load_size, self.crop_size))

  def example(self, index: int,
              rng: Optional[np.random.Generator] = None) -> dict[str, np.ndarray]:
    """rng None: B = B[index % |B|] (serial_batches) and the eval resize, for inspection."""
    if not 0 <= index < self.num_examples:
      raise IndexError(f"example index {index} out of range [0, {self.num_examples})")
    domain_a, domain_b = self.domains["A"], self.domains["B"]
    a = domain_a.get(index % len(domain_a))
    if rng is None:
      b = domain_b.get(index % len(domain_b))
      return {key: images.to_unit_range(images.resize_bicubic(x, self.crop_size, self.crop_size))
              for key, x in (("A", a), ("B", b))}
    b = domain_b.get(int(rng.integers(0, len(domain_b))))
    out_a = self._augment(a, rng)  # A's draws before B's: the fixed order of the module doc.
    return {"A": out_a, "B": self._augment(b, rng)}


class UnpairedEvalDataset:
  """Evaluation examples of the module doc: both domains side by side, masks past their ends."""

  def __init__(self, domain_a: Domain, domain_b: Domain, *, crop_size: int):
    self.crop_size, _ = check_sizes(crop_size, None)
    self.domains = {"A": domain_a, "B": domain_b}
    self.domain_sizes = {"A": len(domain_a), "B": len(domain_b)}
    self.num_examples = max(self.domain_sizes.values())

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.crop_size, self.crop_size, 3)

  def __len__(self) -> int:
    return self.num_examples

  def example(self, index: int, rng=None) -> dict[str, np.ndarray]:
    del rng  # evaluation is deterministic
    if not 0 <= index < self.num_examples:
      raise IndexError(f"example index {index} out of range [0, {self.num_examples})")
    out = {}
    for name, domain in self.domains.items():
      image = domain.get(index % len(domain))
      out[name] = images.to_unit_range(images.resize_bicubic(image, self.crop_size,
                                                              self.crop_size))
    for name, size in self.domain_sizes.items():
      out[f"mask_{name}"] = np.float32(index < size)
    return out


# --------------------------------------------------------------------------------- sources
def resolve_eval_split(eval_split: Optional[str]) -> str:
  eval_split = "test" if eval_split is None else eval_split
  if eval_split not in EVAL_SPLITS:
    raise ValueError(f"data.eval_split must be one of {EVAL_SPLITS} (or None: test), got "
                     f"{eval_split!r}")
  return eval_split


def folder_domains(path: Optional[str], split: str, num_threads: int) -> dict[str, Domain]:
  """Domains of split 'train' | 'test' | 'val' of a CycleGAN folder."""
  if not path:
    raise ValueError(f"data.path is not set; a {FOLDER_NAME} dataset needs the folder path")
  if not os.path.isdir(path):
    raise ValueError(f"data.path {path} does not exist or is not a directory")
  missing = [f"train{d}/" for d in DOMAINS if not os.path.isdir(os.path.join(path, f"train{d}"))]
  if missing:
    raise ValueError(f"data.path {path} is not a CycleGAN folder: it has no "
                     f"{' or '.join(missing)} folder (expected trainA/, trainB/, testA/, testB/)")
  domains = {}
  for name in DOMAINS:
    directory = os.path.join(path, f"{split}{name}")
    if not os.path.isdir(directory):
      hint = (" (or set data.eval_split=holdout to hold out part of trainA/ and trainB/)"
              if split == "test" else "")
      raise ValueError(f"data.path {path} has no {split}{name}/ folder for data.eval_split="
                       f"{split}{hint}")
    domains[name] = FileDomain(directory, num_threads)
  return domains


def tfds_domains(data_config, split: str) -> dict[str, Domain]:
  tfds_name = data_config.get("tfds_name")
  if not tfds_name or not isinstance(tfds_name, str):
    raise ValueError(f"data.tfds_name must name a TFDS cycle_gan config (e.g. horse2zebra), got "
                     f"{tfds_name!r}")
  if split == "val":
    raise ValueError(f"TFDS {TFDS_NAME}/{tfds_name} has no val split; set data.eval_split to "
                     "test or holdout")
  return {name: TFDSDomain(f"{TFDS_NAME}/{tfds_name}", f"{split}{name}",
                           data_config.get("data_dir"), bool(data_config.get("download", True)))
          for name in DOMAINS}


def embedded_domains(crop_size: int, split: str,
                     cache_dir: Optional[str] = None) -> dict[str, Domain]:
  if split == "val":
    raise ValueError(f"{EMBEDDED_NAME} has no val split; set data.eval_split to test or holdout")
  arrays = load_embedded(split, crop_size, cache_dir=cache_dir)
  return {name: ArrayDomain(arrays[name], f"{EMBEDDED_NAME} {split}{name}") for name in DOMAINS}


def source_domains(data_config, split: str) -> dict[str, Domain]:
  """Domains of 'train' | 'test' | 'val' of the source `data_config.name`."""
  name = data_config.name
  if name == FOLDER_NAME:
    return folder_domains(data_config.get("path"), split, int(data_config.get("num_threads", 8)))
  if name == TFDS_NAME:
    return tfds_domains(data_config, split)
  if name == EMBEDDED_NAME:
    return embedded_domains(int(data_config.crop_size), split)
  raise ValueError(f"unknown unpaired data.name {name!r}; choices: {', '.join(DATASET_NAMES)}")


def build(data_config, split: str):
  """Train dataset for 'train'; eval dataset for 'eval' (data.eval_split), 'val' / 'test', or
  'train_eval' (the training images, for a train + eval reference side)."""
  crop_size, load_size = check_sizes(data_config.crop_size, data_config.get("load_size"))
  eval_split = resolve_eval_split(data_config.get("eval_split"))
  holdout = eval_split == "holdout"
  if split in ("train", "train_eval"):
    domains = source_domains(data_config, "train")
  elif split in ("val", "test"):
    domains = source_domains(data_config, split)
  elif split == "eval":
    domains = source_domains(data_config, "train" if holdout else eval_split)
  else:
    raise ValueError(f"split must be 'train', 'train_eval', 'eval', 'val' or 'test', got {split!r}")
  if holdout and split in ("train", "train_eval", "eval"):
    fraction = data_config.get("holdout_fraction")
    for name, domain in domains.items():
      kept, held = holdout_split(len(domain), fraction, f"domain {name} of {data_config.name}")
      domains[name] = SubsetDomain(domain, held if split == "eval" else kept)
  if split == "train":
    return UnpairedTrainDataset(domains["A"], domains["B"], crop_size=crop_size,
                                load_size=load_size, flip=bool(data_config.get("flip", True)))
  return UnpairedEvalDataset(domains["A"], domains["B"], crop_size=crop_size)


# --------------------------------------------------------------------------------- embedded
def deal_domains(labels: np.ndarray, indices: np.ndarray) -> dict[str, np.ndarray]:
  """Split `indices` (of one digits split) into disjoint A and B halves, class-balanced."""
  rng = np.random.default_rng(DEAL_SEED)
  halves = {"A": [], "B": []}
  for label in range(digits.NUM_CLASSES):
    members = rng.permutation(indices[labels[indices] == label])
    halves["A"].append(members[0::2])
    halves["B"].append(members[1::2])
  return {name: np.sort(np.concatenate(parts)) for name, parts in halves.items()}


def stroke_width(crop_size: int) -> int:
  """Odd max-filter size that thickens B's strokes: 5 px at 64 px, scaled."""
  return 2 * max(1, int(round(crop_size / 32))) + 1


def render_a(stroke: np.ndarray) -> np.ndarray:
  """Domain A: the digit as it is, white on black, uint8 (S, S, 3)."""
  return np.repeat(stroke[..., None], 3, axis=-1)


def render_b(stroke: np.ndarray) -> np.ndarray:
  """Domain B: thicker strokes, amber on dark blue, uint8 (S, S, 3)."""
  size = stroke_width(stroke.shape[0])
  thick = np.asarray(Image.fromarray(stroke).filter(ImageFilter.MaxFilter(size)), np.float32)
  alpha = (thick / 255.0)[..., None]
  mixed = (1.0 - alpha) * np.float32(B_GROUND) + alpha * np.float32(B_INK)
  return np.round(mixed).astype(np.uint8)


def build_embedded(split: str, crop_size: int) -> dict[str, np.ndarray]:
  """{'A', 'B': uint8 (N, S, S, 3), 'labels_A', 'labels_B', 'digit_A', 'digit_B': (N,) int32}
  of the digits split 'train' or 'test' ('digit_*': index into load_digits)."""
  raw, labels = digits._load_raw()  # the raw 8x8 digits: indices name images globally
  halves = deal_domains(labels, digits.split_indices(labels, split))
  out = {}
  for name, render in (("A", render_a), ("B", render_b)):
    out[name] = np.stack([render(digits.upsample(raw[i], crop_size)) for i in halves[name]])
    out[f"labels_{name}"] = labels[halves[name]].astype(np.int32)
    out[f"digit_{name}"] = halves[name].astype(np.int32)
  return out


def embedded_cache_key(split: str, crop_size: int) -> str:
  import sklearn
  params = {"version": EMBEDDED_VERSION, "split": split, "crop_size": crop_size,
            "deal_seed": DEAL_SEED, "ink": B_INK, "ground": B_GROUND,
            "test_fraction": digits.TEST_FRACTION, "split_seed": digits.SPLIT_SEED,
            "sklearn": sklearn.__version__}
  return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


EMBEDDED_KEYS = ("A", "B", "labels_A", "labels_B", "digit_A", "digit_B")


def load_embedded(split: str, crop_size: int = 64, *,
                  cache_dir: Optional[str] = None) -> dict[str, np.ndarray]:
  """The embedded default's 'train' or 'test' arrays, from the cache when present."""
  if split not in ("train", "test"):
    raise ValueError(f"{EMBEDDED_NAME} split must be 'train' or 'test', got {split!r}")
  cache_dir = embedded.default_cache_dir() if cache_dir is None else cache_dir
  path = os.path.join(cache_dir, f"{EMBEDDED_NAME}_{split}_{crop_size}_"
                                 f"{embedded_cache_key(split, crop_size)}.npz")
  try:
    with np.load(path) as cached:
      return {key: cached[key] for key in EMBEDDED_KEYS}
  except (OSError, KeyError, ValueError):
    pass  # missing or unreadable cache: rebuild.
  arrays = build_embedded(split, crop_size)
  try:
    embedded.save_npz_atomic(path, arrays)
  except OSError:
    pass  # read-only cache folder: caching is an optimisation only.
  return arrays
