"""ResNet generators used by OMGD, in Flax linen.

- ``ResnetGenerator``: pix2pix/CycleGAN ``resnet_9blocks`` (OMGD
  ``models/modules/resnet_architecture/resnet_generator.py``; like OMGD it clamps its input
  to [-1, 1]).
- ``MobileResnetGenerator``: gan-compression/OMGD ``mobile_resnet_9blocks`` (residual blocks
  built from separable convs; ``mobile_resnet_generator.py``).
- ``MobileResnetDeepestGenerator``: OMGD deep teacher ``mobile_deepest_resnet``
  (``mobile_resnet_deepest_generator.py``): an expansion residual block and a 3x3
  conv-norm-ReLU after every down/upsample, and two expansion blocks in the middle of the
  mobile residual blocks (``n_blocks // 2`` before them).

Common skeleton: reflection pad 3, 7x7 conv, norm, ReLU; two 3x3 stride-2 convs (zero pad 1)
with norm + ReLU; residual blocks at ``4 * ngf``; two ``ConvTranspose2d(k=3, s=2, p=1,
output_padding=1)`` with norm + ReLU; reflection pad 3, 7x7 conv (always with bias), tanh.
Convs have biases only with ``norm='instance'`` (OMGD's default for ResNets, with dropout 0).
The input size must be divisible by 4.

Channel-distillation taps (``return_features=True``), OMGD
``distillers/base_multiteacher_distiller.py`` ``mapping_layers['mobile_resnet_9blocks'] =
['model.9', 'model.12', 'model.15', 'model.18']``: index 9 is the ReLU after the second
downsample, 12 / 15 / 18 are residual blocks 3, 6, 9 (blocks start at index 10); all
``4 * ngf`` channels at H/4. For other ``n_blocks`` the block taps are the ends of the thirds
``n // 3``, ``2 * (n // 3)`` and ``n``. The reference never taps the deep teacher; it exposes
the output of its second down stage and the ends of its three middle groups.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from gankd_jax.models.layers import (Conv, ConvTranspose, ExpansionBlock, Norm, SeparableConv,
                                     check_norm, conv_bias_for, dropout, reflect_pad)

N_DOWNSAMPLING = 2


def resnet_feature_channels(ngf: int) -> list[int]:
  """Channels of the four OMGD channel-distillation taps (all at the 4*ngf bottleneck)."""
  return [4 * ngf] * 4


def block_taps(n_blocks: int) -> tuple[int, int, int]:
  """1-based residual-block indices tapped for distillation (3, 6, 9 for 9 blocks)."""
  third = n_blocks // 3
  return third, 2 * third, n_blocks


class ConvNormReLU(nn.Module):
  """Conv (zero padding) + norm + ReLU, the reference's down/refine unit."""

  features: int
  kernel: int
  norm: str
  stride: int = 1
  padding: int = 0

  @nn.compact
  def __call__(self, x, *, train: bool = True):
    h = Conv(self.features, self.kernel, self.stride, self.padding,
             use_bias=conv_bias_for(self.norm))(x)
    return nn.relu(Norm(self.norm)(h, train=train))


class UpNormReLU(nn.Module):
  """``ConvTranspose2d(k=3, s=2, p=1, output_padding=1)`` + norm + ReLU: doubles H and W."""

  features: int
  norm: str

  @nn.compact
  def __call__(self, x, *, train: bool = True):
    h = ConvTranspose(self.features, 3, padding=1, output_padding=1,
                      use_bias=conv_bias_for(self.norm))(x)
    return nn.relu(Norm(self.norm)(h, train=train))


class Stem(nn.Module):
  """Reflection pad 3, 7x7 conv, norm, ReLU."""

  features: int
  norm: str

  @nn.compact
  def __call__(self, x, *, train: bool = True):
    return ConvNormReLU(self.features, 7, self.norm)(reflect_pad(x, 3), train=train)


class Head(nn.Module):
  """Reflection pad 3, 7x7 conv with bias, tanh."""

  features: int

  @nn.compact
  def __call__(self, x):
    return jnp.tanh(Conv(self.features, 7, use_bias=True)(reflect_pad(x, 3)))


class ResnetBlock(nn.Module):
  """Plain block: [reflect pad, 3x3 conv, norm, ReLU, dropout, reflect pad, 3x3 conv, norm]
  + identity."""

  norm: str
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool = True):
    c, bias = x.shape[-1], conv_bias_for(self.norm)
    h = nn.relu(Norm(self.norm)(Conv(c, 3, use_bias=bias)(reflect_pad(x, 1)), train=train))
    h = dropout(self, h, self.dropout_rate, train)
    h = Norm(self.norm)(Conv(c, 3, use_bias=bias)(reflect_pad(h, 1)), train=train)
    return x + h


