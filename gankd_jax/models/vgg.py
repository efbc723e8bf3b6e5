"""VGG16 feature extractor (torchvision `vgg16().features` layout) up to relu4_3.

OMGD's perceptual losses (`utils/vgg.py`, `utils/vgg_feature.py` in bytedance/OMGD) read four
taps of torchvision's VGG16 features: relu1_2 (`features[:4]`), relu2_2 (`[4:9]`),
relu3_3 (`[9:16]`) and relu4_3 (`[16:23]`); we stop there. Inputs are generator images in
[-1, 1]; they are mapped to [0, 1] with `(x + 1) / 2` (what OMGD feeds, `input_normalization
='none'`), or additionally standardised with the ImageNet mean/std torchvision weights were
trained with (`'imagenet'`).

Weights convert from a torchvision state dict (`features.{i}.weight` OIHW, `features.{i}.bias`)
with the explicit map `TORCHVISION_CONV_INDEX`. The network is frozen in OMGD; callers should
not optimise its params (gradients still flow to the input).
"""
from __future__ import annotations

import os
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gankd_jax.models.layers import mixed_conv
from gankd_jax.weights.torch_pth import load_state_dict

# (block, convs per block, output channels) of VGG16 up to relu4_3.
_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512))
FEATURE_TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
INPUT_NORMALIZATIONS = ("none", "imagenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Flax conv name -> index in torchvision's `vgg16().features` Sequential.
TORCHVISION_CONV_INDEX = {
    "conv1_1": 0, "conv1_2": 2,
    "conv2_1": 5, "conv2_2": 7,
    "conv3_1": 10, "conv3_2": 12, "conv3_3": 14,
    "conv4_1": 17, "conv4_2": 19, "conv4_3": 21,
}


def _conv_shapes() -> dict[str, tuple[int, int]]:
  """(in, out) channels of every conv, in order."""
  shapes, in_channels = {}, 3
  for block, count, out_channels in _BLOCKS:
    for index in range(1, count + 1):
      shapes[f"conv{block}_{index}"] = (in_channels, out_channels)
      in_channels = out_channels
  return shapes


CONV_SHAPES = _conv_shapes()


def _max_pool_2x2(x: jax.Array) -> jax.Array:
  """torch MaxPool2d(2, 2): floor division of odd sizes.

  As a max over a reshape, not `nn.max_pool`: the windows do not overlap, and XLA:CPU lowers
  reduce-window's gradient to iota + scatter over the whole map (VGG16 fwd+bwd at 4x256x256:
  1.40 -> 1.19 s). The values are the same; where a window holds several equal maxima the
  gradient is split between them instead of going to the first: both are gradients of the same
  function, and such ties are almost always ReLU zeros, whose gradient the ReLU stops anyway.
  """
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


class VGG16Features(nn.Module):
  """VGG16 conv trunk returning {"relu1_2", "relu2_2", "relu3_3", "relu4_3"} activations (NHWC)."""

  input_normalization: str = "none"

  @nn.compact
  def __call__(self, x, *, train: bool = True):
    del train  # no dropout or norm layers in the trunk
    if self.input_normalization not in INPUT_NORMALIZATIONS:
      raise ValueError(f"unknown VGG input_normalization {self.input_normalization!r}; "
                       f"expected one of {', '.join(INPUT_NORMALIZATIONS)}")
    x = (jnp.asarray(x, jnp.float32) + 1.0) / 2.0
    if self.input_normalization == "imagenet":
      x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
    taps = {}
    for block, count, out_channels in _BLOCKS:
      if block > 1:
        x = _max_pool_2x2(x)
      for index in range(1, count + 1):
        x = nn.Conv(out_channels, (3, 3), padding=((1, 1), (1, 1)),
                    kernel_init=nn.initializers.normal(0.02), conv_general_dilated=mixed_conv,
                    name=f"conv{block}_{index}")(x)
        x = nn.relu(x)
      taps[f"relu{block}_{count}"] = x
    return taps


def _tensor(state_dict: Mapping[str, np.ndarray], key: str, shape: tuple[int, ...]) -> np.ndarray:
  if key not in state_dict:
    raise ValueError(f"VGG16 state dict is missing tensor {key}")
  value = np.asarray(state_dict[key])
  if value.shape != shape:
    raise ValueError(f"VGG16 tensor {key} has shape {value.shape}, expected {shape}")
  return value.astype(np.float32)


def vgg16_params_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
  """Flax params of `VGG16Features` from a torchvision vgg16 state dict (extra keys ignored).

  Use as `VGG16Features().apply({"params": params}, images)`.
  """
  params = {}
  for name, (in_channels, out_channels) in CONV_SHAPES.items():
    index = TORCHVISION_CONV_INDEX[name]
    weight = _tensor(state_dict, f"features.{index}.weight", (out_channels, in_channels, 3, 3))
    bias = _tensor(state_dict, f"features.{index}.bias", (out_channels,))
    params[name] = {"kernel": jnp.asarray(weight.transpose(2, 3, 1, 0)), "bias": jnp.asarray(bias)}
  return params


def load_vgg16(path: str | os.PathLike) -> dict:
  """Flax params of `VGG16Features` from a torchvision `.pth` or an `.npz` with the same keys."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"VGG16 weights file {path} does not exist")
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as archive:
      state_dict = {key: archive[key] for key in archive.files}
  else:
    state_dict = load_state_dict(path)
  return vgg16_params_from_state_dict(state_dict)
