"""The checks that run before JAX loads (gankd_jax/preflight.py) and the data they check: a data.path
selects the folder source, a truncated image stops the command before any workdir exists, the
image checks are cached, and every fix an error message suggests is accepted when applied."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from gankd_jax import data, preflight, train
from gankd_jax.data import images
from tests.conftest import tiny_aguinaldo_config, tiny_omgd_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
  """Image-check caches of this test's folders go to its own tmp dir, not ~/.cache."""
  monkeypatch.setenv("GANKD_CACHE", str(tmp_path / "cache"))


def write_images(folder, count: int, width: int, height: int, fmt: str = "jpg") -> list[str]:
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(count * width)
  paths = []
  for i in range(count):
    path = str(folder / f"{i}.{fmt}")
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    paths.append(path)
  return paths


def pairs_folder(root, size: int = 32):
  """A pix2pix aligned folder (A|B side by side) with train/ and val/."""
  for split in ("train", "val"):
    write_images(root / split, 4, 2 * size, size)
  return str(root)


def truncate(path: str, keep: int = 3000) -> None:
  with open(path, "rb") as stream:
    head = stream.read(keep)
  with open(path, "wb") as stream:
    stream.write(head)


# ----------------------------------------------------------------------------- data.path rule
@pytest.mark.parametrize("family, folder_name", [("omgd", "pix2pix_folder"),
                                                 ("aguinaldo", "image_folder")])
def test_data_path_selects_the_folder_source(tmp_path, family, folder_name):
  if family == "omgd":
    path = pairs_folder(tmp_path / "pairs")
    config = tiny_omgd_config(**{"data.path": path})
    assert config.data.name == "embedded_grey2photo"
  else:
    path = str(tmp_path / "faces")
    write_images(tmp_path / "faces", 4, 20, 20)
    config = tiny_aguinaldo_config("teacher", **{"data.path": path})
    assert config.data.name == "digits"
  run = train.prepare(config, str(tmp_path / "run"))
  assert run.config.data.name == folder_name
  assert run.train_data.files[0].startswith(path)  # The folder is what trains, not embedded data.
  recorded = train.checkpointing.config_as_dict(run.config)["data"]
  assert (recorded["name"], recorded["path"]) == (folder_name, path)  # What config.json records.
  assert not (tmp_path / "run").exists()


def test_data_path_selects_the_folder_source_for_stylegan2(tmp_path):
  from configs import stylegan2
  write_images(tmp_path / "faces", 3, 40, 40)
  config = stylegan2.get_config("small")
  config.data.path = str(tmp_path / "faces")
  assert preflight.check(config) and config.data.name == "image_folder"
  assert data.build_dataset(config.data, "train").num_examples == 3


def test_data_path_beside_a_tfds_name_is_a_conflict(tmp_path):
  config = tiny_aguinaldo_config("teacher", **{"data.name": "mnist", "data.path": str(tmp_path)})
  with pytest.raises(ValueError, match=r"data.path=.* data.name=mnist reads TFDS") as info:
    preflight.check(config)
  assert "\n" not in str(info.value)


def test_no_path_keeps_the_embedded_sources():
  for config in (tiny_omgd_config(), tiny_aguinaldo_config("teacher")):
    name = config.data.name
    assert preflight.check(config) == [] and config.data.name == name


# ----------------------------------------------------------------------------- image checks
@pytest.mark.parametrize("family", ["omgd", "aguinaldo"])
def test_truncated_image_is_refused_before_any_workdir(tmp_path, family):
  if family == "omgd":
    path = pairs_folder(tmp_path / "data", size=128)
    flags = ["--config=configs/omgd.py"]
  else:
    path = str(tmp_path / "data")
    write_images(tmp_path / "data", 3, 128, 128)
    flags = ["--config=configs/aguinaldo.py"]
  bad = sorted(images.list_image_files(path))[-1]
  truncate(bad)  # Its header still reads: PIL's verify() passed it.
  with Image.open(bad) as image:
    image.verify()
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "gankd_jax.main", *flags, f"--workdir={workdir}",
       f"--config.data.path={path}"], cwd=REPO, capture_output=True, text=True, check=False,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 2, result.stderr  # 2: bad input (1 is a NaN/Inf loss).
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: cannot decode image file {bad}: "), lines
  assert "truncated" in lines[0]
  assert not workdir.exists()


