"""InceptionV3 as pytorch-fid computes FID (`pytorch_fid.inception.fid_inception_v3`), in Flax.

This is the TensorFlow FID graph (`pt_inception-2015-12-05` weights, 1008 classes) as pytorch-fid
rebuilds it on torchvision's Inception3 with four patched block types:
  * FIDInceptionA / FIDInceptionC / FIDInceptionE_1: the pool branch is a 3x3 average pool that
    does not count the zero padding (`count_include_pad=False`, TensorFlow's behaviour);
  * FIDInceptionE_2 (Mixed_7c): the pool branch is a 3x3 *max* pool (stride 1, padding 1).
Every conv is `BasicConv2d`: conv without bias, BatchNorm(eps=1e-3), ReLU.

Input handling is pytorch-fid's: NHWC images in [0, 1] are resized to 299x299 by bilinear
interpolation as `F.interpolate(mode='bilinear', align_corners=False)` does, *without* antialiasing
(written here as two interpolation-matrix products; `jax.image.resize` would antialias when
downscaling and give other numbers), then mapped to [-1, 1] by `2x - 1`.
Outputs: the 2048-d pool features (FID, KID) and the 1008 logits of its `fc` layer (IS).

Module names equal torchvision's attribute names, so a torch state dict converts by the explicit
per-leaf rules in `torch_name` (see `gankd_jax.weights.convert`).
"""
from __future__ import annotations

from typing import Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gankd_jax.models.layers import dot_general, mixed_conv

INPUT_SIZE = 299
POOL_FEATURES = 2048
NUM_LOGITS = 1008
BN_EPSILON = 1e-3
HIGHEST = jax.lax.Precision.HIGHEST

# Convolutions are XLA's own. The im2col-matmul form of models/layers.py (a large win for the OMGD
# generators' backward passes) was measured here and is not faster for this forward-only network on
# XLA:CPU (2 cores, 320x280 inputs): batch 2 0.39 s vs 0.41 s, batch 8 1.86 s vs 1.73 s, and it
# compiles 2.5x slower (7.7 s vs 2.9 s). So plain convolutions.


