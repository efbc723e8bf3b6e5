"""DCGAN generator and discriminator for unconditional GANs, width set by a depth scale factor `d`.

The family Aguinaldo et al. (2019, "Compressing GANs using Knowledge Distillation",
arXiv:1902.00159) distil: a DCGAN-style teacher ("W-DCGAN": DCGAN layers trained as a WGAN-GP)
and students of the same family whose channel counts are proportional to `d`.

Generator (Radford et al. 2016, DCGAN; `d` plays the role of DCGAN's `ngf`), for S x S images,
n = log2(S) - 2 feature levels of widths d * 2**(n-1), ..., 2d, d:
  z (nz) -> linear to 4x4x(d * 2**(n-1)) (no bias) -> BatchNorm -> ReLU
  -> n-1 x [ConvTranspose 4x4 / 2, pad 1 (no bias) -> BatchNorm -> ReLU]  (width halves)
  -> ConvTranspose 4x4 / 2, pad 1 (bias) to C channels -> tanh
The first layer is DCGAN's 4x4 transposed conv on a 1x1 map, written as the linear layer it is
(the same parameters, as in Gulrajani et al.'s WGAN-GP `gan_cifar.py` generator).

Discriminator (DCGAN's, mirrored): n convs 4x4 / 2, pad 1 with widths d, 2d, ..., d * 2**(n-1),
LeakyReLU(0.2) after each, a norm after all but the first, then a 4x4 valid conv to one logit.
`norm` is 'batch' (DCGAN), or for the WGAN-GP critic 'layer' / 'instance' / 'none': the gradient
penalty is per example, which BatchNorm breaks (Gulrajani et al. 2017, Sec. 4: "no critic batch
normalization"; their reference critic has no norm, and they recommend layer norm as a drop-in).
Convs followed by a norm have no bias (the norm's shift replaces it), as in DCGAN.

Images are NHWC in [-1, 1]; S a power of two from 16 (32 and 64 are the paper's sizes), C any
(1 for digits / MNIST, 3 for CIFAR-10 / CelebA). Weights initialise N(0, 0.02) through
`models/init.py` (DCGAN's init).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from gankd_jax.models.layers import (WEIGHT_INIT, Conv, ConvTranspose, Norm, dot_general,
                                      leaky_relu)

DISCRIMINATOR_NORMS = ("batch", "layer", "instance", "none")
MIN_IMAGE_SIZE = 16


def num_levels(image_size: int) -> int:
  """Feature levels between the 4x4 map and the image: log2(S) - 2."""
  return int(image_size).bit_length() - 3


def level_widths(d: int, image_size: int) -> list[int]:
  """Widths from the 4x4 level up: d * 2**(n-1), ..., 2d, d."""
  n = num_levels(image_size)
  return [d * 2 ** (n - 1 - i) for i in range(n)]


def check_image_size(image_size, what: str = "the DCGAN") -> None:
  """One-line ValueError unless `image_size` is a square side the DCGAN can take."""
  if isinstance(image_size, (tuple, list)):
    height, width = image_size
    if height != width:
      raise ValueError(f"{what} takes square images; got {height}x{width}")
    image_size = height
  size = int(image_size)
  if size < MIN_IMAGE_SIZE or size & (size - 1):
    raise ValueError(f"{what} takes square images whose side is a power of two >= "
                     f"{MIN_IMAGE_SIZE} (32 and 64 in the paper); got {size}")


def check_d(d, field: str = "d") -> None:
  if isinstance(d, bool) or not isinstance(d, int) or d <= 0:
    raise ValueError(f"{field} (the depth scale factor) must be a positive integer, got {d!r}")


class DCGANGenerator(nn.Module):
  """z (N, nz) -> images (N, S, S, C) in [-1, 1]."""

  d: int = 64
  image_size: int = 32
  channels: int = 3
  nz: int = 100

  width_field = "d"

  def __post_init__(self):
    check_d(self.d)
    check_image_size(self.image_size)
    super().__post_init__()

  @nn.compact
  def __call__(self, z, *, train: bool = True):
    widths = level_widths(self.d, self.image_size)
    h = nn.Dense(4 * 4 * widths[0], use_bias=False, kernel_init=WEIGHT_INIT,
                 dot_general=dot_general, name="project")(z)
    h = h.reshape(z.shape[0], 4, 4, widths[0])
    h = nn.relu(Norm("batch", name="project_norm")(h, train=train))
    for i, width in enumerate(widths[1:], start=1):
      h = ConvTranspose(width, 4, padding=1, use_bias=False, name=f"up{i}")(h)
      h = nn.relu(Norm("batch", name=f"up{i}_norm")(h, train=train))
    h = ConvTranspose(self.channels, 4, padding=1, use_bias=True, name="to_image")(h)
    return jnp.tanh(h)


class LayerNorm2d(nn.Module):
  """Layer norm over (H, W, C) of each example with a per-channel scale and shift (WGAN-GP's)."""

  @nn.compact
  def __call__(self, x):
    return nn.LayerNorm(epsilon=1e-5, reduction_axes=(1, 2, 3), feature_axes=-1, name="ln")(x)


class DCGANDiscriminator(nn.Module):
  """images (N, S, S, C) -> logits (N,)."""

  d: int = 64
  image_size: int = 32
  norm: str = "batch"

  width_field = "d"

  def __post_init__(self):
    check_d(self.d)
    check_image_size(self.image_size)
    super().__post_init__()
    if self.norm not in DISCRIMINATOR_NORMS:
      raise ValueError(f"discriminator norm '{self.norm}' is unknown; choose from "
                       f"{', '.join(DISCRIMINATOR_NORMS)}")

  def _norm(self, h, train: bool, name: str):
    if self.norm == "batch":
      return Norm("batch", name=name)(h, train=train)
    if self.norm == "instance":
      return Norm("instance", name=name)(h, train=train)
    if self.norm == "layer":
      return LayerNorm2d(name=name)(h)
    return h

  @nn.compact
  def __call__(self, x, *, train: bool = True):
    widths = level_widths(self.d, self.image_size)[::-1]  # d, 2d, ..., at S/2, S/4, ..., 4
    h = x
    for i, width in enumerate(widths):
      normed = i > 0 and self.norm != "none"
      h = Conv(width, 4, stride=2, padding=1, use_bias=not normed, name=f"down{i}")(h)
      if normed:
        h = self._norm(h, train, f"down{i}_norm")
      h = leaky_relu(h)
    logits = Conv(1, 4, stride=1, padding=0, use_bias=True, name="logit")(h)
    return logits.reshape(x.shape[0])
