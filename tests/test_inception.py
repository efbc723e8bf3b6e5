"""InceptionV3 (pytorch-fid variant) and VGG16 fc2: conformance with the reference networks.

Reference outputs come from tests/fixtures/make_eval_fixtures.py, which runs pytorch-fid's own
InceptionV3 (`pytorch_fid.inception`) and torchvision's vgg16 on the same seeded weights
(tests/fixtures/seeded_weights.py). Here those weights go through our `.pth` writer, torch-free
reader, converter and cache, then through our Flax networks. Each network compiles once per module.
"""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gankd_jax.models import inception, vgg16_fc2
from gankd_jax.weights import convert
from gankd_jax.weights.torch_pth import save_state_dict

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
sys.path.insert(0, FIXTURES)
from seeded_weights import seeded_images, seeded_state_dict  # noqa: E402

RTOL = 1e-4  # The conformance bound, float32.


def _fixture(name):
  with np.load(os.path.join(FIXTURES, name), allow_pickle=False) as archive:
    return {key: archive[key] for key in archive.files}


def inception_state_dict() -> dict:
  """The fixture script's weights: seeded tensors plus its per-layer BN calibration."""
  reference = _fixture("inception_reference.npz")
  calibration = dict(zip(reference["bn_names"].tolist(), reference["bn_values"]))
  shapes = convert.expected_shapes(inception.abstract_variables())
  return seeded_state_dict(shapes, 0, calibration)


def assert_relative_close(actual, expected, rtol=RTOL, what=""):
  """|a - e| <= rtol * max|e| elementwise (relative to the output's scale), and report it."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  scale = np.abs(expected).max()
  error = np.abs(actual - expected).max() / scale
  assert error <= rtol, f"{what}: max error {error:.3g} of scale {scale:.3g}"
  return error


@pytest.fixture(scope="module")
def inception_setup(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("inception")
  path = tmp / "pt_inception-seeded.pth"
  save_state_dict(path, inception_state_dict())
  variables = inception.load_inception(str(path), cache_dir=str(tmp / "cache"))
  apply = jax.jit(inception.InceptionV3().apply)
  return path, tmp / "cache", variables, apply


def test_resize_matches_torch_interpolate():
  reference = _fixture("resize_reference.npz")
  cases = [((1, 2, 5, 7), (3, 11)), ((2, 1, 9, 4), (13, 2)), ((1, 3, 17, 13), (29, 31))]
  for index, (shape, size) in enumerate(cases):
    x = np.random.RandomState(index).uniform(-1, 1, shape).astype(np.float32)
    ours = inception.resize_bilinear(jnp.asarray(x.transpose(0, 2, 3, 1)), *size)
    np.testing.assert_allclose(np.asarray(ours).transpose(0, 3, 1, 2), reference[f"case{index}"],
                               atol=2e-6, err_msg=f"case {index}")
    host = np.stack([inception.resize_bilinear_numpy(img, *size) for img in x.transpose(0, 2, 3, 1)])
    np.testing.assert_allclose(host.transpose(0, 3, 1, 2), reference[f"case{index}"], atol=2e-6)


def test_resize_does_not_antialias():
  """Downscaling by 4 samples 2 of every 4 source pixels; an antialiasing resize would not."""
  x = np.zeros((1, 8, 8, 1), np.float32)
  x[:, :, 0::4] = 1.0  # Columns 0 and 4 lit; bilinear to width 2 reads columns 1.5 and 5.5.
  y = np.asarray(inception.resize_bilinear(jnp.asarray(x), 8, 2))
  np.testing.assert_array_equal(y, 0.0)


def test_inception_matches_pytorch_fid(inception_setup):
  _, _, variables, apply = inception_setup
  reference = _fixture("inception_reference.npz")
  images = seeded_images(1, 2, 320, 280).transpose(0, 2, 3, 1)
  out = apply(variables, jnp.asarray(images))
  assert out["pool"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
  assert_relative_close(out["pool"], reference["pool"], what="pool")
  assert_relative_close(out["logits"], reference["logits"], what="logits")


def test_converter_roundtrip_and_cache(inception_setup):
  path, cache, variables, _ = inception_setup
  state = inception_state_dict()
  back = convert.state_dict_from_variables(variables)
  assert list(back) == list(state)  # Same names, in torch's order.
  for name in state:
    np.testing.assert_array_equal(back[name], state[name], err_msg=name)
  cached = os.listdir(cache / "converted")
  assert len(cached) == 1 and cached[0].startswith("pytorch_fid_inceptionv3-v1-")
  again = inception.load_inception(str(path), cache_dir=str(cache))  # From the cache.
  np.testing.assert_array_equal(again["params"]["fc"]["kernel"], variables["params"]["fc"]["kernel"])


def test_wrong_architecture_names_first_tensor(tmp_path):
  state = inception_state_dict()
  vgg_like = {"features.0.weight": np.zeros((64, 3, 3, 3), np.float32)}
  path = tmp_path / "vgg16.pth"
  save_state_dict(path, vgg_like)
  with pytest.raises(ValueError, match=r"has no tensor Conv2d_1a_3x3\.conv\.weight"):
    inception.load_inception(str(path), cache_dir=str(tmp_path))
  state["Mixed_6b.branch7x7_2.conv.weight"] = state["Mixed_6b.branch7x7_2.conv.weight"][:, :, :, :3]
  with pytest.raises(ValueError, match=r"tensor Mixed_6b\.branch7x7_2\.conv\.weight has shape "
                                       r"\(128, 128, 1, 3\), pytorch-fid InceptionV3 expects \(128, 128, 1, 7\)"):
    inception.variables_from_state_dict(state, "x.pth")


def test_npz_weights_load_like_pth(tmp_path):
  state = {k: v for k, v in inception_state_dict().items()}
  np.savez(tmp_path / "w.npz", **state)
  variables = inception.load_inception(str(tmp_path / "w.npz"), cache_dir=str(tmp_path / "c"))
  np.testing.assert_array_equal(variables["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"],
                                state["Mixed_7c.branch_pool.bn.running_var"])


def test_vgg16_fc2_matches_torchvision(tmp_path):
  from gankd_jax.models.vgg import vgg16_params_from_state_dict

  shapes = convert.expected_shapes(vgg16_fc2.abstract_variables())
  # The convs carry torchvision's names, the fc1 shape is torch's: state dict as torchvision's.
  state = seeded_state_dict(shapes, 0)
  path = tmp_path / "vgg16-seeded.pth"
  save_state_dict(path, state)
  variables = vgg16_fc2.load_vgg16_fc2(str(path), cache_dir=str(tmp_path))
  images = seeded_images(2, 2, 224, 224).transpose(0, 2, 3, 1)
  features = jax.jit(vgg16_fc2.VGG16FC2().apply)(variables, jnp.asarray(images))
  assert_relative_close(features, _fixture("vgg16_reference.npz")["fc2"], what="fc2")
  # The OMGD perceptual trunk (models/vgg.py) reads the same file's conv tensors.
  trunk = vgg16_params_from_state_dict(state)
  np.testing.assert_array_equal(trunk["conv1_1"]["kernel"], variables["params"]["features.0"]["kernel"])
