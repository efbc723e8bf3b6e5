"""`python -m gankd_jax.generate` against the reference's generate.py: the PNGs it wrote for the
fixture network pickles (tests/fixtures/make_stylegan2_fixtures.py ran its CLI for seeds 0-2,
--noise-mode const, --trunc 1 and 0.7, --class 1 for the conditional one) must match ours, every
pixel within 1 level; seed parsing; one-line errors for bad seeds and a missing --class."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from gankd_jax import generate

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "stylegan2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"uncond16": None, "cond32": 1, "arch16": None}  # name -> --class
SEEDS = (0, 1, 2)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_pngs_match_reference_generate(name, tmp_path):
  for trunc in ("1", "0.7"):
    outdir = tmp_path / trunc
    paths = generate.generate(os.path.join(FIXTURES, f"{name}.pkl"), list(SEEDS), str(outdir),
                              truncation_psi=float(trunc), noise_mode="const", class_idx=CONFIGS[name])
    assert [os.path.basename(p) for p in paths] == [f"seed{s:04d}.png" for s in SEEDS]
    for seed in SEEDS:
      ours = Image.open(outdir / f"seed{seed:04d}.png")
      ref = Image.open(os.path.join(FIXTURES, name, f"trunc{trunc}", f"seed{seed:04d}.png"))
      assert ours.mode == ref.mode == "RGB" and ours.size == ref.size
      diff = np.abs(np.asarray(ours, np.int16) - np.asarray(ref, np.int16))
      assert diff.max() <= 1, (name, trunc, seed, int(diff.max()), int((diff > 0).sum()))


def test_parse_seeds():
  assert generate.parse_seeds("0-7,12") == [0, 1, 2, 3, 4, 5, 6, 7, 12]
  assert generate.parse_seeds("85,265,297") == [85, 265, 297]  # the reference's forms
  assert generate.parse_seeds("600-605") == list(range(600, 606))
  assert generate.parse_seeds("3") == [3]
  for bad in ("", "a", "1,,2", "-1", "1-", "0-7;12", "1.5"):
    with pytest.raises(ValueError, match=r"^--seeds: bad seed list"):
      generate.parse_seeds(bad)
  with pytest.raises(ValueError, match=r"^--seeds: empty range '5-3'"):
    generate.parse_seeds("1,5-3")
  with pytest.raises(ValueError, match=r"^--seeds: seed 4294967296 is over 4294967295"):
    generate.parse_seeds("4294967296")


def test_class_label_and_network_errors(tmp_path):
  np.testing.assert_array_equal(generate.class_label(3, 1), [[0, 1, 0]])
  assert generate.class_label(0, None).shape == (1, 0)
  with pytest.raises(ValueError, match=r"--class: 3 is not a class of this network \(0\.\.2\)"):
    generate.class_label(3, 3)
  with pytest.raises(ValueError, match="no such file or run directory"):
    generate.split_network(str(tmp_path / "nope.pkl"))
  with pytest.raises(ValueError, match=r"is a file; ':G' only names a run's generator"):
    generate.load_generator(os.path.join(FIXTURES, "uncond16.pkl:G"))


def _run(*args):
  return subprocess.run([sys.executable, "-m", "gankd_jax.generate", *args], cwd=REPO,
                        capture_output=True, text=True, check=False)


def test_cli_one_line_errors(tmp_path):
  bad = _run(f"--network={FIXTURES}/cond32.pkl", "--seeds=0-x", f"--outdir={tmp_path}")
  assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
      "error: --seeds: bad seed list '0-x' (expected numbers and ranges, e.g. 0-7,12)")
  missing = _run(f"--network={FIXTURES}/cond32.pkl", "--seeds=0", f"--outdir={tmp_path}")
  assert missing.returncode == 2
  assert missing.stderr.strip().splitlines()[-1].startswith("error: --class: must specify a class label")
  assert not list(tmp_path.iterdir())
