"""Checks of a run's config that need neither JAX nor TensorFlow, run first by every command.

Why: importing JAX, Flax and TensorFlow takes 5-20 s, so a bad width, size or data path caught
only after the imports wastes that time on every typo. `check(config)` needs only the config, the
file system and PIL, and the command line runs it before those imports; `train.prepare` runs it
again (cheap: image checks are cached) for callers that skip the command line.

It also applies the data-source rule: a given `data.path` selects the folder source of the
config's data family (`embedded_grey2photo` and `embedded_edges2photo` -> `pix2pix_folder`,
`digits` -> `image_folder`, `embedded_unpaired` -> `cycle_gan_folder`), so a path is never
silently ignored, and config.json records the source actually used; a path beside a TFDS name is
an error naming the conflict.
Image folders are decoded in full here (data/images.py), so a truncated file fails before a
workdir is made.
"""

from __future__ import annotations

import ml_collections

from gankd_jax import data
from gankd_jax.cli import PRECISIONS
from gankd_jax.data import digits, embedded, unconditional, unpaired

# The folder source that a data.path selects, per embedded source of each data family.
FOLDER_SOURCE = {**{name: data.FOLDER_NAME for name in embedded.DATASET_NAMES},
                 digits.DATASET_NAME: unconditional.FOLDER_NAME,
                 unpaired.EMBEDDED_NAME: unpaired.FOLDER_NAME}
FOLDER_SOURCES = (data.FOLDER_NAME, unconditional.FOLDER_NAME, unpaired.FOLDER_NAME)
# Data sources read from TFDS, for which a data.path would be silently ignored.
TFDS_SOURCES = (*unconditional.TFDS_NAMES, unpaired.TFDS_NAME)
POSITIVE_FIELDS = ("num_train_steps", "batch_size", "log_every", "eval_every", "checkpoint_every")
# Per method: widths that must be positive integers, and those that may also be 0 ("the
# teacher's"), named by their field path so an error says which network.
WIDTH_FIELDS = {
    "omgd": (("teacher_wide.ngf", "teacher_deep.ngf", "student.ngf", "discriminator.ndf"), ()),
    "aguinaldo": (("student.d", "nz"), ("teacher.d", "discriminator.d")),
    "omgd_cycle": (("teacher.ngf", "student.ngf", "discriminator.ndf"), ()),
}
# A U-Net's shallowest depth (models/unet.py's MIN_NUM_DOWNS: its distillation taps need 5 levels).
MIN_UNET_DEPTH = 5
UNET_ROLES = ("teacher_wide", "teacher_deep", "student")
# Fields of a teacher's config that say where it comes from (methods/teacher_file.py), not what
# the module is: never passed to the module's constructor.
TEACHER_SOURCE_FIELDS = ("init_from", "init_from_b", "frozen", "module")


def check(config: ml_collections.ConfigDict) -> list[str]:
  """One-line ValueError for the first bad field or data file; returns notes on what it chose."""
  notes = select_data_source(config.data)
  for field in POSITIVE_FIELDS:
    value = config.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise ValueError(f"{field} must be a positive integer, got {value!r}")
  if config.get("precision", "float32") not in PRECISIONS:
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                     f"{config.get('precision')!r}")
  check_widths(config)
  if config.get("method") == "omgd":
    unset = tuple(role for role in UNET_ROLES if str(config[role].get("name")).startswith("unet")
                  and config[role].get("num_downs") is None)
    for role in UNET_ROLES:
      generator_fields(config[role], config.data.crop_size, role, unset)
  if config.get("method") == "omgd_cycle":
    check_cycle_selection(config)
  check_data_files(config.data)
  return notes


