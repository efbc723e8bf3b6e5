"""StyleGAN2 generator and discriminator (the stylegan2-ada-pytorch architecture) in Flax.

The networks of Karras et al. (2020, "Training Generative Adversarial Networks with Limited
Data", NVlabs/stylegan2-ada-pytorch, training/networks.py), rewritten for NHWC float32 so that a
reference checkpoint loads without conversion of values:

- Variable names mirror the reference's state_dict (`mapping.fc0.weight`, `synthesis.b8.conv0.
  affine.bias`, `b4.out.weight`, ...), parameters in the reference's layout (OIHW conv weights,
  [out, in] dense weights, `const` as [C, 4, 4]) and *unscaled*: the equalised-learning-rate
  gains are applied at run time, as in the reference. Buffers (`w_avg`, `noise_const`) live in
  the collection "buffers"; the reference's `resample_filter` buffers are the constant
  [1, 3, 3, 1] filter in code here.
- Modulated convolutions use the reference's training form (scale the input by the styles, one
  shared convolution, scale the output by the demodulation coefficients), which equals the
  per-sample fused form mathematically and needs no grouped convolution. The up-sampling conv
  (the reference's stride-2 transposed conv, then the FIR filter) runs the transposed conv in
  the sub-pixel form of `layers.conv_transpose_subpixel` (no lhs-dilated conv).
- FIR resampling (`upfirdn2d`, `upsample2d`, `downsample2d`, `filter2d`) follows the reference's
  padding / gain / flip conventions, computed separably as shifted slices and sums (polyphase
  for upsampling) rather than as a dense depthwise convolution: the [1, 3, 3, 1] filter has 4
  taps per axis. On CPU (2 shared cores, batch 2, C = 64, jit, forward + backward) the upsample
  128 -> 256 took 107 ms this way vs 2853 ms as a depthwise 4x4 conv of the zero-stuffed
  image, the downsample 256 -> 128 88 vs 2556 ms; a whole 256-px SynthesisBlock 2.1 vs 7.2 s and
  DiscriminatorBlock 2.2 vs 8.0 s.
- Only what changes precision or speed in the reference (num_fp16_res, fp16_channels_last) is
  accepted and ignored; everything is computed in float32.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict

from gankd_jax.models.layers import (add_elementwise_macs, conv_general_dilated,
                                     conv_transpose_subpixel, in_export_graph, matmul)
from gankd_jax.models.layers import count_params as _count_params

FIR_TAPS = (1.0, 3.0, 3.0, 1.0)
ARCHITECTURES = ("orig", "skip", "resnet")
NOISE_MODES = ("random", "const", "none")
ACTIVATIONS = {"linear": 1.0, "lrelu": math.sqrt(2.0)}  # name -> default gain (bias_act's)
LRELU_ALPHA = 0.2
MIN_RESOLUTION, MAX_RESOLUTION = 4, 1024

# Constructor keys per kwargs dict (the reference's argument names). The ones that only change
# precision / memory layout in the reference are accepted and ignored.
GENERATOR_KEYS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs",
                  "synthesis_kwargs")
MAPPING_KEYS = ("num_layers", "embed_features", "layer_features", "activation", "lr_multiplier",
                "w_avg_beta")
SYNTHESIS_KEYS = ("channel_base", "channel_max", "num_fp16_res", "fp16_channels_last",
                  "architecture", "conv_clamp", "resample_filter", "use_noise", "pruning_ratio")
DISCRIMINATOR_KEYS = ("c_dim", "img_resolution", "img_channels", "architecture", "channel_base",
                      "channel_max", "num_fp16_res", "conv_clamp", "cmap_dim", "block_kwargs",
                      "mapping_kwargs", "epilogue_kwargs")
D_BLOCK_KEYS = ("fp16_channels_last", "resample_filter", "freeze_layers")
EPILOGUE_KEYS = ("mbstd_group_size", "mbstd_num_channels")


# ---------------------------------------------------------------------------------------------
# FIR resampling (torch_utils/ops/upfirdn2d.py semantics, NHWC).

def _pad_axis(x, axis: int, before: int, after: int):
  """Zero-pad (positive) or crop (negative) one axis."""
  config = [(0, 0, 0)] * x.ndim
  config[axis] = (before, after, 0)
  return jax.lax.pad(x, jnp.zeros((), x.dtype), config)


def _upfirdn_axis(x, axis: int, taps: Sequence[float], up: int, down: int, pad0: int, pad1: int):
  """1-D upfirdn along `axis` with *correlation* taps: zero-stuff by `up`, pad / crop, correlate,
  keep every `down`-th sample. Upsampling is polyphase (no multiplications by stuffed zeros)."""
  n_in, k = x.shape[axis], len(taps)
  n_full = n_in * up + pad0 + pad1 - k + 1  # correlation output length before decimation
  if n_full <= 0:
    raise ValueError(f"upfirdn: {n_in} samples with padding ({pad0}, {pad1}) leave no output")
  if up == 1:
    xp = _pad_axis(x, axis, pad0, pad1)
    n_out = (n_full - 1) // down + 1
    add_elementwise_macs(x.size // n_in * n_out * sum(t != 0 for t in taps))
    return sum(t * jax.lax.slice_in_dim(xp, i, i + down * (n_out - 1) + 1, down, axis)
               for i, t in enumerate(taps) if t != 0)
  # Output o = up * j + r reads stuffed sample o + i - pad0, which is x[(o + i - pad0) / up]
  # when divisible: phase r is a plain correlation of x with the taps of that residue.
  n_phase = -(-n_full // up)
  phases = []
  for r in range(up):
    terms = [(t, (r + i - pad0) // up) for i, t in enumerate(taps)
             if (r + i - pad0) % up == 0 and t != 0]
    if not terms:
      shape = list(x.shape)
      shape[axis] = n_phase
      phases.append(jnp.zeros(shape, x.dtype))
      continue
    add_elementwise_macs(x.size // n_in * n_phase * len(terms))
    lo = min(d for _, d in terms)
    hi = max(d for _, d in terms)
    xp = _pad_axis(x, axis, max(0, -lo), max(0, n_phase - 1 + hi - (n_in - 1)))
    base = max(0, -lo)
    phases.append(sum(t * jax.lax.slice_in_dim(xp, base + d, base + d + n_phase, 1, axis)
                      for t, d in terms))
  shape = list(x.shape)
  shape[axis] = n_phase * up
  if in_export_graph() and axis + 1 < x.ndim:
    # The same interleave with no tensor above 4-D: the phases side by side along the next
    # axis, then read as `up` times as many samples along `axis` (row-major order agrees).
    y = jnp.concatenate(phases, axis=axis + 1).reshape(shape)
  else:
    y = jnp.stack(phases, axis=axis + 1).reshape(shape)
  y = jax.lax.slice_in_dim(y, 0, n_full, 1, axis)
  return jax.lax.slice_in_dim(y, 0, n_full, down, axis) if down > 1 else y


def _parse_padding(padding) -> tuple[int, int, int, int]:
  """int, [x, y] or [x0, x1, y0, y1], as the reference."""
  if isinstance(padding, int):
    return padding, padding, padding, padding
  padding = [int(p) for p in padding]
  if len(padding) == 2:
    return padding[0], padding[0], padding[1], padding[1]
  px0, px1, py0, py1 = padding
  return px0, px1, py0, py1


def upfirdn2d(x, up: int = 1, down: int = 1, padding=0, flip_filter: bool = False,
              gain: float = 1.0, taps: Sequence[float] = FIR_TAPS):
  """The reference's `upfirdn2d` for the separable filter outer(taps, taps) / sum^2 on NHWC x;
  padding is [x0, x1, y0, y1] with respect to the upsampled image (negative crops)."""
  px0, px1, py0, py1 = _parse_padding(padding)
  f = np.asarray(taps, np.float64) / float(np.sum(taps))
  # The reference convolves (flips the filter) unless flip_filter; we correlate.
  corr = [float(v) for v in (f if flip_filter else f[::-1])]
  x = _upfirdn_axis(x, 1, corr, up, down, py0, py1)
  x = _upfirdn_axis(x, 2, corr, up, down, px0, px1)
  return x * gain if gain != 1 else x


def filter2d(x, padding=0, flip_filter: bool = False, gain: float = 1.0,
             taps: Sequence[float] = FIR_TAPS):
  """FIR filter keeping the size (reference `filter2d` padding: fw // 2, (fw - 1) // 2)."""
  px0, px1, py0, py1 = _parse_padding(padding)
  k = len(taps)
  return upfirdn2d(x, padding=(px0 + k // 2, px1 + (k - 1) // 2, py0 + k // 2, py1 + (k - 1) // 2),
                   flip_filter=flip_filter, gain=gain, taps=taps)


def upsample2d(x, up: int = 2, padding=0, flip_filter: bool = False, gain: float = 1.0,
               taps: Sequence[float] = FIR_TAPS):
  """Zero-stuff by `up` and FIR filter with gain up**2 (reference `upsample2d`)."""
  px0, px1, py0, py1 = _parse_padding(padding)
  k = len(taps)
  lo, hi = (k + up - 1) // 2, (k - up) // 2
  return upfirdn2d(x, up=up, padding=(px0 + lo, px1 + hi, py0 + lo, py1 + hi),
                   flip_filter=flip_filter, gain=gain * up * up, taps=taps)


def downsample2d(x, down: int = 2, padding=0, flip_filter: bool = False, gain: float = 1.0,
                 taps: Sequence[float] = FIR_TAPS):
  """FIR filter and keep every `down`-th pixel (reference `downsample2d`)."""
  px0, px1, py0, py1 = _parse_padding(padding)
  k = len(taps)
  lo, hi = (k - down + 1) // 2, (k - down) // 2
  return upfirdn2d(x, down=down, padding=(px0 + lo, px1 + hi, py0 + lo, py1 + hi),
                   flip_filter=flip_filter, gain=gain, taps=taps)


# ---------------------------------------------------------------------------------------------
# Convolutions (conv2d_resample.py geometry; weights OIHW, correlation as torch conv2d).

def _hwio(weight):
  return jnp.transpose(weight, (2, 3, 1, 0))


def conv2d(x, weight, padding: int = 0, stride: int = 1):
  """torch conv2d (correlation) of NHWC x with an OIHW weight."""
  return conv_general_dilated(x, _hwio(weight), window_strides=(stride, stride),
                              padding=[(padding, padding)] * 2)


def conv2d_up2(x, weight):
  """The reference's `conv2d_resample(up=2, padding=k // 2, flip_weight=False)`: a stride-2
  transposed conv (torch conv_transpose2d with the weight's in / out swapped, not flipped) of
  length 2H + k - 1, then the FIR filter with gain 4 and padding (k // 2 + 3 - k) each side."""
  k = weight.shape[-1]
  if k != 3:
    raise ValueError(f"stylegan2: up-sampling conv supports kernel_size 3, got {k}")
  # The sub-pixel transposed conv gives 2H outputs from H inputs. With one zero in front of
  # the input and (padding 1, output padding 1) it yields full outputs -1 .. 2H (index -1 is
  # zero): exactly the FIR's padded input but the last padding zero.
  x = jnp.pad(x, ((0, 0), (1, 0), (1, 0), (0, 0)))
  y = conv_transpose_subpixel(x, jnp.transpose(weight, (2, 3, 1, 0)), padding=1,
                              output_padding=1)
  return upfirdn2d(y, padding=(0, 1, 0, 1), gain=4.0)


def bias_act(x, bias=None, activation: str = "linear", gain: Optional[float] = None,
             clamp: Optional[float] = None):
  """bias_act.py: add the bias (last axis), activate, scale by gain, clamp to +-clamp."""
  if bias is not None:
    x = x + bias
  if activation == "lrelu":
    x = jnp.where(x >= 0, x, x * LRELU_ALPHA)
  gain = ACTIVATIONS[activation] if gain is None else gain
  if gain != 1:
    x = x * gain
  if clamp is not None:
    x = jnp.clip(x, -clamp, clamp)
  return x


def normalize_2nd_moment(x, eps: float = 1e-8):
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=1, keepdims=True) + eps)