# ------------------------------------------------------------------------------------ resize
def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) matrix of PyTorch's bilinear interpolation, `align_corners=False`, no antialias.

  Mirrors ATen's `compute_source_index_and_lambda` in float32: source index
  `scale * (dst + 0.5) - 0.5` clamped at 0, with `scale = in / out`; equal sizes are the identity.
  """
  matrix = np.zeros((out_size, in_size), np.float32)
  if in_size == out_size:
    np.fill_diagonal(matrix, 1.0)
    return matrix
  scale = np.float32(in_size) / np.float32(out_size)
  dst = np.arange(out_size, dtype=np.float32)
  src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
  index0 = np.minimum(src.astype(np.int64), in_size - 1)
  index1 = np.where(index0 < in_size - 1, index0 + 1, index0)
  lambda1 = np.clip(src - index0.astype(np.float32), 0.0, 1.0).astype(np.float32)
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, index0), np.float32(1.0) - lambda1)
  np.add.at(matrix, (rows, index1), lambda1)
  return matrix


def resize_bilinear(images: jax.Array, height: int, width: int, precision=HIGHEST) -> jax.Array:
  """NHWC bilinear resize exactly as `F.interpolate(size=(height, width), mode='bilinear',
  align_corners=False)` (no antialiasing), as two small matrix products."""
  _, h, w, _ = images.shape
  if (h, w) == (height, width):
    return images
  rows = jnp.asarray(bilinear_matrix(h, height))
  cols = jnp.asarray(bilinear_matrix(w, width))
  out = jnp.einsum("oh,nhwc->nowc", rows, images, precision=precision)
  return jnp.einsum("pw,nowc->nopc", cols, out, precision=precision)


def resize_bilinear_numpy(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """The same resize on the host for one HWC float32 image (used to batch mixed-size files)."""
  h, w = image.shape[:2]
  if (h, w) == (height, width):
    return image.astype(np.float32)
  out = np.einsum("oh,hwc->owc", bilinear_matrix(h, height), image.astype(np.float32))
  return np.einsum("pw,owc->opc", bilinear_matrix(w, width), out).astype(np.float32)


# ------------------------------------------------------------------------------------ blocks
class BasicConv2d(nn.Module):
  """torchvision `BasicConv2d`: Conv2d(bias=False) -> BatchNorm2d(eps=1e-3) (running stats) -> ReLU."""

  features: int
  kernel: Sequence[int]
  stride: int = 1
  padding: Sequence[int] = (0, 0)
  precision: jax.lax.Precision = HIGHEST

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, tuple(self.kernel), strides=(self.stride, self.stride),
                padding=[(p, p) for p in self.padding], use_bias=False,
                precision=self.precision, conv_general_dilated=mixed_conv,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3_same(x):
  """F.avg_pool2d(3, stride=1, padding=1, count_include_pad=False)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_same(x):
  """F.max_pool2d(3, stride=1, padding=1) (padding never wins a max)."""
  return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class FIDInceptionA(nn.Module):
  pool_features: int
  precision: jax.lax.Precision = HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = lambda f, k, name, p=(0, 0): BasicConv2d(f, k, padding=p, precision=self.precision, name=name)
    b1 = conv(64, (1, 1), "branch1x1")(x)
    b5 = conv(48, (1, 1), "branch5x5_1")(x)
    b5 = conv(64, (5, 5), "branch5x5_2", (2, 2))(b5)
    b3 = conv(64, (1, 1), "branch3x3dbl_1")(x)
    b3 = conv(96, (3, 3), "branch3x3dbl_2", (1, 1))(b3)
    b3 = conv(96, (3, 3), "branch3x3dbl_3", (1, 1))(b3)
    bp = conv(self.pool_features, (1, 1), "branch_pool")(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  precision: jax.lax.Precision = HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = lambda f, k, name, s=1, p=(0, 0): BasicConv2d(f, k, s, p, self.precision, name=name)
    b3 = conv(384, (3, 3), "branch3x3", 2)(x)
    bd = conv(64, (1, 1), "branch3x3dbl_1")(x)
    bd = conv(96, (3, 3), "branch3x3dbl_2", 1, (1, 1))(bd)
    bd = conv(96, (3, 3), "branch3x3dbl_3", 2)(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class FIDInceptionC(nn.Module):
  channels_7x7: int
  precision: jax.lax.Precision = HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = lambda f, k, name, p=(0, 0): BasicConv2d(f, k, padding=p, precision=self.precision, name=name)
    c7 = self.channels_7x7
    b1 = conv(192, (1, 1), "branch1x1")(x)
    b7 = conv(c7, (1, 1), "branch7x7_1")(x)
    b7 = conv(c7, (1, 7), "branch7x7_2", (0, 3))(b7)
    b7 = conv(192, (7, 1), "branch7x7_3", (3, 0))(b7)
    bd = conv(c7, (1, 1), "branch7x7dbl_1")(x)
    bd = conv(c7, (7, 1), "branch7x7dbl_2", (3, 0))(bd)
    bd = conv(c7, (1, 7), "branch7x7dbl_3", (0, 3))(bd)
    bd = conv(c7, (7, 1), "branch7x7dbl_4", (3, 0))(bd)
    bd = conv(192, (1, 7), "branch7x7dbl_5", (0, 3))(bd)
    bp = conv(192, (1, 1), "branch_pool")(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  precision: jax.lax.Precision = HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = lambda f, k, name, s=1, p=(0, 0): BasicConv2d(f, k, s, p, self.precision, name=name)
    b3 = conv(192, (1, 1), "branch3x3_1")(x)
    b3 = conv(320, (3, 3), "branch3x3_2", 2)(b3)
    b7 = conv(192, (1, 1), "branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), "branch7x7x3_2", 1, (0, 3))(b7)
    b7 = conv(192, (7, 1), "branch7x7x3_3", 1, (3, 0))(b7)
    b7 = conv(192, (3, 3), "branch7x7x3_4", 2)(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class FIDInceptionE(nn.Module):
  """FIDInceptionE_1 (pool='avg', Mixed_7b) and FIDInceptionE_2 (pool='max', Mixed_7c)."""

  pool: str
  precision: jax.lax.Precision = HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = lambda f, k, name, p=(0, 0): BasicConv2d(f, k, padding=p, precision=self.precision, name=name)
    b1 = conv(320, (1, 1), "branch1x1")(x)
    b3 = conv(384, (1, 1), "branch3x3_1")(x)
    b3 = jnp.concatenate([conv(384, (1, 3), "branch3x3_2a", (0, 1))(b3),
                          conv(384, (3, 1), "branch3x3_2b", (1, 0))(b3)], axis=-1)
    bd = conv(448, (1, 1), "branch3x3dbl_1")(x)
    bd = conv(384, (3, 3), "branch3x3dbl_2", (1, 1))(bd)
    bd = jnp.concatenate([conv(384, (1, 3), "branch3x3dbl_3a", (0, 1))(bd),
                          conv(384, (3, 1), "branch3x3dbl_3b", (1, 0))(bd)], axis=-1)
    pooled = _avg_pool_3x3_same(x) if self.pool == "avg" else _max_pool_3x3_same(x)
    bp = conv(192, (1, 1), "branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """pytorch-fid's FID InceptionV3. `__call__(images)` with NHWC images in [0, 1] of any size
  returns {"pool": (N, 2048), "logits": (N, 1008)}.

  `resize_input` / `normalize_input` as pytorch-fid's flags (both on for FID).
  """

  resize_input: bool = True
  normalize_input: bool = True
  precision: jax.lax.Precision = HIGHEST

  @nn.compact
  def __call__(self, images):
    x = images.astype(jnp.float32)
    if self.resize_input:
      x = resize_bilinear(x, INPUT_SIZE, INPUT_SIZE, self.precision)
    if self.normalize_input:
      x = 2.0 * x - 1.0
    p = self.precision
    x = BasicConv2d(32, (3, 3), 2, precision=p, name="Conv2d_1a_3x3")(x)
    x = BasicConv2d(32, (3, 3), precision=p, name="Conv2d_2a_3x3")(x)
    x = BasicConv2d(64, (3, 3), padding=(1, 1), precision=p, name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = BasicConv2d(80, (1, 1), precision=p, name="Conv2d_3b_1x1")(x)
    x = BasicConv2d(192, (3, 3), precision=p, name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = FIDInceptionA(32, p, name="Mixed_5b")(x)
    x = FIDInceptionA(64, p, name="Mixed_5c")(x)
    x = FIDInceptionA(64, p, name="Mixed_5d")(x)
    x = InceptionB(p, name="Mixed_6a")(x)
    x = FIDInceptionC(128, p, name="Mixed_6b")(x)
    x = FIDInceptionC(160, p, name="Mixed_6c")(x)
    x = FIDInceptionC(160, p, name="Mixed_6d")(x)
    x = FIDInceptionC(192, p, name="Mixed_6e")(x)
    x = InceptionD(p, name="Mixed_7a")(x)
    x = FIDInceptionE("avg", p, name="Mixed_7b")(x)
    x = FIDInceptionE("max", p, name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(NUM_LOGITS, precision=p, dot_general=dot_general, name="fc")(pool)
    return {"pool": pool, "logits": logits}


def abstract_variables(model: InceptionV3 | None = None):
  """Shapes of the Flax variables ({'params', 'batch_stats'}) without allocating them, as nested
  dicts in definition order (the order torch lists the same tensors in)."""
  model = model or InceptionV3()
  order = []

  def init(key):
    variables = model.init(key, jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3)))
    order.extend(flax.traverse_util.flatten_dict(variables).keys())  # Trace-time side channel.
    return variables

  flat = flax.traverse_util.flatten_dict(jax.eval_shape(init, jax.random.key(0)))
  return flax.traverse_util.unflatten_dict({key: flat[key] for key in order})


# ------------------------------------------------------------------------------------ weights
ARCHITECTURE = "pytorch-fid InceptionV3"


def variables_from_state_dict(state_dict, source: str = "state dict") -> dict:
  """Flax variables from a `pt_inception-2015-12-05` state dict (torchvision Inception3 names)."""
  from gankd_jax.weights import convert
  return convert.variables_from_state_dict(state_dict, abstract_variables(),
                                           architecture=ARCHITECTURE, source=source)


def load_inception(path: str, cache_dir: str | None = None) -> dict:
  """Flax variables of `InceptionV3` from a `.pth` / `.npz` file (converted once, then cached)."""
  from gankd_jax.weights import convert
  return convert.cached_conversion(path, ARCHITECTURE, lambda sd, src: variables_from_state_dict(sd, src),
                                   cache_dir=cache_dir)
