"""`python -m gankd_jax.translate`: the reference's test path PNGs (written by
tests/fixtures/make_pth_generator_fixtures.py running junyanz's ResnetGenerator), and bad input."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from gankd_jax import translate

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "generator_pth")
NETWORK = os.path.join(FIXTURES, "junyanz_resnet9_instance.pth")
INPUT = os.path.join(FIXTURES, "translate", "input")
REFERENCE = os.path.join(FIXTURES, "translate", "reference")


def test_pngs_match_reference_test_path(tmp_path):
  paths = translate.translate(NETWORK, INPUT, str(tmp_path), size=64)
  assert [os.path.basename(p) for p in paths] == ["a_photo.png", "b_photo.png"]
  for path in paths:
    stem = os.path.splitext(os.path.basename(path))[0]
    ours = np.asarray(Image.open(path), np.int16)
    theirs = np.asarray(Image.open(os.path.join(REFERENCE, f"{stem}_fake_B.png")), np.int16)
    assert ours.shape == theirs.shape == (64, 64, 3)
    assert np.max(np.abs(ours - theirs)) <= 1, stem
    assert np.mean(ours != theirs) < 0.01, stem


def test_bfloat16_translation_stays_near_float32(tmp_path):
  """--precision=bfloat16 (the inference path's mixed precision) changes the PNGs by a few levels."""
  paths = translate.translate(NETWORK, INPUT, str(tmp_path / "f32"), size=64)
  low = translate.translate(NETWORK, INPUT, str(tmp_path / "bf16"), size=64, precision="bfloat16")
  for ours, mixed in zip(paths, low):
    a, b = (np.asarray(Image.open(p), np.int16) for p in (ours, mixed))
    assert 0 < np.max(np.abs(a - b)) <= 24 and np.mean(np.abs(a - b)) < 3


def test_direction_and_pairing(tmp_path):
  image = Image.open(os.path.join(INPUT, "a_photo.png")).convert("RGB")
  a = translate.preprocess(image, 8, paired=True)
  b = translate.preprocess(image, 8, paired=True, direction="BtoA")
  whole = translate.preprocess(image, 8, paired=False)
  assert a.shape == b.shape == whole.shape == (1, 8, 8, 3)
  assert not np.array_equal(a, b) and -1 <= a.min() and a.max() <= 1
  assert translate.is_paired([image], "auto") and not translate.is_paired([image], "false")
  del tmp_path


def test_bad_input(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match="holds no images"):
    translate.translate(NETWORK, str(empty), str(tmp_path / "out"), size=64)
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "x.png").write_bytes(b"not a png")
  with pytest.raises(ValueError, match=r"cannot decode .*x\.png"):
    translate.translate(NETWORK, str(broken), str(tmp_path / "out"), size=64)
  with pytest.raises(ValueError, match="divisible by 4, got 30"):
    translate.translate(NETWORK, INPUT, str(tmp_path / "out"), size=30)
  assert not (tmp_path / "out").exists()


def test_command_line_error_is_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "gankd_jax.translate", f"--network={tmp_path / 'none.pth'}",
       f"--input={INPUT}", f"--output={tmp_path / 'out'}"],
      capture_output=True, text=True, check=False,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"error: --network: no such file or run directory: {tmp_path / 'none.pth'}"]


def test_pngs_match_omgd_test_py(tmp_path):
  """OMGD's own test.py (a fork of junyanz's test path: same transform and tensor2im) run on CPU
  by tests/fixtures/make_pth_generator_fixtures.py on OMGD's ResnetGenerator (batch norm, legacy
  file) at 256 px: every pixel of ours within 1 level of its `images/fake_B/<stem>.png`."""
  network = os.path.join(FIXTURES, "omgd_resnet9_batch_legacy.pth")
  paths = translate.translate(network, INPUT, str(tmp_path), size=256)
  for path in paths:
    ours = np.asarray(Image.open(path), np.int16)
    theirs = np.asarray(Image.open(os.path.join(FIXTURES, "translate", "omgd_test",
                                                os.path.basename(path))), np.int16)
    assert ours.shape == theirs.shape == (256, 256, 3)
    assert np.max(np.abs(ours - theirs)) <= 1, path
    assert np.mean(ours != theirs) < 0.01, path