def test_image_checks_are_cached_outside_the_data_folder(tmp_path, monkeypatch):
  folder = tmp_path / "data"
  paths = write_images(folder, 5, 16, 8, fmt="png")
  decoded = []
  real_inspect = images.inspect_image_file

  def counting_inspect(path, **kwargs):
    decoded.append(path)
    return real_inspect(path, **kwargs)

  monkeypatch.setattr(images, "inspect_image_file", counting_inspect)
  first = images.validate_image_files(paths, cache_for=str(folder))
  assert sorted(decoded) == sorted(paths) and first == [(16, 8)] * 5
  cache_file = images.check_cache_path(str(folder))
  assert cache_file.startswith(str(tmp_path / "cache" / "image_checks"))
  assert os.path.isfile(cache_file)
  assert sorted(os.listdir(folder)) == sorted(os.path.basename(p) for p in paths)

  decoded.clear()  # A second start: only stats, no decoding.
  assert images.validate_image_files(paths, cache_for=str(folder)) == first
  assert not decoded

  truncate(paths[2], keep=60)  # Size (and mtime) changed: decoded again, and refused.
  with pytest.raises(images.ImageFileError, match=re.escape(paths[2])):
    images.validate_image_files(paths, cache_for=str(folder))
  assert decoded == [paths[2]]


def test_a_second_start_uses_the_cache(tmp_path, monkeypatch):
  config = tiny_omgd_config(**{"data.path": pairs_folder(tmp_path / "pairs")})
  preflight.check(config)
  monkeypatch.setattr(images, "inspect_image_file", lambda *a, **k: pytest.fail("decoded again"))
  preflight.check(config)
  data.build_dataset(config.data, "train")


# ----------------------------------------------------------------------------- suggested fixes
FIXTURE_VALUES = {"DIR": "teacher_run", "FILE.npz": "teacher.npz"}


def apply_flag(base: str, overrides: dict, flag: str) -> tuple[str, dict]:
  """A command-line flag applied as the CLI would: --config=FILE:VARIANT swaps the base config,
  --config.a.b=V sets a field (ints parsed as ints)."""
  name, value = flag[len("--"):].split("=", 1)
  if name == "config":
    return value, overrides
  field = name[len("config."):]
  return base, {**overrides, field: int(value) if re.fullmatch(r"-?\d+", value) else value}


def build(base: str, overrides: dict):
  from configs import aguinaldo, omgd
  from tests.conftest import TINY_AGUINALDO, TINY_OMGD, override
  module, variant = (base.split(":") + [""])[:2]
  if module == "configs/omgd.py":
    config = omgd.get_config(variant)
    tiny = {k: v for k, v in TINY_OMGD.items() if not k.startswith(("teacher", "student"))
            or variant in ("", "unet64", "resnet64")}
  else:
    config, tiny = aguinaldo.get_config(variant or "teacher"), TINY_AGUINALDO
  return override(config, {**tiny, **overrides})


def suggested_flags(message: str) -> set[str]:
  return set(re.findall(r"--config[.=][^\s,()]+", message))


