"""Tests for the Flax VGG16 trunk: torchvision weight conversion and a NumPy reference forward."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gankd_jax.models import vgg
from gankd_jax.models.vgg import (IMAGENET_MEAN, IMAGENET_STD, VGG16Features, load_vgg16,
                                  vgg16_params_from_state_dict)
from gankd_jax.weights.torch_pth import save_state_dict

# torchvision vgg16().features: conv indices and (out, in) channels up to relu4_3.
_TORCHVISION_CONVS = [(0, 64, 3), (2, 64, 64), (5, 128, 64), (7, 128, 128), (10, 256, 128),
                      (12, 256, 256), (14, 256, 256), (17, 512, 256), (19, 512, 512), (21, 512, 512)]
# The torchvision Sequential read as a program: conv index, "pool", or a tap name after a ReLU.
_PROGRAM = [0, 2, "relu1_2", "pool", 5, 7, "relu2_2", "pool", 10, 12, 14, "relu3_3", "pool",
            17, 19, 21, "relu4_3"]


def _random_state_dict(seed: int = 0) -> dict:
  """He-scaled random weights in torchvision layout (OIHW), plus classifier keys to ignore."""
  rng = np.random.default_rng(seed)
  state = {}
  for index, out_channels, in_channels in _TORCHVISION_CONVS:
    std = np.sqrt(2.0 / (9 * in_channels))
    state[f"features.{index}.weight"] = (rng.normal(size=(out_channels, in_channels, 3, 3)) * std).astype(np.float32)
    state[f"features.{index}.bias"] = (rng.normal(size=(out_channels,)) * 0.1).astype(np.float32)
  state["classifier.0.bias"] = np.zeros(4096, np.float32)
  return state


def _conv3x3_nchw(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
  """PyTorch Conv2d(k=3, padding=1) in float64 via explicit patches: x (N,C,H,W), weight OIHW."""
  n, _, h, w = x.shape
  padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
  out = np.zeros((n, weight.shape[0], h, w))
  for dy in range(3):
    for dx in range(3):
      out += np.einsum("nchw,oc->nohw", padded[:, :, dy:dy + h, dx:dx + w], weight[:, :, dy, dx])
  return out + bias[None, :, None, None]


def _max_pool_nchw(x: np.ndarray) -> np.ndarray:
  n, c, h, w = x.shape
  x = x[:, :, : h // 2 * 2, : w // 2 * 2]
  return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def _reference_taps(images_nhwc: np.ndarray, state: dict, imagenet: bool) -> dict:
  x = (images_nhwc.astype(np.float64) + 1.0) / 2.0
  if imagenet:
    x = (x - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
  x = x.transpose(0, 3, 1, 2)
  taps = {}
  for step in _PROGRAM:
    if step == "pool":
      x = _max_pool_nchw(x)
    elif isinstance(step, str):
      taps[step] = x.transpose(0, 2, 3, 1)
    else:
      x = np.maximum(_conv3x3_nchw(x, state[f"features.{step}.weight"].astype(np.float64),
                                   state[f"features.{step}.bias"].astype(np.float64)), 0.0)
  return taps


@pytest.fixture(scope="module")
def state_and_params():
  state = _random_state_dict()
  return state, vgg16_params_from_state_dict(state)


@pytest.mark.parametrize("normalization", ["none", "imagenet"])
def test_forward_matches_numpy_reference(state_and_params, normalization):
  state, params = state_and_params
  images = np.random.default_rng(1).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
  taps = VGG16Features(input_normalization=normalization).apply({"params": params}, jnp.asarray(images))
  reference = _reference_taps(images, state, imagenet=normalization == "imagenet")
  assert sorted(taps) == ["relu1_2", "relu2_2", "relu3_3", "relu4_3"]
  for name, expected in reference.items():
    scale = np.abs(expected).max()
    assert scale > 0, name
    np.testing.assert_allclose(np.asarray(taps[name]), expected, rtol=1e-4, atol=1e-4 * scale,
                               err_msg=name)


def test_tap_shapes_follow_torch_floor_pooling(state_and_params):
  _, params = state_and_params
  taps = VGG16Features().apply({"params": params}, jnp.zeros((2, 22, 30, 3)))
  assert taps["relu1_2"].shape == (2, 22, 30, 64)
  assert taps["relu2_2"].shape == (2, 11, 15, 128)
  assert taps["relu3_3"].shape == (2, 5, 7, 256)
  assert taps["relu4_3"].shape == (2, 2, 3, 512)


def test_init_matches_converted_tree(state_and_params):
  import jax

  _, params = state_and_params
  initialised = VGG16Features().init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
  shapes = jax.tree_util.tree_map(jnp.shape, initialised)
  assert shapes == jax.tree_util.tree_map(jnp.shape, params)


def test_conversion_errors_name_the_tensor():
  state = _random_state_dict()
  del state["features.12.bias"]
  with pytest.raises(ValueError, match=r"features\.12\.bias"):
    vgg16_params_from_state_dict(state)
  state = _random_state_dict()
  state["features.0.weight"] = state["features.0.weight"][:, :2]
  with pytest.raises(ValueError, match=r"features\.0\.weight has shape \(64, 2, 3, 3\)"):
    vgg16_params_from_state_dict(state)


def test_unknown_input_normalization_raises(state_and_params):
  _, params = state_and_params
  with pytest.raises(ValueError, match="input_normalization"):
    VGG16Features(input_normalization="caffe").apply({"params": params}, jnp.zeros((1, 8, 8, 3)))


def test_load_vgg16_from_pth_and_npz(tmp_path, state_and_params):
  state, params = state_and_params
  pth, npz = tmp_path / "vgg16.pth", tmp_path / "vgg16.npz"
  save_state_dict(pth, state)
  np.savez(npz, **state)
  for path in (pth, npz):
    loaded = load_vgg16(path)
    for name in params:
      np.testing.assert_array_equal(loaded[name]["kernel"], params[name]["kernel"])
      np.testing.assert_array_equal(loaded[name]["bias"], params[name]["bias"])
  with pytest.raises(ValueError, match="does not exist"):
    load_vgg16(tmp_path / "missing.pth")


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 7, 9, 2)])  # odd sides: torch floors them
def test_max_pool_matches_reduce_window_values_and_gradients(shape):
  """The reshape max pool is flax's reduce-window max pool, forward and backward (no ties)."""
  x = jax.random.normal(jax.random.key(0), shape)
  reference = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
  np.testing.assert_array_equal(vgg._max_pool_2x2(x), reference(x))
  weights = jax.random.normal(jax.random.key(1), reference(x).shape)
  grad = lambda pool: jax.grad(lambda x: jnp.sum(weights * pool(x)))(x)
  np.testing.assert_array_equal(grad(vgg._max_pool_2x2), grad(reference))
