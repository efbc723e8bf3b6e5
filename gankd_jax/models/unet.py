"""pix2pix U-Net generator and OMGD's deep U-Net teacher, in Flax linen.

Follows bytedance/OMGD ``models/modules/unet_architecture/unet_generator.py`` (pix2pix
``UnetGenerator``) and ``unet_deepest_generator.py``, written as an explicit down pass and up
pass instead of the reference's recursive blocks. Level ``i`` (0 = outermost) maps width
``w(i-1)`` to ``w(i) = ngf * min(2**i, 8)``; there are ``num_downs`` levels (8 for ``unet_256``).

Faithful details of the reference:
- every non-outermost level starts with an *in-place* ``LeakyReLU(0.2)`` on its input, so the
  tensor concatenated on the skip path is ``leaky_relu(x)``, not ``x``; reproduced here;
- convs carry a bias only when ``norm='instance'``, except the outermost up conv, which
  always has one; the outermost and innermost levels have no down norm; dropout (``dropout_rate``, 0 in OMGD) only on the ``ngf * 8`` levels
  between level 4 and the innermost level (and, for the deep U-Net, inside their residual blocks).
- OMGD runs its U-Nets with ``--norm batch`` and teacher/student dropout 0: these are the
  defaults here.

Channel-distillation taps (``return_features=True``), OMGD
``distillers/base_multiteacher_distiller.py`` ``mapping_layers['unet_256']``:
1. ``model.model.1.model.3.model.0``: the LeakyReLU at the start of level 2 = skip of level 2,
   ``2 * ngf`` channels at H/4;
2. ``model.model.1.model.3.model.3.model.3.model.0``: same at level 4, ``8 * ngf`` at H/16;
3. ``model.model.1.model.3.model.3.model.4``: the up ReLU of level 3 applied to the concat
   coming from level 4, ``16 * ngf`` at H/16;
4. ``model.model.1.model.4``: the up ReLU of level 1 on the concat from level 2, ``4 * ngf``
   at H/4.
The reference only taps the wide teacher and the student; the deep U-Net exposes the same
four points for symmetry.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from gankd_jax.models.layers import (Conv, ConvTranspose, ExpansionBlock, Norm, check_norm,
                                     conv_bias_for, dropout, leaky_relu)

MIN_NUM_DOWNS = 5


def level_width(ngf: int, level: int) -> int:
  """Inner width of U-Net level ``level``: ngf * [1, 2, 4, 8, 8, ...]."""
  return ngf * min(2 ** level, 8)


def level_dropout(level: int, num_downs: int, rate: float) -> float:
  """The reference passes ``dropout_rate`` only to the 8*ngf levels built in its loop."""
  return rate if 4 <= level < num_downs - 1 else 0.0


def unet_feature_channels(ngf: int) -> list[int]:
  """Channels of the four OMGD channel-distillation taps."""
  return [2 * ngf, 8 * ngf, 16 * ngf, 4 * ngf]


class UnetDown(nn.Module):
  """Down path of one level: conv4x4/s2 [norm] [2 residual blocks].

  The level's leading LeakyReLU is applied by the generator, which also keeps it as the skip.
  """

  features: int
  norm: str
  outermost: bool = False
  innermost: bool = False
  deep: bool = False
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool = True):
    bias = conv_bias_for(self.norm)
    h = Conv(self.features, 4, stride=2, padding=1, use_bias=bias)(x)
    if not (self.outermost or self.innermost):
      h = Norm(self.norm)(h, train=train)
    if self.deep and not self.innermost:
      for _ in range(2):
        h = ExpansionBlock(self.norm, self.dropout_rate)(h, train=train)
    return h


class UnetUp(nn.Module):
  """Up path of one level: [2 residual blocks] ReLU convT4x4/s2 norm|tanh [2 blocks] dropout.

  Returns ``(output, relu_input)``; the ReLU'd input is an OMGD distillation tap.
  """

  features: int
  norm: str
  outermost: bool = False
  innermost: bool = False
  deep: bool = False
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, u, *, train: bool = True):
    if self.outermost:
      if self.deep:
        for _ in range(2):
          u = ExpansionBlock(self.norm, self.dropout_rate)(u, train=train)
      r = nn.relu(u)
      return jnp.tanh(ConvTranspose(self.features, 4, padding=1, use_bias=True)(r)), r
    r = nn.relu(u)
    h = ConvTranspose(self.features, 4, padding=1, use_bias=conv_bias_for(self.norm))(r)
    h = Norm(self.norm)(h, train=train)
    if self.deep and not self.innermost:
      for _ in range(2):
        h = ExpansionBlock(self.norm, self.dropout_rate)(h, train=train)
    if not self.innermost:
      h = dropout(self, h, self.dropout_rate, train)
    return h, r


class UnetGenerator(nn.Module):
  """pix2pix U-Net (``unet_256`` with the default ``num_downs=8``).

  Input size must be divisible by ``2 ** num_downs`` (see ``models.check_image_size``).
  """

  ngf: int = 64
  output_nc: int = 3
  num_downs: int = 8
  norm: str = "batch"
  dropout_rate: float = 0.0
  deep: bool = False

  def feature_channels(self) -> list[int]:
    """Channels of the maps returned with ``return_features=True``."""
    return unet_feature_channels(self.ngf)

  def level_kwargs(self, level: int) -> dict:
    last = self.num_downs - 1
    return dict(norm=self.norm, outermost=level == 0, innermost=level == last,
                deep=self.deep,
                dropout_rate=level_dropout(level, self.num_downs, self.dropout_rate))

  @nn.compact
  def __call__(self, x, *, train: bool = True, return_features: bool = False):
    check_norm(self.norm)
    if self.num_downs < MIN_NUM_DOWNS:
      raise ValueError(f"U-Net num_downs must be >= {MIN_NUM_DOWNS}, got {self.num_downs}")
    skips = {}
    h = x
    for level in range(self.num_downs):
      if level > 0:  # the reference's in-place LeakyReLU: the skip is leaky_relu(h)
        h = skips[level] = leaky_relu(h)
      h = UnetDown(level_width(self.ngf, level), name=f"down{level}",
                   **self.level_kwargs(level))(h, train=train)
    relu_inputs = {}
    for level in reversed(range(self.num_downs)):
      out_width = self.output_nc if level == 0 else level_width(self.ngf, level - 1)
      h, relu_inputs[level] = UnetUp(out_width, name=f"up{level}",
                                     **self.level_kwargs(level))(h, train=train)
      if level > 0:
        h = jnp.concatenate([skips[level], h], axis=-1)
    if not return_features:
      return h
    return h, [skips[2], skips[4], relu_inputs[3], relu_inputs[1]]


class UnetDeepestGenerator(UnetGenerator):
  """OMGD deep U-Net teacher (``unet_deepest_256``): two expansion residual blocks after
  every non-innermost down conv and two in every non-innermost up path (before the up ReLU
  at the outermost level, after the up norm elsewhere)."""

  deep: bool = True