def _randn(scale: float = 1.0):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.normal(key, shape, dtype) * scale
  return init


def _check_activation(activation: str) -> None:
  if activation not in ACTIVATIONS:
    raise ValueError(f"stylegan2: activation '{activation}' is unknown; choose from "
                     f"{', '.join(ACTIVATIONS)}")


def _check_architecture(architecture: str) -> None:
  if architecture not in ARCHITECTURES:
    raise ValueError(f"stylegan2: architecture '{architecture}' is unknown; choose from "
                     f"{', '.join(ARCHITECTURES)}")


def _check_noise_mode(noise_mode: str) -> None:
  if noise_mode not in NOISE_MODES:
    raise ValueError(f"stylegan2: noise_mode '{noise_mode}' is unknown; choose from "
                     f"{', '.join(NOISE_MODES)}")


def _check_keys(kwargs: Mapping[str, Any], allowed: Sequence[str], what: str) -> None:
  for key in kwargs:
    if key not in allowed:
      raise ValueError(f"stylegan2: {what} has unknown key '{key}'; known: {', '.join(allowed)}")


def _check_network(img_resolution, channel_base, channel_max) -> None:
  res = img_resolution
  if (not isinstance(res, (int, np.integer)) or res < MIN_RESOLUTION or res > MAX_RESOLUTION
      or res & (res - 1)):
    raise ValueError(f"stylegan2: img_resolution must be a power of two in [{MIN_RESOLUTION}, "
                     f"{MAX_RESOLUTION}], got {res!r}")
  if channel_base <= 0:
    raise ValueError(f"stylegan2: channel_base must be > 0, got {channel_base}")
  if channel_max <= 0:
    raise ValueError(f"stylegan2: channel_max must be > 0, got {channel_max}")