def fit_to_data(config: ml_collections.ConfigDict, train_data) -> list[str]:
  """Fields a config derives from its training data, set in place; returns notes on them.

  omgd_cycle with `cycle.epoch_of_data`: an epoch is one pass over the larger domain at the
  global batch, ceil(max(|trainA|, |trainB|) / batch_size) steps, as the reference's epoch
  (num_train_steps follows, unless it was set)."""
  if config.get("method") != "omgd_cycle" or not config.cycle.get("epoch_of_data"):
    return []
  sizes = train_data.domain_sizes
  steps = -(-max(sizes.values()) // config.batch_size)
  config.cycle.epoch_steps = steps
  return [f"cycle.epoch_steps={steps}: one epoch of the training data (max(|trainA| {sizes['A']}, "
          f"|trainB| {sizes['B']}) at batch {config.batch_size}); num_train_steps "
          f"{config.num_train_steps}"]


def check_cycle_selection(config: ml_collections.ConfigDict) -> None:
  """omgd_cycle's selection.metric=fid needs an fid evaluator that is on for both teachers, and
  its feature network's weights (training only: model_stats and evaluate need none)."""
  from gankd_jax.weights import download
  if config.selection.metric != "fid":
    return  # The method names an unknown metric.
  evaluators = config.eval.evaluators
  specs = [dict(evaluators[name], type=evaluators[name].get("type", name)) for name in evaluators]
  specs = [s for s in specs if s["type"] == "fid" and s.get("every", 0) != -1
           and all(not s.get("roles") or role in s["roles"] for role in ("teacher_a", "teacher_b"))]
  if not specs:
    raise ValueError("selection.metric=fid needs an fid evaluator on teacher_a and teacher_b "
                     "(--config.eval.evaluators.fid.every=0), or --config.selection.metric=none")
  if all(s.get("features", "inception") != "inception" for s in specs):
    return  # The digit classifier ships with the package.
  try:
    download.resolve(download.INCEPTION_FID, config.eval.get("inception_weights") or None,
                     flag="--config.eval.inception_weights", allow_download=False)
  except ValueError as error:
    raise ValueError(f"selection.metric=fid: {error} (or set "
                     "--config.eval.evaluators.fid.features=digit_classifier, or "
                     "--config.selection.metric=none)") from None


def select_data_source(data_config: ml_collections.ConfigDict) -> list[str]:
  """The data-source rule of the module doc; sets data.name in place, returns a note if it did."""
  path, name = data_config.get("path"), data_config.name
  if not path:
    return []
  if name in FOLDER_SOURCE:
    data_config.name = FOLDER_SOURCE[name]
    return [f"data.path is set, so data.name is {data_config.name} (not {name})"]
  if name in TFDS_SOURCES:
    folder = unpaired.FOLDER_NAME if name == unpaired.TFDS_NAME else unconditional.FOLDER_NAME
    raise ValueError(
        f"data.path={path} is set but data.name={name} reads TFDS, which ignores it: set "
        f"--config.data.name={folder} to train on that folder's images, or "
        f"--config.data.data_dir={path} if it is TFDS's data folder (and leave data.path unset)")
  return []


def check_widths(config: ml_collections.ConfigDict) -> None:
  positive, non_negative = WIDTH_FIELDS.get(config.get("method"), ((), ()))
  for field in (*positive, *non_negative):
    value = config
    for key in field.split("."):
      value = value.get(key) if isinstance(value, ml_collections.ConfigDict) else None
    lowest = 0 if field in non_negative else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
      kind = "a non-negative" if lowest == 0 else "a positive"
      what = f"{field} (the depth scale factor)" if field.endswith(".d") else field
      raise ValueError(f"{what} must be {kind} integer, got {value!r}")


def largest_unet_depth(size: int) -> int:
  """The deepest U-Net whose 2**depth divides `size` (0 for sizes <= 0)."""
  return (size & -size).bit_length() - 1 if size > 0 else 0


def generator_fields(generator_config: ml_collections.ConfigDict, image_size: int, role: str,
                     unset_roles: tuple[str, ...] = ()) -> dict:
  """Constructor fields of an OMGD generator. A U-Net's `num_downs` unset (None) is log2 of the
  image size, as in pix2pix; set, the size must be a multiple of 2**num_downs. One-line
  ValueErrors whose suggested flags work (tests/test_preflight.py applies them); `unset_roles`:
  every U-Net role without num_downs, so one suggestion fixes them all."""
  fields = {key: value for key, value in generator_config.to_dict().items()
            if not (key in ("num_downs", "n_blocks") and value is None)
            and key not in TEACHER_SOURCE_FIELDS}
  if str(fields.get("name", "")).startswith("unet") and "n_blocks" in fields:
    raise ValueError(f"{role}.n_blocks is only read by ResNet generators, and {role}.name is "
                     f"'{fields.get('name')}'")
  if not str(fields.get("name", "")).startswith("unet"):
    if "num_downs" in fields:
      raise ValueError(f"{role}.num_downs is only read by U-Net generators, and {role}.name is "
                       f"'{fields.get('name')}'")
    return fields
  size = int(image_size)
  depth = fields.get("num_downs")
  if depth is None:
    depth = size.bit_length() - 1
    if size > 0 and 2 ** depth == size and depth >= MIN_UNET_DEPTH:
      fields["num_downs"] = depth
      return fields
    possible = largest_unet_depth(size)
    if size > 0 and possible >= MIN_UNET_DEPTH:
      raise ValueError(
          f"data.crop_size={size}: the {role} U-Net needs a power-of-two image size (its depth "
          f"is log2 of the size), or set "
          f"{' '.join(f'--config.{r}.num_downs={possible}' for r in unset_roles or (role,))} "
          f"(the size must be a multiple of 2**num_downs)")
  elif isinstance(depth, int) and depth >= MIN_UNET_DEPTH and size > 0 and size % 2 ** depth == 0:
    return fields
  else:
    possible = largest_unet_depth(size)
  smallest = 2 ** MIN_UNET_DEPTH
  if isinstance(depth, int) and possible >= MIN_UNET_DEPTH:
    raise ValueError(f"{role}.num_downs={depth}: data.crop_size={size} must be a multiple of "
                     f"2**num_downs and num_downs >= {MIN_UNET_DEPTH}; set "
                     f"--config.{role}.num_downs={possible}")
  nearest = min((smallest * 2 ** k for k in range(6)), key=lambda s: (abs(s - size), s))
  resnet = (", or use the ResNet family (--config=configs/omgd.py:resnet64), which takes "
            "multiples of 4" if size >= 24 and size % 4 == 0 else "")
  raise ValueError(
      f"data.crop_size={size}: the {role} U-Net needs a power-of-two image size of at least "
      f"{smallest} px (a multiple of 2**num_downs, num_downs >= {MIN_UNET_DEPTH}); set "
      f"--config.data.crop_size={nearest}{resnet}")


def check_data_files(data_config: ml_collections.ConfigDict) -> None:
  """Folder sources: both splits found and every image decoded (cached); the others are
  checked when built (TFDS needs TensorFlow; the embedded sets are built from installed wheels)."""
  if data_config.name not in data.DATASET_NAMES:
    raise ValueError(f"unknown data.name {data_config.name!r}; choices: {', '.join(data.DATASET_NAMES)}")
  if data_config.name in FOLDER_SOURCES:
    for split in ("train", "eval"):
      data.build_dataset(data_config, split)
