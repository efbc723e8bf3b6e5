"""OMGD's partially shared conditional PatchGAN discriminator, in Flax linen.

Follows bytedance/OMGD ``models/modules/discriminators.py`` ``MultiNLayerDiscriminator``
(``--netD multi_n_layers``): the pix2pix 70x70 PatchGAN (n_layers 3) cut into five conv blocks

1. conv 4x4/s2 pad 1 (bias) -> ndf, LeakyReLU(0.2)
2. conv 4x4/s2 -> 2 ndf, norm, LeakyReLU
3. conv 4x4/s2 -> 4 ndf, norm, LeakyReLU
4. conv 4x4/s1 -> 8 ndf, norm, LeakyReLU
5. conv 4x4/s1 (bias) -> 1 logit

(convs 2-4 have a bias only with ``norm='instance'``). The first ``n_share`` blocks are shared
by both output branches, the rest exist once per branch: branch 0 judges the wide teacher,
branch 1 the deep teacher (OMGD's ``FLAGS.teacher_ids`` 1 / 2).

Differences from the PyTorch module, on purpose: the reference allocates two copies of
*every* block and, for shared blocks, always uses the second copy, so its first copy of each
shared block is dead weight (never used, never trained). Only used parameters exist here.
Defaults: ``ndf=128`` (OMGD ``--ndf``), ``norm='batch'`` (the module's default and OMGD's U-Net
runs; its ResNet runs pass ``norm='instance'``), ``n_share=3`` (``define_D``'s default and the
ResNet scripts; the U-Net scripts use 5, the CLI default is 0).

``NLayerDiscriminator`` is the plain single-branch PatchGAN of ``--netD n_layers`` (reference
``NLayerDiscriminator``; CycleGAN's D_A / D_B with n_layers 3, ndf 64, instance norm): conv
4x4/s2 (bias) + LeakyReLU, then ``n_layers - 1`` conv 4x4/s2 + norm + LeakyReLU with widths
``min(2^n, 8) ndf``, one conv 4x4/s1 + norm + LeakyReLU, and a conv 4x4/s1 (bias) to one logit;
all pad 1. Its convs are named ``conv<i>`` / ``norm<i>`` by layer (see
``gankd_jax/weights/discriminator_pth.py`` for the torch names).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from gankd_jax.models.layers import Conv, Norm, check_norm, conv_bias_for, leaky_relu

N_BLOCKS = 5
N_BRANCHES = 2


def block_widths(ndf: int) -> list[int]:
  """Output channels of the five blocks."""
  return [ndf, 2 * ndf, 4 * ndf, 8 * ndf, 1]


def patch_output_size(size: int) -> int:
  """Spatial size of the logits map: three stride-2 and two stride-1 4x4 convs, pad 1."""
  for stride in (2, 2, 2, 1, 1):
    size = (size + 2 - 4) // stride + 1
  return size


class DiscBlock(nn.Module):
  """One of the five blocks (index 0..4)."""

  index: int
  ndf: int
  norm: str

  @nn.compact
  def __call__(self, x, *, train: bool = True):
    width = block_widths(self.ndf)[self.index]
    if self.index == N_BLOCKS - 1:
      return Conv(width, 4, stride=1, padding=1, use_bias=True)(x)
    stride = 2 if self.index < 3 else 1
    h = Conv(width, 4, stride=stride, padding=1,
             use_bias=self.index == 0 or conv_bias_for(self.norm))(x)
    if self.index > 0:
      h = Norm(self.norm)(h, train=train)
    return leaky_relu(h)


class MultiPatchDiscriminator(nn.Module):
  """Two-branch PatchGAN on ``concat(x, y)``; the first ``n_share`` blocks are shared."""

  ndf: int = 128
  n_share: int = 3
  norm: str = "batch"

  @nn.compact
  def __call__(self, x, *, train: bool = True, branches: Sequence[int] = (0, 1)):
    check_norm(self.norm)
    if not 0 <= self.n_share <= N_BLOCKS:
      raise ValueError(f"n_share must be in 0..{N_BLOCKS}, got {self.n_share}")
    for b in branches:
      if b not in range(N_BRANCHES):
        raise ValueError(f"discriminator branch must be 0 or 1, got {b}")
    h = x
    for i in range(self.n_share):
      h = DiscBlock(i, self.ndf, self.norm, name=f"shared{i}")(h, train=train)
    outputs = []
    for b in branches:
      hb = h
      for i in range(self.n_share, N_BLOCKS):
        hb = DiscBlock(i, self.ndf, self.norm, name=f"branch{b}_{i}")(hb, train=train)
      outputs.append(hb)
    return tuple(outputs)


def nlayer_widths(ndf: int, n_layers: int) -> list[int]:
  """Output channels of the reference NLayerDiscriminator's convs, the logit conv last."""
  return [ndf * min(2 ** i, 8) for i in range(n_layers + 1)] + [1]


class NLayerDiscriminator(nn.Module):
  """The plain PatchGAN (reference ``NLayerDiscriminator``): images -> (N, h, w, 1) logits."""

  ndf: int = 64
  n_layers: int = 3
  norm: str = "instance"

  @nn.compact
  def __call__(self, x, *, train: bool = True):
    check_norm(self.norm)
    if not isinstance(self.n_layers, int) or self.n_layers < 1:
      raise ValueError("NLayerDiscriminator: n_layers must be an integer >= 1, "
                       f"got {self.n_layers!r}")
    widths = nlayer_widths(self.ndf, self.n_layers)
    h = x
    for i, width in enumerate(widths[:-1]):
      # The first conv has a bias; the others only before instance norm (no affine shift).
      h = Conv(width, 4, stride=2 if i < self.n_layers else 1, padding=1,
               use_bias=i == 0 or conv_bias_for(self.norm), name=f"conv{i}")(h)
      if i > 0:
        h = Norm(self.norm, name=f"norm{i}")(h, train=train)
      h = leaky_relu(h)
    return Conv(1, 4, stride=1, padding=1, use_bias=True, name=f"conv{len(widths) - 1}")(h)