# (base config, bad overrides, what the error says, fixes: each a list of flags applied together)
CASES = {
    "crop_size not a power of two": (
        "configs/omgd.py:unet64", {"data.crop_size": 48}, "power-of-two",
        [["--config.data.crop_size=32"], ["--config=configs/omgd.py:resnet64"]]),
    "crop_size too small for a U-Net": (
        "configs/omgd.py:unet64", {"data.crop_size": 16}, "at least 32 px",
        [["--config.data.crop_size=32"]]),
    "crop_size needs num_downs": (
        "configs/omgd.py:unet64", {"data.crop_size": 96}, "power-of-two",
        [["--config.teacher_wide.num_downs=5", "--config.teacher_deep.num_downs=5",
          "--config.student.num_downs=5"]]),
    "num_downs too deep for crop_size": (
        "configs/omgd.py:unet64", {"data.crop_size": 96, "teacher_wide.num_downs": 6,
                                   "teacher_deep.num_downs": 5, "student.num_downs": 5},
        "teacher_wide.num_downs=6", [["--config.teacher_wide.num_downs=5"]]),
    "path beside a TFDS name": (
        "configs/aguinaldo.py", {"data.name": "mnist", "data.path": "FOLDER"}, "reads TFDS",
        [["--config.data.name=image_folder"], ["--config.data.data_dir=FOLDER", "unset data.path"]]),
    "in-run teacher longer than the run": (
        "configs/aguinaldo.py:mse", {"teacher.num_train_steps": 4, "num_train_steps": 4},
        "teacher trains first in this run",
        # --config.teacher.workdir=DIR needs a trained teacher run: tests/test_aguinaldo.py.
        [["--config.num_train_steps=8"], ["--config.teacher.weights=FILE.npz"]]),
    "teacher run and weights both given": (
        "configs/aguinaldo.py:mse", {"teacher.workdir": "DIR", "teacher.weights": "FILE.npz"},
        "not both", [["unset teacher.workdir"]]),  # Keeping the run instead: test_aguinaldo.py.
    "batch norm critic under a gradient penalty": (
        "configs/aguinaldo.py:joint", {"discriminator.norm": "batch", "teacher.weights": "FILE.npz"},
        "cannot be used with", [["--config.discriminator.norm=layer"],
                                ["--config.discriminator.norm=instance"],
                                ["--config.discriminator.norm=none"]]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_suggested_fix_is_accepted(tmp_path, case):
  base, bad, says, fixes = CASES[case]
  folder = str(tmp_path / "images")
  write_images(tmp_path / "images", 2, 24, 24)
  pairs = pairs_folder(tmp_path / "pairs", size=96)
  (tmp_path / "teacher.npz").write_bytes(b"")
  (tmp_path / "teacher_run").mkdir()
  paths = {"FOLDER": folder, **{k: str(tmp_path / v) for k, v in FIXTURE_VALUES.items()}}
  substitute = lambda text: re.sub("|".join(map(re.escape, paths)), lambda m: paths[m.group()],
                                   text)
  bad = {k: substitute(v) if isinstance(v, str) else v for k, v in bad.items()}
  if base.startswith("configs/omgd.py"):
    bad = {"data.path": pairs, **bad}  # Small files, so that a fix is checked in a second.
  with pytest.raises(ValueError, match=says) as info:
    train.prepare(build(base, bad), str(tmp_path / "refused"))
  message = str(info.value)
  assert "\n" not in message
  # Every suggested flag is one the test applies, and each fix is in the message as written.
  applied = {form for fix in fixes for flag in fix if flag.startswith("--")
             for form in (flag, substitute(flag))}
  assert suggested_flags(message) <= applied | {"--config.teacher.workdir=DIR"}, message
  for fix in fixes:
    config_base, overrides = base, dict(bad)
    for flag in fix:
      if flag.startswith("unset "):  # Said as "leave X unset" or "set one of X and Y".
        field = flag[len("unset "):]
        assert field in message
        overrides.pop(field)
        continue
      value = flag.split("=", 1)[1]
      assert substitute(flag) in message or flag in message or f"'{value}'" in message, flag
      config_base, overrides = apply_flag(config_base, overrides, substitute(flag))
    config = build(config_base, overrides)
    if config.data.name in ("mnist", "cifar10", "celeb_a"):
      preflight.check(config)  # A TFDS build needs TensorFlow and the prepared data set.
    else:
      train.prepare(config, str(tmp_path / "accepted"))


def test_use_a_new_workdir(tmp_path):
  train.checkpointing.write_config(str(tmp_path / "run"), tiny_omgd_config())
  with pytest.raises(ValueError, match="use a new --workdir"):
    train.prepare(tiny_omgd_config(**{"student.ngf": 8}), str(tmp_path / "run"))
  train.prepare(tiny_omgd_config(**{"student.ngf": 8}), str(tmp_path / "new"))


def test_vgg_note_suggestion_turns_the_losses_on(tmp_path):
  from gankd_jax.methods import build_method
  from gankd_jax.weights import download
  config = tiny_omgd_config()
  method = build_method(config)
  if method.vgg_path:
    pytest.skip("VGG16 weights are cached on this machine: no note to follow")
  note = method.notes()[0].text
  flag = re.search(r"--config\.vgg\.weights=\S+", note).group()
  weights = tmp_path / download.VGG16.filename
  weights.write_bytes(b"")
  assert flag.endswith(f"/{download.VGG16.filename}")
  config.vgg.weights = str(weights)
  assert "perceptual losses on" in build_method(config).notes()[0].text


def test_weights_flag_suggestion_is_a_config_field(tmp_path, monkeypatch):
  from gankd_jax import evaluation
  from gankd_jax.weights import download
  monkeypatch.setenv(download.OFFLINE_ENV, "1")
  monkeypatch.setenv("HOME", str(tmp_path))  # No torch hub cache either.
  for known, flag in ((download.INCEPTION_FID, evaluation.INCEPTION_FLAG),
                      (download.VGG16, evaluation.VGG_FLAG)):
    with pytest.raises(ValueError, match=re.escape(f"pass {flag}=FILE")):
      download.resolve(known, None, flag=flag)
    weights = tmp_path / known.filename
    weights.write_bytes(b"")
    config = tiny_omgd_config(**{flag[len("--config."):]: str(weights)})
    assert download.resolve(known, config.eval.get(flag.split(".")[-1]), flag=flag) == str(weights)


@pytest.mark.parametrize("field", ["teacher_wide.ngf", "teacher_deep.ngf", "student.ngf",
                                   "discriminator.ndf"])
def test_width_errors_name_the_network(field):
  with pytest.raises(ValueError, match=f"^{re.escape(field)} must be a positive integer, got 0$"):
    preflight.check(tiny_omgd_config(**{field: 0}))


def test_min_unet_depth_matches_the_model():
  from gankd_jax.models import unet
  assert preflight.MIN_UNET_DEPTH == unet.MIN_NUM_DOWNS
