"""Import of PyTorch generator checkpoints written by the real reference modules (junyanz's,
gan-compression's, OMGD's; fixtures from tests/fixtures/make_pth_generator_fixtures.py): our
eval-mode outputs equal theirs at 256 x 256 (every case: U-Net 128 / 256 and OMGD's deep U-Net,
ResNet 6 / 9 blocks, mobile and deep mobile ResNets; zip and legacy files, with and without
`module.`, dropout layouts, batch and instance norm), the detected architecture is right, bad
files are refused."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from gankd_jax.weights import generator_pth
from gankd_jax.weights.torch_pth import load_state_dict, save_state_dict

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "generator_pth")
with open(os.path.join(FIXTURES, "cases.json"), encoding="utf-8") as _stream:
  CASES = json.load(_stream)
# Relative to the output scale (max |y|, about 1 for these tanh outputs); or twice torch's own
# float32 error where that is larger (the deep OMGD teacher amplifies float32 rounding ~1e-4).
TOLERANCE = 1e-4


def input_image(size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
  """The fixture script's closed-form input, NHWC (same float64 arithmetic, then float32)."""
  c, y, x = np.meshgrid(np.arange(channels), np.arange(size), np.arange(size), indexing="ij")
  h = np.sin(x * 12.9898 + y * 78.233 + c * 37.719 + seed * 4.581) * 43758.5453
  return ((h - np.floor(h)) * 2.0 - 1.0).astype(np.float32)[None].transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def expected():
  with np.load(os.path.join(FIXTURES, "expected.npz")) as archive:
    return {name: archive[name] for name in archive.files}


@pytest.mark.parametrize("name", sorted(CASES))
def test_outputs_equal_reference(name, expected):
  case = CASES[name]
  assert (case["size"], case["stride"]) == (256, 8)  # The acceptance's size, sampled.
  imported = generator_pth.load_generator(os.path.join(FIXTURES, f"{name}.pth"))
  assert imported.spec.family == case["family"]
  assert bool(imported.notes) == case["instance_stats"]
  y = np.asarray(imported.apply(input_image(case["size"], seed=case["seed"])))
  stride = case["stride"]
  ref = expected[name]
  error = np.max(np.abs(y[:, ::stride, ::stride] - ref)) / np.max(np.abs(ref))
  tolerance = max(TOLERANCE, 2 * case["torch_float32_error"])
  assert error <= tolerance, f"{name}: max error {error:.2e} of the output scale"


def test_detected_architectures():
  specs = {name: generator_pth.load_generator(os.path.join(FIXTURES, f"{name}.pth")).spec
           for name in ("junyanz_resnet6_batch_dropout_legacy_module",
                        "junyanz_unet128_instance_legacy_module", "junyanz_resnet9_instance",
                        "omgd_mobile_deepest_instance_legacy", "omgd_unet_deepest256_batch",
                        "omgd_unet_deepest32_instance_legacy_module")}
  assert specs["junyanz_resnet6_batch_dropout_legacy_module"] == generator_pth.GeneratorSpec(
      family="resnet_9blocks", ngf=2, norm="batch", n_blocks=6, dropout_layout=True)
  unet = specs["junyanz_unet128_instance_legacy_module"]
  assert (unet.family, unet.ngf, unet.num_downs, unet.norm) == ("unet", 1, 7, "instance")
  assert not specs["junyanz_resnet9_instance"].dropout_layout
  deep = specs["omgd_mobile_deepest_instance_legacy"]
  assert (deep.family, deep.ngf, deep.n_blocks, deep.norm) == ("mobile_resnet_deepest", 2, 9,
                                                               "instance")
  assert specs["omgd_unet_deepest256_batch"] == generator_pth.GeneratorSpec(
      family="unet_deepest", ngf=1, norm="batch", num_downs=8)
  assert specs["omgd_unet_deepest32_instance_legacy_module"] == generator_pth.GeneratorSpec(
      family="unet_deepest", ngf=1, norm="instance", num_downs=5)


def test_arch_override(tmp_path):
  path = os.path.join(FIXTURES, "junyanz_resnet9_instance.pth")
  forced = generator_pth.load_generator(path, arch="resnet_9blocks,ngf=2,norm=instance")
  assert forced.spec.n_blocks == 9
  with pytest.raises(ValueError, match=r"^[^\n]*needs tensor model\.16\.weight \(8, 4, 3, 3\)"):
    generator_pth.load_generator(path, arch="resnet_6blocks")  # model.16 is a block here, not the first transposed conv
  with pytest.raises(ValueError, match=r"^[^\n]*tensor model\.1\.weight has shape \(2, 3, 7, 7\)"):
    generator_pth.load_generator(path, arch="resnet_9blocks,ngf=4")
  with pytest.raises(ValueError, match="unknown generator 'vgg'"):
    generator_pth.load_generator(path, arch="vgg")
  with pytest.raises(ValueError, match="bad option 'ngf=0'"):
    generator_pth.parse_arch("unet_256,ngf=0")
  del tmp_path


def test_unknown_layouts_name_first_misfit(tmp_path):
  state = load_state_dict(os.path.join(FIXTURES, "gancompression_resnet9_instance.pth"))
  extra = dict(state)
  extra["model.10.conv_block.9.weight"] = np.zeros((8, 8, 3, 3), np.float32)
  save_state_dict(tmp_path / "extra.pth", extra)
  with pytest.raises(ValueError, match=r"^[^\n]*tensor model\.10\.conv_block\.9\.weight "
                     r"\(8, 8, 3, 3\) has no place in resnet_9blocks"):
    generator_pth.load_generator(tmp_path / "extra.pth")
  wrong = dict(state)
  wrong["model.13.conv_block.6.weight"] = np.zeros((8, 8, 1, 1), np.float32)
  save_state_dict(tmp_path / "wrong.pth", wrong)
  with pytest.raises(ValueError, match=r"tensor model\.13\.conv_block\.6\.weight has shape "
                     r"\(8, 8, 1, 1\), resnet_9blocks .* expects \(8, 8, 3, 3\)"):
    generator_pth.load_generator(tmp_path / "wrong.pth")
  save_state_dict(tmp_path / "other.pth", {"features.0.weight": np.zeros((4, 3, 3, 3), np.float32)})
  with pytest.raises(ValueError, match=r"^[^\n]*first key features\.0\.weight \(4, 3, 3, 3\) is "
                     "neither a U-Net"):
    generator_pth.load_generator(tmp_path / "other.pth")
  missing = {k: v for k, v in state.items() if not k.startswith("model.26.")}
  save_state_dict(tmp_path / "missing.pth", missing)
  with pytest.raises(ValueError, match=r"needs tensor model\.26\.weight \(3, 2, 7, 7\)"):
    generator_pth.load_generator(tmp_path / "missing.pth")


def test_module_prefix_and_round_trip(tmp_path):
  path = os.path.join(FIXTURES, "omgd_mobile9_batch_oldstats.pth")
  state = load_state_dict(path)
  prefixed = {f"module.{k}": v for k, v in state.items()}
  save_state_dict(tmp_path / "prefixed.pth", prefixed)
  a = generator_pth.load_generator(path)
  b = generator_pth.load_generator(tmp_path / "prefixed.pth")
  x = input_image(16)
  np.testing.assert_array_equal(np.asarray(a.apply(x)), np.asarray(b.apply(x)))