class MobileResnetBlock(nn.Module):
  """Mobile block: the plain block with each 3x3 conv replaced by a separable conv."""

  norm: str
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool = True):
    c = x.shape[-1]
    h = nn.relu(Norm(self.norm)(SeparableConv(c)(reflect_pad(x, 1)), train=train))
    h = dropout(self, h, self.dropout_rate, train)
    h = Norm(self.norm)(SeparableConv(c)(reflect_pad(h, 1)), train=train)
    return x + h


class ResnetGenerator(nn.Module):
  """``resnet_9blocks`` (plain 3x3 residual blocks); ``mobile=True`` gives the mobile one."""

  ngf: int = 64
  output_nc: int = 3
  n_blocks: int = 9
  norm: str = "instance"
  dropout_rate: float = 0.0
  mobile: bool = False
  clamp_input: bool = True

  def feature_channels(self) -> list[int]:
    """Channels of the maps returned with ``return_features=True``."""
    return resnet_feature_channels(self.ngf)

  @nn.compact
  def __call__(self, x, *, train: bool = True, return_features: bool = False):
    check_norm(self.norm)
    if self.clamp_input:
      x = jnp.clip(x, -1.0, 1.0)
    h = Stem(self.ngf, self.norm)(x, train=train)
    for i in range(N_DOWNSAMPLING):
      h = ConvNormReLU(self.ngf * 2 ** (i + 1), 3, self.norm, stride=2, padding=1,
                       name=f"down{i}")(h, train=train)
    feats = [h]
    block_cls = MobileResnetBlock if self.mobile else ResnetBlock
    taps = block_taps(self.n_blocks)
    for i in range(1, self.n_blocks + 1):
      h = block_cls(self.norm, self.dropout_rate, name=f"block{i}")(h, train=train)
      if i in taps:
        feats.append(h)
    for i in range(N_DOWNSAMPLING):
      h = UpNormReLU(self.ngf * 2 ** (N_DOWNSAMPLING - i - 1), self.norm,
                     name=f"up{i}")(h, train=train)
    y = Head(self.output_nc)(h)
    return (y, feats) if return_features else y


class MobileResnetGenerator(ResnetGenerator):
  """gan-compression / OMGD ``mobile_resnet_9blocks`` (no input clamp in the reference)."""

  mobile: bool = True
  clamp_input: bool = False


class MobileResnetDeepestGenerator(nn.Module):
  """OMGD ``mobile_deepest_resnet`` deep teacher."""

  ngf: int = 16
  output_nc: int = 3
  n_blocks: int = 9
  norm: str = "instance"
  dropout_rate: float = 0.0

  def feature_channels(self) -> list[int]:
    """Channels of the maps returned with ``return_features=True``."""
    return resnet_feature_channels(self.ngf)

  def refine(self, h, name: str, train: bool):
    """Expansion residual block then 3x3 conv-norm-ReLU, after every resampling."""
    h = ExpansionBlock(self.norm, self.dropout_rate, name=f"{name}_expand")(h, train=train)
    return ConvNormReLU(h.shape[-1], 3, self.norm, padding=1,
                        name=f"{name}_refine")(h, train=train)

  def mobile_blocks(self, h, count: int, start: int, train: bool):
    for i in range(start, start + count):
      h = MobileResnetBlock(self.norm, self.dropout_rate, name=f"block{i}")(h, train=train)
    return h

  @nn.compact
  def __call__(self, x, *, train: bool = True, return_features: bool = False):
    check_norm(self.norm)
    h = Stem(self.ngf, self.norm)(x, train=train)
    for i in range(N_DOWNSAMPLING):
      h = ConvNormReLU(self.ngf * 2 ** (i + 1), 3, self.norm, stride=2, padding=1,
                       name=f"down{i}")(h, train=train)
      h = self.refine(h, f"down{i}", train)
    feats = [h]
    first = self.n_blocks // 2
    h = self.mobile_blocks(h, first, 1, train)
    feats.append(h)
    for i in range(2):
      h = ExpansionBlock(self.norm, self.dropout_rate, name=f"middle_expand{i}")(
          h, train=train)
    feats.append(h)
    h = self.mobile_blocks(h, self.n_blocks - first, first + 1, train)
    feats.append(h)
    for i in range(N_DOWNSAMPLING):
      h = UpNormReLU(self.ngf * 2 ** (N_DOWNSAMPLING - i - 1), self.norm,
                     name=f"up{i}")(h, train=train)
      h = self.refine(h, f"up{i}", train)
    y = Head(self.output_nc)(h)
    return (y, feats) if return_features else y