def _check_filter(resample_filter) -> None:
  if resample_filter is not None and [float(v) for v in resample_filter] != list(FIR_TAPS):
    raise ValueError(f"stylegan2: resample_filter must be [1, 3, 3, 1], got {resample_filter}")


def channels_dict(resolutions, channel_base: int, channel_max: int) -> dict:
  """Feature channels per resolution: min(channel_base // res, channel_max)."""
  return {res: min(channel_base // res, channel_max) for res in resolutions}


def pruned_channels(channels: int, pruning_ratio: float) -> int:
  """Channels a layer keeps when a fraction `pruning_ratio` is pruned: ceil((1 - p) C), as
  NICKEL & DiME's networks_DD.py (it removes int(p C) channels per layer)."""
  return int(math.ceil((1.0 - pruning_ratio) * channels))


# ---------------------------------------------------------------------------------------------
# Layers.

class FullyConnectedLayer(nn.Module):
  """Equalised-lr dense layer: weight [out, in] ~ N(0, 1) / lr_multiplier, used times
  lr_multiplier / sqrt(in); bias (init bias_init) times lr_multiplier."""

  in_features: int
  out_features: int
  bias: bool = True
  activation: str = "linear"
  lr_multiplier: float = 1.0
  bias_init: float = 0.0

  @nn.compact
  def __call__(self, x):
    weight = self.param("weight", _randn(1.0 / self.lr_multiplier),
                        (self.out_features, self.in_features))
    x = matmul(x, (weight * (self.lr_multiplier / math.sqrt(self.in_features))).T)
    b = None
    if self.bias:
      b = self.param("bias", nn.initializers.constant(self.bias_init), (self.out_features,))
      b = b * self.lr_multiplier
    return bias_act(x, b, self.activation)


class Conv2dLayer(nn.Module):
  """Equalised-lr conv (weight gain 1 / sqrt(in k^2)) with optional FIR up / down by 2, bias,
  activation (gain scaled by the call's `gain`) and clamp (conv_clamp * gain)."""

  in_channels: int
  out_channels: int
  kernel_size: int
  bias: bool = True
  activation: str = "lrelu"
  up: int = 1
  down: int = 1
  conv_clamp: Optional[float] = None

  @nn.compact
  def __call__(self, x, gain: float = 1.0):
    k = self.kernel_size
    weight = self.param("weight", _randn(), (self.out_channels, self.in_channels, k, k))
    w = weight * (1.0 / math.sqrt(self.in_channels * k * k))
    pad = k // 2
    if self.down > 1 and k == 1:
      x = conv2d(downsample2d(x, self.down), w)
    elif self.down > 1:
      # conv2d_resample: filter with padding k // 2 + 1 (for [1,3,3,1]), then a strided conv.
      x = conv2d(upfirdn2d(x, padding=pad + (len(FIR_TAPS) - self.down + 1) // 2), w,
                 stride=self.down)
    elif self.up > 1 and k == 1:
      x = upsample2d(conv2d(x, w), self.up)
    elif self.up > 1:
      x = conv2d_up2(x, w)
    else:
      x = conv2d(x, w, padding=pad)
    b = self.param("bias", nn.initializers.zeros, (self.out_channels,)) if self.bias else None
    act_gain = ACTIVATIONS[self.activation] * gain
    clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
    return bias_act(x, b, self.activation, gain=act_gain, clamp=clamp)


class MappingNetwork(nn.Module):
  """z (and c) -> w, broadcast to num_ws; tracks w_avg (buffers) when w_avg_beta is set."""

  z_dim: int
  c_dim: int
  w_dim: int
  num_ws: Optional[int]
  num_layers: int = 8
  embed_features: Optional[int] = None
  layer_features: Optional[int] = None
  activation: str = "lrelu"
  lr_multiplier: float = 0.01
  w_avg_beta: Optional[float] = 0.995

  @nn.compact
  def __call__(self, z, c, truncation_psi=1.0, truncation_cutoff=None, update_emas=False):
    embed = self.w_dim if self.embed_features is None else self.embed_features
    embed = 0 if self.c_dim == 0 else embed
    layer = self.w_dim if self.layer_features is None else self.layer_features
    features = [self.z_dim + embed] + [layer] * (self.num_layers - 1) + [self.w_dim]
    parts = []
    if self.z_dim > 0:
      parts.append(normalize_2nd_moment(z.astype(jnp.float32)))
    if self.c_dim > 0:
      y = FullyConnectedLayer(self.c_dim, embed, name="embed")(c.astype(jnp.float32))
      parts.append(normalize_2nd_moment(y))
    x = jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    for idx in range(self.num_layers):
      x = FullyConnectedLayer(features[idx], features[idx + 1], activation=self.activation,
                              lr_multiplier=self.lr_multiplier, name=f"fc{idx}")(x)
    tracked = self.num_ws is not None and self.w_avg_beta is not None
    w_avg = self.variable("buffers", "w_avg", jnp.zeros, (self.w_dim,)) if tracked else None
    if (tracked and update_emas and self.is_mutable_collection("buffers")
        and not self.is_initializing()):
      mean = jnp.mean(jax.lax.stop_gradient(x), axis=0)
      w_avg.value = mean + (w_avg.value - mean) * self.w_avg_beta  # torch lerp(mean, w_avg, b)
    if self.num_ws is not None:
      x = jnp.broadcast_to(x[:, None, :], (x.shape[0], self.num_ws, x.shape[1]))
    if not (isinstance(truncation_psi, (int, float)) and truncation_psi == 1):
      if w_avg is None:
        raise ValueError("stylegan2: truncation needs w_avg (a mapping with w_avg_beta and num_ws)")
      avg = w_avg.value
      truncated = avg + truncation_psi * (x - avg)
      if self.num_ws is None or truncation_cutoff is None:
        x = truncated
      else:
        keep = (jnp.arange(self.num_ws) < truncation_cutoff)[None, :, None]
        x = jnp.where(keep, truncated, x)
    return x


class SynthesisLayer(nn.Module):
  """Modulated (demodulated) 3x3 conv, optionally up by 2, + noise + bias + lrelu (+ clamp)."""

  in_channels: int
  out_channels: int
  w_dim: int
  resolution: int
  kernel_size: int = 3
  up: int = 1
  use_noise: bool = True
  activation: str = "lrelu"
  conv_clamp: Optional[float] = None

  @nn.compact
  def __call__(self, x, w, noise_mode: str = "random", gain: float = 1.0):
    _check_noise_mode(noise_mode)
    k, res = self.kernel_size, self.resolution
    styles = FullyConnectedLayer(self.w_dim, self.in_channels, bias_init=1.0, name="affine")(w)
    weight = self.param("weight", _randn(), (self.out_channels, self.in_channels, k, k))
    noise = None
    if self.use_noise:
      const = self.variable("buffers", "noise_const",
                            lambda: jax.random.normal(self.make_rng("params"), (res, res)))
      strength = self.param("noise_strength", nn.initializers.zeros, ())
      if noise_mode == "random":
        noise = jax.random.normal(self.make_rng("noise"), (x.shape[0], res, res, 1)) * strength
      elif noise_mode == "const":
        noise = (const.value * strength)[None, :, :, None]
    bias = self.param("bias", nn.initializers.zeros, (self.out_channels,))
    # Demodulation coefficients of the per-sample weights weight * styles, [N, O].
    dcoefs = jax.lax.rsqrt(
        jnp.square(styles) @ jnp.sum(jnp.square(weight), axis=(2, 3)).T + 1e-8)
    x = x * styles[:, None, None, :]
    x = conv2d_up2(x, weight) if self.up > 1 else conv2d(x, weight, padding=k // 2)
    x = x * dcoefs[:, None, None, :]
    if noise is not None:
      x = x + noise
    clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
    return bias_act(x, bias, self.activation, gain=ACTIVATIONS[self.activation] * gain,
                    clamp=clamp)


class ToRGBLayer(nn.Module):
  """Modulated 1x1 conv without demodulation (styles times 1 / sqrt(in k^2)), bias, clamp."""

  in_channels: int
  out_channels: int
  w_dim: int
  kernel_size: int = 1
  conv_clamp: Optional[float] = None

  @nn.compact
  def __call__(self, x, w):
    k = self.kernel_size
    styles = FullyConnectedLayer(self.w_dim, self.in_channels, bias_init=1.0, name="affine")(w)
    styles = styles * (1.0 / math.sqrt(self.in_channels * k * k))
    weight = self.param("weight", _randn(), (self.out_channels, self.in_channels, k, k))
    bias = self.param("bias", nn.initializers.zeros, (self.out_channels,))
    x = conv2d(x * styles[:, None, None, :], weight, padding=k // 2)
    return bias_act(x, bias, "linear", clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
  """One resolution of the synthesis network: const (first) or conv0 (up 2), conv1, torgb."""

  in_channels: int
  out_channels: int
  w_dim: int
  resolution: int
  img_channels: int
  is_last: bool
  architecture: str = "skip"
  conv_clamp: Optional[float] = None
  use_noise: bool = True

  @property
  def num_conv(self) -> int:
    return 1 if self.in_channels == 0 else 2

  @property
  def num_torgb(self) -> int:
    return 1 if (self.is_last or self.architecture == "skip") else 0

  @nn.compact
  def __call__(self, x, img, ws, noise_mode: str = "random"):
    layer = dict(w_dim=self.w_dim, resolution=self.resolution, conv_clamp=self.conv_clamp,
                 use_noise=self.use_noise)
    w_iter = iter(range(ws.shape[1]))
    if self.in_channels == 0:
      const = self.param("const", _randn(), (self.out_channels, self.resolution, self.resolution))
      x = jnp.broadcast_to(jnp.transpose(const, (1, 2, 0))[None],
                           (ws.shape[0],) + (self.resolution,) * 2 + (self.out_channels,))
      x = SynthesisLayer(self.out_channels, self.out_channels, name="conv1", **layer)(
          x, ws[:, next(w_iter)], noise_mode)
    else:
      conv0 = SynthesisLayer(self.in_channels, self.out_channels, up=2, name="conv0", **layer)
      conv1 = SynthesisLayer(self.out_channels, self.out_channels, name="conv1", **layer)
      if self.architecture == "resnet":
        y = Conv2dLayer(self.in_channels, self.out_channels, 1, bias=False, activation="linear",
                        up=2, name="skip")(x, gain=math.sqrt(0.5))
        x = conv0(x, ws[:, next(w_iter)], noise_mode)
        x = conv1(x, ws[:, next(w_iter)], noise_mode, gain=math.sqrt(0.5))
        x = y + x
      else:
        x = conv0(x, ws[:, next(w_iter)], noise_mode)
        x = conv1(x, ws[:, next(w_iter)], noise_mode)
    if img is not None:
      img = upsample2d(img)
    if self.num_torgb:
      y = ToRGBLayer(self.out_channels, self.img_channels, self.w_dim, conv_clamp=self.conv_clamp,
                     name="torgb")(x, ws[:, next(w_iter)])
      img = y if img is None else img + y
    return x, img


def synthesis_num_ws(img_resolution: int) -> int:
  """The reference's count: each block's convs (1 at 4x4, 2 above) plus the last torgb."""
  return 2 * (int(img_resolution).bit_length() - 1) - 2


def _kwargs(value) -> dict:
  return dict(value) if value else {}


class SynthesisNetwork(nn.Module):
  """ws [N, num_ws, w_dim] -> NHWC images; blocks b4 .. b{img_resolution}."""

  w_dim: int
  img_resolution: int
  img_channels: int
  channel_base: int = 32768
  channel_max: int = 512
  num_fp16_res: int = 0
  architecture: str = "skip"
  conv_clamp: Optional[float] = None
  use_noise: bool = True
  # A channel-pruned student's widths (NICKEL & DiME's networks_DD.py): ceil((1 - p) C) per layer.
  pruning_ratio: float = 0.0

  def __post_init__(self):
    _check_network(self.img_resolution, self.channel_base, self.channel_max)
    _check_architecture(self.architecture)
    if not 0.0 <= self.pruning_ratio < 1.0:
      raise ValueError(f"stylegan2: pruning_ratio must be in [0, 1), got {self.pruning_ratio}")
    super().__post_init__()

  @property
  def block_resolutions(self) -> list[int]:
    return [2 ** i for i in range(2, int(self.img_resolution).bit_length())]

  def block_args(self) -> list[dict]:
    """Constructor arguments of each block, in order."""
    chans = {res: pruned_channels(c, self.pruning_ratio) for res, c in
             channels_dict(self.block_resolutions, self.channel_base, self.channel_max).items()}
    return [dict(in_channels=chans[res // 2] if res > 4 else 0, out_channels=chans[res],
                 w_dim=self.w_dim, resolution=res, img_channels=self.img_channels,
                 is_last=res == self.img_resolution, architecture=self.architecture,
                 conv_clamp=self.conv_clamp, use_noise=self.use_noise)
            for res in self.block_resolutions]

  @property
  def num_ws(self) -> int:
    return synthesis_num_ws(self.img_resolution)

  @nn.compact
  def __call__(self, ws, noise_mode: str = "random", return_features: bool = False):
    """`return_features`: also each block's feature output {resolution: NHWC} (NICKEL's taps)."""
    _check_noise_mode(noise_mode)
    if ws.shape[1:] != (self.num_ws, self.w_dim):
      raise ValueError(f"stylegan2: synthesis ws must be [N, {self.num_ws}, {self.w_dim}], "
                       f"got {list(ws.shape)}")
    ws = ws.astype(jnp.float32)
    x = img = None
    w_idx = 0
    features = {}
    for args in self.block_args():
      block = SynthesisBlock(name=f"b{args['resolution']}", **args)
      n = block.num_conv
      x, img = block(x, img, ws[:, w_idx:w_idx + n + block.num_torgb], noise_mode)
      features[args["resolution"]] = x
      w_idx += n
    return (img, features) if return_features else img


class Generator(nn.Module):
  """z [N, z_dim], c [N, c_dim] -> NHWC images [N, R, R, img_channels]."""

  z_dim: int
  c_dim: int
  w_dim: int
  img_resolution: int
  img_channels: int
  mapping_kwargs: Any = FrozenDict()
  synthesis_kwargs: Any = FrozenDict()

  def __post_init__(self):
    mapping, synthesis = _kwargs(self.mapping_kwargs), _kwargs(self.synthesis_kwargs)
    _check_keys(mapping, MAPPING_KEYS, "mapping_kwargs")
    _check_keys(synthesis, SYNTHESIS_KEYS, "synthesis_kwargs")
    _check_network(self.img_resolution, synthesis.get("channel_base", 32768),
                   synthesis.get("channel_max", 512))
    _check_architecture(synthesis.get("architecture", "skip"))
    _check_activation(mapping.get("activation", "lrelu"))
    _check_filter(synthesis.get("resample_filter"))
    super().__post_init__()

  def setup(self):
    synthesis = _kwargs(self.synthesis_kwargs)
    synthesis.pop("fp16_channels_last", None)
    synthesis.pop("resample_filter", None)
    self.synthesis = SynthesisNetwork(w_dim=self.w_dim, img_resolution=self.img_resolution,
                                      img_channels=self.img_channels, **synthesis)
    self.mapping = MappingNetwork(z_dim=self.z_dim, c_dim=self.c_dim, w_dim=self.w_dim,
                                  num_ws=self.num_ws, **_kwargs(self.mapping_kwargs))

  @property
  def num_ws(self) -> int:
    synthesis = _kwargs(self.synthesis_kwargs)
    synthesis.pop("fp16_channels_last", None)
    synthesis.pop("resample_filter", None)
    return SynthesisNetwork(w_dim=self.w_dim, img_resolution=self.img_resolution,
                            img_channels=self.img_channels, parent=None, **synthesis).num_ws

  def __call__(self, z, c, truncation_psi=1.0, truncation_cutoff=None, noise_mode="random",
               update_emas=False):
    _check_noise_mode(noise_mode)
    ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                      update_emas=update_emas)
    return self.synthesis(ws, noise_mode=noise_mode)


# ---------------------------------------------------------------------------------------------
# Discriminator.

class DiscriminatorBlock(nn.Module):
  """fromrgb (first block / skip), conv0, conv1 (down 2), resnet skip (down 2, gain sqrt(.5))."""

  in_channels: int
  tmp_channels: int
  out_channels: int
  resolution: int
  img_channels: int
  architecture: str = "resnet"
  conv_clamp: Optional[float] = None

  @nn.compact
  def __call__(self, x, img):
    if self.in_channels == 0 or self.architecture == "skip":
      y = Conv2dLayer(self.img_channels, self.tmp_channels, 1, conv_clamp=self.conv_clamp,
                      name="fromrgb")(img)
      x = y if x is None else x + y
      img = downsample2d(img) if self.architecture == "skip" else None
    conv0 = Conv2dLayer(self.tmp_channels, self.tmp_channels, 3, conv_clamp=self.conv_clamp,
                        name="conv0")
    conv1 = Conv2dLayer(self.tmp_channels, self.out_channels, 3, down=2,
                        conv_clamp=self.conv_clamp, name="conv1")
    if self.architecture == "resnet":
      y = Conv2dLayer(self.tmp_channels, self.out_channels, 1, bias=False, activation="linear",
                      down=2, name="skip")(x, gain=math.sqrt(0.5))
      x = y + conv1(conv0(x), gain=math.sqrt(0.5))
    else:
      x = conv1(conv0(x))
    return x, img


def minibatch_std(x, group_size: Optional[int], num_channels: int = 1):
  """The reference's MinibatchStdLayer on NHWC x: samples i = g * n + j form group j (g over G),
  channels split as c = f * (C // F) + k; appends F stddev channels."""
  n, h, w, c = x.shape
  g = n if group_size is None else min(group_size, n)
  if n % g:
    raise ValueError(f"stylegan2: minibatch std needs a batch divisible by its group size {g}, "
                     f"got {n}")
  f = num_channels
  y = x.reshape(g, n // g, h, w, f, c // f)
  y = y - jnp.mean(y, axis=0)
  y = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + 1e-8)  # [n/G, H, W, F, c]
  y = jnp.mean(y, axis=(1, 2, 4))                         # [n/G, F]
  y = jnp.tile(y, (g, 1))                                 # row i = g * n + j -> group j
  y = jnp.broadcast_to(y[:, None, None, :], (n, h, w, f))
  return jnp.concatenate([x, y], axis=-1)


class DiscriminatorEpilogue(nn.Module):
  """4x4 head: (fromrgb), minibatch std, conv, fc, out, projection onto cmap."""

  in_channels: int
  cmap_dim: int
  resolution: int
  img_channels: int
  architecture: str = "resnet"
  mbstd_group_size: Optional[int] = 4
  mbstd_num_channels: int = 1
  conv_clamp: Optional[float] = None

  @nn.compact
  def __call__(self, x, img, cmap):
    if self.architecture == "skip":
      x = x + Conv2dLayer(self.img_channels, self.in_channels, 1, name="fromrgb")(img)
    if self.mbstd_num_channels > 0:
      x = minibatch_std(x, self.mbstd_group_size, self.mbstd_num_channels)
    x = Conv2dLayer(self.in_channels + self.mbstd_num_channels, self.in_channels, 3,
                    conv_clamp=self.conv_clamp, name="conv")(x)
    # The reference flattens NCHW: channel-major.
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
    x = FullyConnectedLayer(self.in_channels * self.resolution ** 2, self.in_channels,
                            activation="lrelu", name="fc")(x)
    x = FullyConnectedLayer(self.in_channels, self.cmap_dim or 1, name="out")(x)
    if self.cmap_dim > 0:
      x = jnp.sum(x * cmap, axis=1, keepdims=True) * (1.0 / math.sqrt(self.cmap_dim))
    return x


class Discriminator(nn.Module):
  """NHWC images [N, R, R, img_channels], c [N, c_dim] -> logits [N, 1]."""

  c_dim: int
  img_resolution: int
  img_channels: int
  architecture: str = "resnet"
  channel_base: int = 32768
  channel_max: int = 512
  num_fp16_res: int = 0
  conv_clamp: Optional[float] = None
  cmap_dim: Optional[int] = None
  block_kwargs: Any = FrozenDict()
  mapping_kwargs: Any = FrozenDict()
  epilogue_kwargs: Any = FrozenDict()

  def __post_init__(self):
    _check_network(self.img_resolution, self.channel_base, self.channel_max)
    _check_architecture(self.architecture)
    block = _kwargs(self.block_kwargs)
    _check_keys(block, D_BLOCK_KEYS, "block_kwargs")
    _check_keys(_kwargs(self.mapping_kwargs), MAPPING_KEYS, "mapping_kwargs")
    _check_keys(_kwargs(self.epilogue_kwargs), EPILOGUE_KEYS, "epilogue_kwargs")
    _check_filter(block.get("resample_filter"))
    if block.get("freeze_layers", 0):
      # Freeze-D keeps frozen weights as buffers; the trainer, not the model, freezes here.
      raise ValueError(f"stylegan2: block_kwargs freeze_layers={block['freeze_layers']} is not "
                       f"supported (freeze in the trainer)")
    _check_activation(_kwargs(self.mapping_kwargs).get("activation", "lrelu"))
    super().__post_init__()

  @nn.compact
  def __call__(self, img, c, return_features: bool = False):
    """`return_features`: also each block's output {its resolution: NHWC} (block b{2r} gives
    resolution r), as NICKEL & DiME's networks_DD.py returns them."""
    if img.shape[1:] != (self.img_resolution, self.img_resolution, self.img_channels):
      raise ValueError(f"stylegan2: discriminator takes [N, {self.img_resolution}, "
                       f"{self.img_resolution}, {self.img_channels}] images, got {list(img.shape)}")
    resolutions = [2 ** i for i in range(int(self.img_resolution).bit_length() - 1, 2, -1)]
    chans = channels_dict(resolutions + [4], self.channel_base, self.channel_max)
    cmap_dim = chans[4] if self.cmap_dim is None else self.cmap_dim
    cmap_dim = 0 if self.c_dim == 0 else cmap_dim
    x = None
    img = img.astype(jnp.float32)
    features = {}
    for res in resolutions:
      x, img = DiscriminatorBlock(
          chans[res] if res < self.img_resolution else 0, chans[res], chans[res // 2], res,
          self.img_channels, self.architecture, self.conv_clamp, name=f"b{res}")(x, img)
      features[res // 2] = x
    cmap = None
    if self.c_dim > 0:
      cmap = MappingNetwork(z_dim=0, c_dim=self.c_dim, w_dim=cmap_dim, num_ws=None,
                            w_avg_beta=None, name="mapping",
                            **_kwargs(self.mapping_kwargs))(None, c)
    logits = DiscriminatorEpilogue(chans[4], cmap_dim, 4, self.img_channels, self.architecture,
                                   conv_clamp=self.conv_clamp, name="b4",
                                   **_kwargs(self.epilogue_kwargs))(x, img, cmap)
    return (logits, features) if return_features else logits


# ---------------------------------------------------------------------------------------------
# Construction from a reference pickle's init kwargs.

def _freeze(kwargs: Mapping[str, Any]) -> dict:
  """Nested dicts (EasyDict) -> FrozenDict, lists -> tuples, so the module fields hash."""
  def convert(value):
    if isinstance(value, Mapping):
      return FrozenDict({k: convert(v) for k, v in value.items()})
    if isinstance(value, list):
      return tuple(convert(v) for v in value)
    return value
  return {k: convert(v) for k, v in kwargs.items()}


def generator_from_kwargs(init_kwargs: Mapping[str, Any]) -> Generator:
  """A Generator from the reference's `init_kwargs` (as stored in a network pickle)."""
  _check_keys(init_kwargs, GENERATOR_KEYS, "generator init_kwargs")
  return Generator(**_freeze(init_kwargs))


def discriminator_from_kwargs(init_kwargs: Mapping[str, Any]) -> Discriminator:
  """A Discriminator from the reference's `init_kwargs` (as stored in a network pickle)."""
  _check_keys(init_kwargs, DISCRIMINATOR_KEYS, "discriminator init_kwargs")
  return Discriminator(**_freeze(init_kwargs))


def count_params(variables) -> int:
  """Number of parameters (the "params" collection; buffers excluded), as the reference's
  `sum(p.numel() for p in module.parameters())`."""
  params = variables.get("params", variables) if isinstance(variables, Mapping) else variables
  return _count_params(params)
