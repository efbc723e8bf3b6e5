"""Building blocks shared by the OMGD generators and discriminators.

Everything here reproduces the PyTorch pix2pix / gan-compression / OMGD layers numerically:
zero or reflection padding done explicitly (so the padded border takes part in the
normalisation statistics exactly as in the reference), N(0, 0.02) weight init, BatchNorm with
PyTorch's momentum / epsilon, InstanceNorm without affine parameters, and transposed
convolutions with PyTorch's ``ConvTranspose2d`` geometry.

Transposed convolutions are computed by exact phase decompositions: for stride 2 every output
phase (row parity, column parity) is an ordinary small convolution of the input, either four
convolutions with only their own taps, interleaved, or one stride-1 convolution producing
``4 * C_out`` channels (zero taps included) followed by depth-to-space; each gives the same
result as PyTorch's ``ConvTranspose2d`` without the 4x wasted work of an lhs-dilated
convolution on XLA:CPU, and the faster one per layer width is used (`training_conv_transpose`).
The kernel is stored as ``(kh, kw, in, out)`` where
``kernel[a, b, i, o] == torch_weight[i, o, a, b]``.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import operator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

WEIGHT_INIT = nn.initializers.normal(stddev=0.02)
NORM_TYPES = ("batch", "instance")

# The export graph mode (gankd_jax/export.py): while a network is traced inside `export_graph()`,
# the layers here take deployment-friendly forms with the same outputs: XLA's own convolution
# instead of the im2col + matmul route (one CONV_2D / Conv node, not slices, a concat and a
# matmul), instance norm as mean / variance (no custom VJP, no (N, H*W, C) view) and the
# sub-pixel transposed conv's depth-to-space without its 6-D transpose (TFLite runs tensors
# above 4-D only as Flex ops, and its GPU delegate refuses them).
_EXPORT_GRAPH = contextvars.ContextVar("export_graph", default=False)


@contextlib.contextmanager
def export_graph():
  """While tracing inside this context, layers use their export forms (see above)."""
  token = _EXPORT_GRAPH.set(True)
  try:
    yield
  finally:
    _EXPORT_GRAPH.reset(token)


def in_export_graph() -> bool:
  """Whether the current trace is inside `export_graph()` (for layers defined elsewhere)."""
  return _EXPORT_GRAPH.get()


# The inference graph mode (gankd_jax/inference.py): a forward-only pass whose weights are
# compile-time constants, so weight layout work (tap slices, flips, the eval batch norm's
# scale) folds away and layers may take forms that are slow to differentiate or to re-derive
# from traced weights on every call (ConvTranspose below). Same outputs as the training graph.
_INFERENCE_GRAPH = contextvars.ContextVar("inference_graph", default=False)


@contextlib.contextmanager
def inference_graph():
  """While tracing inside this context, layers use their inference forms (see above)."""
  token = _INFERENCE_GRAPH.set(True)
  try:
    yield
  finally:
    _INFERENCE_GRAPH.reset(token)


# Multiply-adds written as sums of scaled slices (StyleGAN2's FIR resampling filters) are not
# convolutions in the traced graph, so stats.count_macs cannot see them; while traced inside
# `count_elementwise_macs()` such code reports them with `add_elementwise_macs`.
_ELEMENTWISE_MACS = contextvars.ContextVar("elementwise_macs", default=None)


@contextlib.contextmanager
def count_elementwise_macs():
  """Yields a one-item list that collects the reported multiply-adds of what is traced within."""
  counter = [0]
  token = _ELEMENTWISE_MACS.set(counter)
  try:
    yield counter
  finally:
    _ELEMENTWISE_MACS.reset(token)


def add_elementwise_macs(count: int) -> None:
  counter = _ELEMENTWISE_MACS.get()
  if counter is not None:
    counter[0] += int(count)


# Mixed precision (`config.precision`). While a function is traced inside
# `compute_precision("bfloat16")`, convolutions and matrix products take bfloat16 operands and
# produce float32 results, forward and backward (custom VJPs below: JAX's own transposes would
# upcast the saved operands and run the backward pass in float32). Everything else stays float32:
# parameters and optimiser state (the products cast them on the way in), activations between
# layers, normalisation statistics, losses and metrics. The depthwise taps are elementwise work
# and stay float32 too. Float32 results matter on XLA:CPU as well: a bfloat16 x bfloat16 dot is
# ~1.7x faster than float32 with a float32 output and ~1.2x slower with a bfloat16 one.
PRECISIONS = {"float32": None, "bfloat16": jnp.bfloat16}
NHWC = ("NHWC", "HWIO", "NHWC")
_COMPUTE_DTYPE = contextvars.ContextVar("compute_dtype", default=None)


def check_precision(precision: str) -> str:
  if precision not in PRECISIONS:
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
  return precision


@contextlib.contextmanager
def compute_precision(precision: str):
  """While tracing inside this context, products run in `precision` (see above)."""
  token = _COMPUTE_DTYPE.set(PRECISIONS[check_precision(precision)])
  try:
    yield
  finally:
    _COMPUTE_DTYPE.reset(token)


def with_precision(precision: str, fn):
  """`fn` that enters `compute_precision(precision)` whenever it runs (so when it is traced)."""
  check_precision(precision)

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with compute_precision(precision):
      return fn(*args, **kwargs)
  return wrapped


def precision_of(config) -> str:
  """A run config's `precision` (runs started before the field existed: float32)."""
  return check_precision(config.get("precision", "float32"))


def compute_dtype():
  """The operand dtype of products in the current trace: None (float32) or bfloat16."""
  return _COMPUTE_DTYPE.get()


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _matmul(x, w, operand_dtype, precision):
  """(..., K) @ (K, N) with `operand_dtype` operands and a float32 result."""
  return _matmul_fwd(x, w, operand_dtype, precision)[0]


def _matmul_fwd(x, w, operand_dtype, precision):
  xo, wo = x.astype(operand_dtype), w.astype(operand_dtype)
  return jnp.matmul(xo, wo, precision=precision, preferred_element_type=jnp.float32), (xo, wo)


def _matmul_bwd(operand_dtype, precision, residuals, g):
  xo, wo = residuals
  # g computed once: XLA:CPU fused the elementwise work producing g (an instance norm's
  # gradient, ...) into a transposed copy for the weight gradient's product, ~12 ms per 1x1
  # conv of a mobile ResNet block at 64x64x256 (the block's forward + backward 98 -> 80 ms).
  go = _materialized(g, wo[0, 0]).astype(operand_dtype)
  dx = jnp.matmul(go, wo.T, precision=precision, preferred_element_type=jnp.float32)
  dw = jnp.einsum("mk,mn->kn", xo.reshape(-1, xo.shape[-1]), go.reshape(-1, go.shape[-1]),
                  precision=precision, preferred_element_type=jnp.float32)
  return dx, dw


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def matmul(x, w, precision=None):
  """x (..., K) @ w (K, N) in the current trace's precision."""
  operand_dtype = compute_dtype() or jnp.float32
  return _matmul(x.astype(jnp.float32), w.astype(jnp.float32), operand_dtype, precision)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kw):
  """`lax.dot_general` in the current trace's precision (flax `nn.Dense(dot_general=...)`)."""
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  if (compute_dtype() is not None and not kw and tuple(lhs_contract) == (lhs.ndim - 1,)
      and tuple(rhs_contract) == (0,) and rhs.ndim == 2 and not lhs_batch and not rhs_batch):
    return _matmul(lhs.astype(jnp.float32), rhs.astype(jnp.float32), jnp.bfloat16, precision)
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                             preferred_element_type=preferred_element_type, **kw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv_low(x, kernel, strides, padding, lhs_dilation, rhs_dilation, groups):
  """NHWC/HWIO convolution in bfloat16 with a float32 result."""
  return _conv_low_fwd(x, kernel, strides, padding, lhs_dilation, rhs_dilation, groups)[0]


def _lax_conv(x, kernel, strides, padding, lhs_dilation, rhs_dilation, groups, **kw):
  return jax.lax.conv_general_dilated(
      x, kernel, strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=NHWC, feature_group_count=groups, **kw)


def _conv_low_fwd(x, kernel, *geometry):
  xb, kb = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
  return _lax_conv(xb, kb, *geometry, preferred_element_type=jnp.float32), (xb, kb)


def _conv_low_bwd(*args):
  *geometry, (xb, kb), g = args
  # The transposed convolutions of bfloat16 operands (their results rounded to bfloat16, as the
  # backends' bfloat16 convolutions give them).
  _, vjp = jax.vjp(lambda a, b: _lax_conv(a, b, *geometry), xb, kb)
  dx, dk = vjp(g.astype(jnp.bfloat16))
  return dx.astype(jnp.float32), dk.astype(jnp.float32)


_conv_low.defvjp(_conv_low_fwd, _conv_low_bwd)


def _as_pairs(pairs):
  return None if pairs is None else tuple(tuple(p) if isinstance(p, (list, tuple)) else p
                                          for p in pairs)


def is_nhwc(x, kernel, dimension_numbers) -> bool:
  """Whether `dimension_numbers` (names, or flax's ConvDimensionNumbers) mean NHWC / HWIO."""
  return (tuple(dimension_numbers) == NHWC or dimension_numbers
          == jax.lax.conv_dimension_numbers(x.shape, kernel.shape, NHWC))


def mixed_conv(x, kernel, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
               dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """`lax.conv_general_dilated` (NHWC/HWIO) in the current trace's precision, with no routing:
  flax `nn.Conv(conv_general_dilated=...)` for the feature networks and 1x1 adapters."""
  dimension_numbers = dimension_numbers or NHWC
  if isinstance(padding, str) and compute_dtype() is not None:
    padding = jax.lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], window_strides, padding)
  if compute_dtype() is None or kwargs or isinstance(padding, str) or not is_nhwc(
      x, kernel, dimension_numbers):
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        precision=precision, **kwargs)
  return _conv_low(x.astype(jnp.float32), kernel.astype(jnp.float32), tuple(window_strides),
                   _as_pairs(padding), _as_pairs(lhs_dilation), _as_pairs(rhs_dilation),
                   feature_group_count)


def bn_scale_init(key, shape, dtype=jnp.float32):
  """BatchNorm scale ~ N(1, 0.02), as pix2pix ``init_weights('normal', 0.02)``."""
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def check_norm(norm: str) -> str:
  """Validate a norm name early, with a one-line message."""
  if norm not in NORM_TYPES:
    raise ValueError(f"unknown norm '{norm}'; choose from {', '.join(NORM_TYPES)}")
  return norm


def conv_bias_for(norm: str) -> bool:
  """The reference puts biases on convs only when the norm has no affine shift (instance)."""
  return check_norm(norm) == "instance"


def leaky_relu(x):
  """LeakyReLU(0.2) used by the U-Net encoder and the PatchGAN."""
  return nn.leaky_relu(x, negative_slope=0.2)


# Normalisation statistics and their gradients are sums over many rows. XLA:CPU lowers such
# reductions to slow reduce-window trees (~30% of the 256x256 OMGD step), so the norms below sum
# by matrix products with a ones vector, in a custom VJP whose backward pass needs only two more
# (BatchNorm on (4, 64, 64, 256), fwd+bwd: 269 -> 92 ms). Values match the plain form to float
# rounding (tests/test_models.py).
# Sums over fewer rows stay plain reductions: with them all as products, the 64x64 default's
# fused step was ~8% slower (0.55 vs 0.51 s); from 1024 rows on, 256x256 unet_s16: 14.3 -> 12.1 s.
MATMUL_SUM_MIN_ROWS = 1024
# A product adds its rows one after another: over a 256x256 map (65,536 rows) that is ~10x less
# accurate than the plain (pairwise) reduction, which OMGD's deep teachers amplify to output
# errors of ~5e-4 (tests/test_generator_pth.py). So the rows go in blocks of at most this many
# (the largest that divides M, at least MATMUL_SUM_MIN_BLOCK; else a plain sum), each block's sum
# a product and the blocks' sums a plain reduction.
MATMUL_SUM_BLOCK = 1024
MATMUL_SUM_MIN_BLOCK = 64


@functools.lru_cache(maxsize=None)
def _sum_block(rows: int) -> int | None:
  """The largest block size in [MATMUL_SUM_MIN_BLOCK, MATMUL_SUM_BLOCK] dividing `rows`."""
  return next((b for b in range(MATMUL_SUM_BLOCK, MATMUL_SUM_MIN_BLOCK - 1, -1)
               if rows % b == 0), None)


def _row_sums(v):
  """(G, M, C) -> (G, C): sums over M, for large M as a batch of (1, B) @ (B, C) products over
  blocks of B rows (G and the blocks the batch dimensions, so no operand needs a transposed
  copy), then a plain sum over the blocks."""
  g, m, c = v.shape
  block = _sum_block(m) if m >= MATMUL_SUM_MIN_ROWS else None
  if block is None:
    return jnp.sum(v, axis=1)
  blocks = v.reshape(g, m // block, block, c)
  ones = jnp.ones(blocks.shape[:3], v.dtype)
  return jnp.sum(jnp.einsum("gkb,gkbc->gkc", ones, blocks), axis=1)


def group_moments(v):
  """Mean and biased variance over M of a (G, M, C) view: (G, 1, C) each."""
  m = v.shape[1]
  mean = _row_sums(v)[:, None] / m
  # From centred values, not E[v^2] - mean^2: with |mean| / std ~ 30 (as in OMGD's deep teachers
  # at 256 px) that cancellation is off by ~1e-3 of a normalised value; PyTorch's is not.
  var = _row_sums(jnp.square(v - mean))[:, None] / m
  return mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _normalize(v, scale, bias, eps: float):
  """scale * (v - mean) / sqrt(var + eps) + bias with statistics over M of (G, M, C)."""
  return _normalize_fwd(v, scale, bias, eps)[0]


def _normalize_fwd(v, scale, bias, eps):
  mean, var = group_moments(v)
  rstd = jax.lax.rsqrt(var + eps)
  normed = (v - mean) * rstd
  return normed * scale + bias, (normed, rstd, scale)


def _normalize_bwd(eps, residuals, dy):
  del eps
  normed, rstd, scale = residuals
  m = dy.shape[1]
  dbias = _row_sums(dy)[:, None]
  dscale = _row_sums(dy * normed)[:, None]
  dv = (scale * rstd / m) * (m * dy - dbias - normed * dscale)
  return dv, jnp.sum(dscale, axis=(0, 1)), jnp.sum(dbias, axis=(0, 1))


_normalize.defvjp(_normalize_fwd, _normalize_bwd)


def spatial_mean(x):
  """Mean over H and W of NHWC, keepdims, as a mean over W then a mean over H: TFLite's SUM
  kernel adds one element at a time in float32, so one SUM over a 256x256 map is off by up to
  ~1e-4 of a normalised value (mean / std ~ 40); two SUMs of 256 terms each are ~25x closer."""
  return jnp.mean(jnp.mean(x, axis=2, keepdims=True), axis=1, keepdims=True)


def instance_norm(x, eps: float = 1e-5):
  """InstanceNorm2d(affine=False): per sample and channel over H, W (biased variance)."""
  if _EXPORT_GRAPH.get():
    # Deployment runtimes fuse this form (SUM, MUL, SUB, RSQRT); no 3-D view. The variance
    # from centred values, not E[x^2] - mean^2 (cancellation).
    mean = spatial_mean(x)
    var = spatial_mean(jnp.square(x - mean))
    return (x - mean) * jax.lax.rsqrt(var + eps)
  n, h, w, c = x.shape
  ones, zeros = jnp.ones((c,), x.dtype), jnp.zeros((c,), x.dtype)
  return _normalize(x.reshape(n, h * w, c), ones, zeros, eps).reshape(x.shape)


class BatchNorm(nn.Module):
  """flax `nn.BatchNorm` over all but the last axis (same variables, fast variance, biased
  running variance), with the statistics and gradients as matrix products (see above)."""

  momentum: float = 0.9
  epsilon: float = 1e-5
  scale_init: nn.initializers.Initializer = nn.initializers.ones
  bias_init: nn.initializers.Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x, *, use_running_average: bool):
    c = x.shape[-1]
    scale = self.param("scale", self.scale_init, (c,), jnp.float32)
    bias = self.param("bias", self.bias_init, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    if use_running_average:
      return (x - ra_mean.value) * (jax.lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
    rows = x.reshape(1, -1, c)
    if not self.is_initializing():
      # The same products as inside _normalize: XLA computes them once (2 dots forward).
      mean, var = jax.lax.stop_gradient(group_moments(rows))
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean.reshape(c)
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var.reshape(c)
    return _normalize(rows, scale, bias, self.epsilon).reshape(x.shape)


def reflect_pad(x, pad: int):
  """ReflectionPad2d(pad) on an NHWC tensor."""
  if pad == 0:
    return x
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


class Norm(nn.Module):
  """The reference ``norm_layer``: BatchNorm2d (affine, running stats) or InstanceNorm2d."""

  kind: str = "batch"

  @nn.compact
  def __call__(self, x, *, train: bool = True):
    if check_norm(self.kind) == "instance":
      return instance_norm(x)
    return BatchNorm(scale_init=bn_scale_init, name="bn")(x, use_running_average=not train)


# XLA:CPU's convolution is very slow on small feature maps with many channels (a 3x3 conv
# 1024->2048 on 2x2 maps: 1.3 s, vs 38 ms as one matmul) and on 1x1 convs (fwd+bwd, batch 4,
# 128x128, 16->64: 162 vs 8 ms), so those run as im2col + matmul. On larger outputs XLA's own
# convolution is the faster one once its weight gradients run in YNNPACK (xla_cpu.py; 3x3
# 128->128 at 128x128: 246 vs ~480 ms), and for narrow convs in any case (the U-Net's 128->12
# output conv: 77 vs 302 ms); without YNNPACK this rule is also the faster one at 64x64
# (OMGD default fused step 0.50 s, vs 0.54 s with wide convs as im2col up to 64x64 outputs).
# bfloat16 (config.precision) keeps the same rule, measured: XLA:CPU's bfloat16 convolution ran
# at about its float32 speed, and im2col as a bfloat16 product was slower on large maps (3x3
# 128->128 on 4x128x128, forward: 277 ms, against 132 as a bfloat16 convolution).
MATMUL_CONV_MAX_PIXELS = 8 * 8
# Depthwise convolutions (the mobile ResNets' SeparableConv) as shifted multiply-adds: XLA:CPU's
# grouped convolution was 4x slower forward (ngf 16 student at 256 px: 259.5 -> 64.6 ms). Their
# backward pass is taps too, with the forward output computed once (`_materialized`): the ngf 64
# mobile ResNet's forward + backward at 256 px went 2.45-2.58 -> 1.55-1.69 s (PyTorch 0.82 s).
DEPTHWISE_AS_TAPS = True


def use_matmul_conv(kernel_shape, out_hw) -> bool:
  """Whether the im2col + matmul form of this (plain, ungrouped) conv is the faster one."""
  kh, kw = kernel_shape[:2]
  return kh * kw == 1 or out_hw[0] * out_hw[1] <= MATMUL_CONV_MAX_PIXELS


def _pad_hw(v, padding, interior=(0, 0)):
  """Zero padding of H and W of NHWC, [(lo, hi)] * 2 (negative crops), `interior` zeros between
  pixels."""
  (hl, hh), (wl, wh) = padding
  return jax.lax.pad(v, jnp.zeros((), v.dtype),
                     [(0, 0, 0), (hl, hh, interior[0]), (wl, wh, interior[1]), (0, 0, 0)])


def _out_hw(padded_hw, kernel_hw, strides):
  """Output height and width of a conv over an already padded input."""
  return tuple((size - k) // stride + 1 for size, k, stride in zip(padded_hw, kernel_hw, strides))


def _tap_windows(xp, kernel_hw, strides, out_hw):
  """The (i, j) tap's strided window of the padded input, for every tap in row-major order."""
  (kh, kw), (sh, sw), (ho, wo) = kernel_hw, strides, out_hw
  return [xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
          for i in range(kh) for j in range(kw)]


def _conv_as_matmul(x, kernel, strides, padding, precision=None):
  """NHWC conv (no groups, no dilation) as patches @ kernel; `padding` is [(lo, hi)] * 2."""
  kh, kw, c_in, c_out = kernel.shape
  xp = _pad_hw(x, padding)
  patches = _tap_windows(xp, (kh, kw), strides, _out_hw(xp.shape[1:3], (kh, kw), strides))
  return matmul(jnp.concatenate(patches, axis=-1), kernel.reshape(kh * kw * c_in, c_out), precision)


def is_depthwise(x, kernel, feature_group_count: int) -> bool:
  """One filter per input channel (HWIO kernel (kh, kw, 1, C), C groups of C inputs)."""
  return feature_group_count > 1 and kernel.shape[2] == 1 and (
      feature_group_count == x.shape[-1] == kernel.shape[3])


def _tap_sum(xp, kernel, strides, out_hw):
  """Depthwise conv of a padded input: the sum over taps of each window times its kernel tap."""
  kh, kw = kernel.shape[:2]
  windows = _tap_windows(xp, (kh, kw), strides, out_hw)
  terms = [window * kernel[t // kw, t % kw, 0] for t, window in enumerate(windows)]
  return functools.reduce(operator.add, terms)


def _materialized(v, witness):
  """`v` computed once, into a buffer of its own. XLA:CPU copies cheap elementwise producers into
  each consumer, so the nine-tap sum was recomputed inside every consumer of a depthwise conv's
  output in a training step (the instance norm after it, its gradient, the nine kernel-gradient
  products). A conditional's result is a buffer no consumer fuses into (an optimisation barrier
  does not survive XLA:CPU's pipeline): `v` goes through one whose predicate is a runtime value
  (`witness` is not NaN), so XLA keeps it; both branches return `v`."""
  return jax.lax.cond(witness == witness, lambda v: v, lambda v: v * 1, v)


# A depthwise kernel gradient is, per tap, a sum over pixels of a product of two (M, C) maps.
# XLA:CPU's reductions over M (plain, reshaped, or as products with a ones vector after the
# product is written out) took 2-4 ms per tap at 64x64x256; as this many partial sums of row
# slices, one elementwise loop XLA vectorises over C that writes M / 8 rows, then a plain sum of
# those, 9 taps took 1.7-2.9 ms against 20-24 (64x64x256; 128x128x128: 5.2 against 41; 64x64x64:
# 0.4 against 2.4; 2026-12-02). From 32 slices on XLA splits the loop and it is slow again.
PIXEL_SUM_SLICES = 8


def _sum_of_products(a, b):
  """(M, C), (M, C) -> (C,): the sum over M of a * b (see PIXEL_SUM_SLICES)."""
  m, c = a.shape
  if m % PIXEL_SUM_SLICES:
    return jnp.sum(a * b, axis=0)
  a, b = a.reshape(PIXEL_SUM_SLICES, -1, c), b.reshape(PIXEL_SUM_SLICES, -1, c)
  partial = functools.reduce(operator.add, [a[k] * b[k] for k in range(PIXEL_SUM_SLICES)])
  return jnp.sum(partial, axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_as_taps(x, kernel, strides, padding):
  """Depthwise NHWC conv as a sum of kh * kw shifted, per-channel scaled copies of the input:
  elementwise work XLA fuses into one loop (XLA:CPU's grouped convolution runs it as C tiny
  convolutions; timings in DEPTHWISE_AS_TAPS' comment). `strides` and `padding` are tuples."""
  xp = _pad_hw(x, padding)
  return _tap_sum(xp, kernel, strides, _out_hw(xp.shape[1:3], kernel.shape[:2], strides))


def _depthwise_as_taps_fwd(x, kernel, strides, padding):
  # Under differentiation the input and the output are each computed once: XLA:CPU split the
  # reflection padding before a separable conv into five partial copies, one per group of taps
  # reading it, and copied the tap sum into each of its consumers (see `_materialized`). A
  # forward-only pass (the primal above: inference) has one consumer of each and does without.
  x = _materialized(x, kernel[0, 0, 0, 0])
  return _materialized(_depthwise_as_taps(x, kernel, strides, padding), kernel[0, 0, 0, 0]), (
      x, kernel)


def _depthwise_as_taps_bwd(strides, padding, residuals, g):
  """Both gradients as taps too: the input's is the full correlation of g (spread back to the
  strided positions) with the flipped kernel, cropped by the forward padding; the kernel's is,
  per tap, the sum of the tap's input window times g (`_sum_of_products`)."""
  x, kernel = residuals
  kh, kw = kernel.shape[:2]
  (sh, sw), (_, ho, wo, c) = strides, g.shape
  g = _materialized(g, kernel[0, 0, 0, 0])  # Read by the 1 + kh * kw loops below.
  xp = _pad_hw(x, padding)
  # Rows / columns past the last strided window: no output saw them.
  spare_h, spare_w = xp.shape[1] - (sh * (ho - 1) + kh), xp.shape[2] - (sw * (wo - 1) + kw)
  (hl, hh), (wl, wh) = padding
  gp = _pad_hw(g, ((kh - 1 - hl, kh - 1 - hh + spare_h), (kw - 1 - wl, kw - 1 - wh + spare_w)),
               interior=(sh - 1, sw - 1))
  dx = _tap_sum(gp, kernel[::-1, ::-1], (1, 1), x.shape[1:3])
  windows = _tap_windows(xp, (kh, kw), strides, (ho, wo))
  dk = jnp.stack([_sum_of_products(w.reshape(-1, c), g.reshape(-1, c)) for w in windows])
  return dx.astype(x.dtype), dk.reshape(kernel.shape).astype(kernel.dtype)


_depthwise_as_taps.defvjp(_depthwise_as_taps_fwd, _depthwise_as_taps_bwd)


# XLA:CPU's convolution to a few output channels has little to tile over: the ResNets' 7x7 output
# layer (64->3 at 256x256) took 71-78 ms forward at batch 1, more than PyTorch's 52. As a 1 x kw
# convolution to kh * c_out channels (every kernel row at once) and a sum of kh row-shifted slices
# of that small map, it ran 2-5x faster forward (2 cores, 2026-12-01): 7x7 64->3 at 256x256 71.5 ->
# 15.1 ms, 16->3 (the mobile student's) 18.1 -> 4.1, 3x3 64->3 at 128x128 4.5 -> 1.4, 4x4 128->3 at
# 128x128 12.1 -> 4.1; 8 outputs 0.33-0.47x; 16 outputs 0.64-2.1x; one output mixed (3x3 32->1 at
# 256x256 1.5x slower, 7x7 0.5-0.7x). So the inference graph takes it for 2-8 outputs.
# Forward + backward it wins by less and not everywhere: 7x7 kernels gain at every width measured
# (batch 1 at 256x256: 128->3 386 -> 126 ms, 64->3 140-147 -> 67-78, 48->3 111 -> 64, 48->4 105 ->
# 75, 32->3 79 -> 61, 64->8 201 -> 165; batch 4 64->3 637 -> 379; 16->3 even), 3x3 kernels do not
# (batch 4 at 128x128 with YNNPACK dots: 32->8 20 -> 36 ms, 64->4 34 -> 37), so the training graph
# takes it for kernels of 7x7 and up.
ROW_TAPS_OUT = range(2, 9)
TRAINING_ROW_TAPS_MIN_TAPS = 7 * 7


def use_row_taps(kernel_shape, feature_group_count: int, rhs_dilation) -> bool:
  """Whether this conv runs in the row-taps form in the current graph (measured: see above)."""
  kh, kw, _, c_out = kernel_shape
  if (_EXPORT_GRAPH.get() or feature_group_count != 1 or kh == 1 or c_out not in ROW_TAPS_OUT
      or any(d != 1 for d in rhs_dilation or (1, 1))):
    return False
  return _INFERENCE_GRAPH.get() or kh * kw >= TRAINING_ROW_TAPS_MIN_TAPS


def _conv_as_row_taps(x, kernel, strides, padding, lhs_dilation=None, precision=None):
  """NHWC conv as z = a 1 x kw conv to (kh, c_out) channels (z's row r holds every kernel row's
  response to input row r), then output row o = sum over i of z's row (stride * o + i), tap i.
  The height padding and lhs dilation go onto z: zero input rows give zero z rows."""
  kh, kw, c_in, c_out = kernel.shape
  (sh, sw), (dh, dw) = strides, lhs_dilation or (1, 1)
  rows = jnp.transpose(kernel, (1, 2, 0, 3)).reshape(1, kw, c_in, kh * c_out)
  z = mixed_conv(x, rows, (1, sw), [(0, 0), tuple(padding[1])], lhs_dilation=(1, dw),
                 precision=precision)
  z = _pad_hw(z, (tuple(padding[0]), (0, 0)), interior=(dh - 1, 0))
  ho = (z.shape[1] - kh) // sh + 1
  z = z.reshape(*z.shape[:3], kh, c_out)
  out = z[:, 0:sh * (ho - 1) + 1:sh, :, 0]
  for i in range(1, kh):
    out = out + z[:, i:i + sh * (ho - 1) + 1:sh, :, i]
  return out


# XLA:CPU computes a convolution's weight gradient slowly at batch 1 (it parallelises over the
# batch). As one product per kernel tap (the tap's window of the input, its zero padding fused in,
# against the output gradient, contracted over pixels) a strided convolution's was 2-3x faster
# (2 cores, 2026-12-01, batch 1: 3x3 stride 2 64->128 at 256x256 70 -> 35 ms, 128->256 at 128x128
# 43 -> 21; 4x4 stride 2 64->128 at 128x128 26 -> 8.5, 3->64 at 256x256 6.7 -> 2.1), and so was a
# kernel of at most 4 taps (the per-phase transposed convolutions' 2x2 128->64 at 128x128 27 ->
# 14 ms, 1x2 13.6 -> 5.8, 2x2 256->128 at 64x64 17 -> 10). Larger stride-1 kernels were mixed
# (3x3 256->256 at 64x64 43 -> 51 ms, 128->128 at 128x128 78 -> 53; 7x7 3->64 at 256x256 10 -> 24)
# and batch 4 as often slower as faster (3x3 stride 2 64->128 at 256x256 134 -> 160 ms, 4x4 stride
# 2 128->256 at 64x64 36 -> 28, 2x2 128->64 at 128x128 50 -> 86), so those keep XLA's.
TAP_WEIGHT_GRADIENT_MAX_TAPS = 4


def use_tap_weight_gradient(kernel_shape, x_shape, strides) -> bool:
  """Whether this plain convolution's weight gradient runs as per-tap products (see above)."""
  return x_shape[0] == 1 and (any(stride > 1 for stride in strides)
                              or kernel_shape[0] * kernel_shape[1] <= TAP_WEIGHT_GRADIENT_MAX_TAPS)


def _padded_tap_window(x, tap, strides, padding, out_hw):
  """The input pixels kernel tap (i, j) reads for each output pixel, zeros where it reads
  padding: rows i - pad_lo + stride * r, likewise columns (a strided slice of x, then a pad)."""
  starts, stops, steps, pads = [], [], [], []
  for t, stride, (lo, _), size, out in zip(tap, strides, padding, x.shape[1:3], out_hw):
    first = max(0, -((t - lo) // stride))  # first output whose input index is >= 0
    last = min(out - 1, (size - 1 - (t - lo)) // stride)
    starts.append(t - lo + stride * first)
    stops.append(t - lo + stride * last + 1)
    steps.append(stride)
    pads.append((first, out - 1 - last))
  if any(start >= stop for start, stop in zip(starts, stops)):  # the tap reads only padding
    return jnp.zeros((x.shape[0], *out_hw, x.shape[3]), x.dtype)
  window = x[:, starts[0]:stops[0]:steps[0], starts[1]:stops[1]:steps[1], :]
  return _pad_hw(window, pads)


def _tap_weight_gradient(xo, go, kernel_shape, strides, padding, precision):
  """A convolution's kernel gradient as one product per tap, contracted over pixels."""
  kh, kw, c_in, c_out = kernel_shape
  rows = go.reshape(-1, c_out)
  dk = jnp.stack([
      jnp.einsum("mk,mn->kn",
                 _padded_tap_window(xo, (i, j), strides, padding, go.shape[1:3]).reshape(-1, c_in),
                 rows, precision=precision, preferred_element_type=jnp.float32)
      for i in range(kh) for j in range(kw)])
  return dk.reshape(kernel_shape)


# XLA:CPU takes a stride-2 convolution's input gradient as an lhs-dilated convolution (the output
# gradient with zeros between its pixels), a slow loop in which 3/4 of the multiply-adds meet
# those zeros. It is PyTorch's transposed convolution of the output gradient with the same
# weights, which the per-phase form computes with only each phase's taps. The input gradient
# timed alone (2 cores, 2026-12-02; XLA's lhs-dilated / per-phase, ms): 4x4 stride 2 at batch 4
# (the U-Nets' and the PatchGAN's), x 128x128 128->256 236 / 162, 64x64 256->512 160 / 120,
# 128x128 64->128 94 / 42, 64x64 128->256 55 / 30, 32x32 256->512 31 / 30, 128x128 16->32
# 12.3 / 3.7; 3x3 stride 2 at batch 1 (the ResNets'), 256x256 64->128 53 / 27, 128x128
# 128->256 19 / 20. To a few input channels the phases' convolutions have little to tile over
# and XLA's form wins (256x256 6->128 at batch 4: 21 / 66 ms; 3->64 at batch 1: 2.6 / 8.8), so
# those keep it.
PHASE_INPUT_GRADIENT_MIN_CHANNELS = 9


def use_phase_input_gradient(kernel_shape, x_shape, strides, padding) -> bool:
  """Whether this plain convolution's input gradient is the per-phase transposed convolution:
  stride 2, a square kernel, one padding all round, each side of the input twice the output's
  (so the transposed convolution of the output gradient has the input's size), and at least
  PHASE_INPUT_GRADIENT_MIN_CHANNELS input channels (see above)."""
  kh, kw, c_in, _ = kernel_shape
  pads = {p for pair in padding for p in pair}
  if (tuple(strides) != (2, 2) or kh != kw or len(pads) != 1
      or c_in < PHASE_INPUT_GRADIENT_MIN_CHANNELS):
    return False
  (pad,) = pads
  out_hw = _out_hw((x_shape[1] + 2 * pad, x_shape[2] + 2 * pad), (kh, kw), strides)
  return all(size == 2 * out and out > 0 for size, out in zip(x_shape[1:3], out_hw))


def _phase_input_gradient(go, ko, padding, conv):
  """dL/dx of a stride-2 convolution: the output gradient's PyTorch transposed convolution with
  the same weights (HWIO -> HW(O as in)(I as out)), in the per-phase form run by `conv`."""
  kernel, pad, out = ko.shape[0], padding[0][0], go.shape[1]
  output_padding = 2 * out - transposed_output_size(out, kernel, pad, 0)  # back to the input's size
  return conv_transpose_phases(go, ko.transpose(0, 1, 3, 2), pad, output_padding, conv=conv)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def _conv_routed_gradients(x, kernel, strides, padding, operand_dtype, precision, tap_weights,
                           phase_inputs):
  """A plain NHWC conv whose kernel gradient is one product per tap (`tap_weights`) and / or
  whose input gradient is the per-phase transposed convolution (`phase_inputs`); lax's
  gradients otherwise."""
  return _conv_routed_gradients_fwd(x, kernel, strides, padding, operand_dtype, precision,
                                    tap_weights, phase_inputs)[0]


def _conv_routed_gradients_fwd(x, kernel, strides, padding, operand_dtype, precision, *_):
  xo, ko = x.astype(operand_dtype), kernel.astype(operand_dtype)
  out = _lax_conv(xo, ko, strides, padding, None, None, 1, precision=precision,
                  preferred_element_type=jnp.float32)
  return out, (xo, ko)


def _conv_routed_gradients_bwd(strides, padding, operand_dtype, precision, tap_weights,
                               phase_inputs, residuals, g):
  xo, ko = residuals
  go = g.astype(operand_dtype)

  def conv(v, k, window_strides=strides, pads=padding):
    return _lax_conv(v, k, window_strides, pads, None, None, 1, precision=precision)
  if phase_inputs:
    dx = _phase_input_gradient(go, ko, padding, conv)
  else:
    dx = jax.vjp(lambda v: conv(v, ko), xo)[1](go)[0]
  if tap_weights:
    dk = _tap_weight_gradient(xo, go, ko.shape, strides, padding, precision)
  else:
    dk = jax.vjp(lambda k: conv(xo, k), ko)[1](go)[0]
  return dx.astype(jnp.float32), dk.astype(jnp.float32)


_conv_routed_gradients.defvjp(_conv_routed_gradients_fwd, _conv_routed_gradients_bwd)


def conv_general_dilated(x, kernel, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
  """`lax.conv_general_dilated` for NHWC/HWIO, taking the matmul, depthwise-taps or row-taps
  form where that is faster."""
  explicit = not kwargs and isinstance(padding, (list, tuple))
  if explicit and use_row_taps(kernel.shape, feature_group_count, rhs_dilation):
    return _conv_as_row_taps(x, kernel, window_strides, padding, lhs_dilation, precision)
  # The other forms take undilated convolutions with non-negative padding.
  undilated = (explicit and not _EXPORT_GRAPH.get()
               and all(lo >= 0 and hi >= 0 for lo, hi in padding)
               and all(d == 1 for d in (lhs_dilation or (1, 1)) + (rhs_dilation or (1, 1))))
  if undilated:
    # Hashable, for the custom VJPs' static arguments.
    strides, pairs = tuple(window_strides), tuple(tuple(p) for p in padding)
    if DEPTHWISE_AS_TAPS and is_depthwise(x, kernel, feature_group_count):
      return _depthwise_as_taps(x, kernel, strides, pairs)
    if feature_group_count == 1:
      padded_hw = (x.shape[1] + sum(pairs[0]), x.shape[2] + sum(pairs[1]))
      if use_matmul_conv(kernel.shape, _out_hw(padded_hw, kernel.shape[:2], strides)):
        return _conv_as_matmul(x, kernel, strides, pairs, precision)
      tap_weights = use_tap_weight_gradient(kernel.shape, x.shape, strides)
      phase_inputs = use_phase_input_gradient(kernel.shape, x.shape, strides, pairs)
      if tap_weights or phase_inputs:
        return _conv_routed_gradients(x.astype(jnp.float32), kernel.astype(jnp.float32),
                                      strides, pairs, compute_dtype() or jnp.float32, precision,
                                      tap_weights, phase_inputs)
  return mixed_conv(x, kernel, window_strides, padding, lhs_dilation=lhs_dilation,
                    rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                    feature_group_count=feature_group_count, precision=precision, **kwargs)


class Conv(nn.Module):
  """Conv2d with PyTorch-style symmetric zero padding and N(0, 0.02) init."""

  features: int
  kernel: int
  stride: int = 1
  padding: int = 0
  use_bias: bool = True
  groups: int = 1

  @nn.compact
  def __call__(self, x):
    return nn.Conv(
        self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride),
        padding=[(self.padding, self.padding)] * 2, use_bias=self.use_bias,
        feature_group_count=self.groups, kernel_init=WEIGHT_INIT,
        bias_init=nn.initializers.zeros, conv_general_dilated=conv_general_dilated,
        name="conv")(x)


def phase_taps(kernel: int, padding: int, phase: int) -> list[tuple[int, int]]:
  """(input offset, kernel index) pairs feeding output row ``2 * m + phase`` of a stride-2
  transposed conv: output ``o = 2 * i - padding + k`` so ``i = m + offset``."""
  taps = []
  for k in range(kernel):
    shifted = phase + padding - k
    if shifted % 2 == 0:
      taps.append((shifted // 2, k))
  return taps


def subpixel_geometry(kernel: int, padding: int):
  """Static index tables for the sub-pixel form of a stride-2 transposed conv.

  Returns ``(lo, hi, index)``: the input window spans offsets ``lo..hi`` (pad ``-lo`` before,
  ``hi`` after), and ``index[phase, window_pos]`` is the kernel tap or ``kernel`` (a zero tap).
  """
  taps = [phase_taps(kernel, padding, phase) for phase in (0, 1)]
  offsets = [off for phase_list in taps for off, _ in phase_list]
  lo, hi = min(offsets), max(offsets)
  index = np.full((2, hi - lo + 1), kernel, dtype=np.int32)
  for phase, phase_list in enumerate(taps):
    for off, k in phase_list:
      index[phase, off - lo] = k
  return lo, hi, index


def transposed_output_size(size: int, kernel: int, padding: int, output_padding: int) -> int:
  """PyTorch ConvTranspose2d output length for stride 2."""
  return (size - 1) * 2 - 2 * padding + kernel + output_padding


def subpixel_kernel(kernel_hwio, padding: int):
  """Rearrange a ``(k, k, in, out)`` transposed-conv kernel into the stride-1 kernel
  ``(win, win, in, 4 * out)`` whose output channels are ordered (row phase, col phase, out).

  Built from static slices (a gather here costs ~90 ms per step for a 1024x512 kernel on CPU).
  """
  k = kernel_hwio.shape[0]
  lo, hi, index = subpixel_geometry(k, padding)
  zero = jnp.zeros_like(kernel_hwio[0, 0])

  def tap(a, b):
    return zero if a == k or b == k else kernel_hwio[a, b]

  window = range(hi - lo + 1)
  return jnp.stack([
      jnp.stack([jnp.concatenate([tap(index[py, wy], index[px, wx])
                                  for py in (0, 1) for px in (0, 1)], axis=-1)
                 for wx in window])
      for wy in window])


def depth_to_space2(y, c_out: int):
  """(N, H, W, (2, 2, C)) -> (N, 2H, 2W, C) with channel order (row phase, col phase, C)."""
  n, h, w, _ = y.shape
  if _EXPORT_GRAPH.get():
    # The same interleave with no tensor above 4-D: each row phase's two column phases side by
    # side along channels, read as (2W, C); then the two row phases along W, read as (2H, 2W).
    phase = [y[..., i * c_out:(i + 1) * c_out] for i in range(4)]
    rows = [jnp.concatenate(phase[2 * py:2 * py + 2], axis=-1).reshape(n, h, 2 * w, c_out)
            for py in (0, 1)]
    return jnp.concatenate(rows, axis=2).reshape(n, 2 * h, 2 * w, c_out)
  y = y.reshape(n, h, w, 2, 2, c_out).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(n, 2 * h, 2 * w, c_out)


def conv_transpose_subpixel(x, kernel_hwio, padding: int, output_padding: int):
  """Exact PyTorch ``ConvTranspose2d(stride=2)`` (weights ``kernel[a,b,i,o] = w[i,o,a,b]``)
  as one stride-1 conv + depth-to-space. Supports geometries whose output is ``2 * size``."""
  k = kernel_hwio.shape[0]
  for size in x.shape[1:3]:
    if transposed_output_size(size, k, padding, output_padding) != 2 * size:
      raise ValueError(
          f"transposed conv k={k} p={padding} op={output_padding} does not double size {size}")
  lo, hi, _ = subpixel_geometry(k, padding)
  y = conv_general_dilated(
      x, subpixel_kernel(kernel_hwio, padding).astype(x.dtype), window_strides=(1, 1),
      padding=[(-lo, hi)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return depth_to_space2(y, kernel_hwio.shape[3])


def conv_transpose_dilated(x, kernel_hwio, padding: int, output_padding: int):
  """The same PyTorch ``ConvTranspose2d(stride=2)`` as an lhs-dilated conv with a flipped
  kernel (the textbook form; kept as the reference the sub-pixel form is tested against)."""
  k = kernel_hwio.shape[0]
  flipped = kernel_hwio[::-1, ::-1]
  before, after = k - 1 - padding, k - 1 - padding + output_padding
  return conv_general_dilated(x, flipped.astype(x.dtype), window_strides=(1, 1),
                              padding=[(before, after)] * 2, lhs_dilation=(2, 2))


def conv_transpose_phases(x, kernel_hwio, padding: int, output_padding: int, conv=None):
  """The same PyTorch ``ConvTranspose2d(stride=2)`` as four convolutions, one per output phase,
  each with only that phase's taps (no zero taps), interleaved. With constant weights (the
  inference path) the tap slices fold away at compile time. `conv(x, kernel, strides, padding)`
  runs the phases (default: `conv_general_dilated`)."""
  conv = conv or conv_general_dilated
  k = kernel_hwio.shape[0]
  for size in x.shape[1:3]:
    if transposed_output_size(size, k, padding, output_padding) != 2 * size:
      raise ValueError(
          f"transposed conv k={k} p={padding} op={output_padding} does not double size {size}")
  taps = [sorted(phase_taps(k, padding, phase)) for phase in (0, 1)]
  rows = []
  for row_taps in taps:
    row = []
    for col_taps in taps:
      # Static slices, not a gather: a gather's gradient is a scatter, slow on CPU.
      kernel = jnp.stack([kernel_hwio[a] for _, a in row_taps])
      kernel = jnp.stack([kernel[:, b] for _, b in col_taps], axis=1)
      pad = [(-row_taps[0][0], row_taps[-1][0]), (-col_taps[0][0], col_taps[-1][0])]
      row.append(conv(x, kernel.astype(x.dtype), (1, 1), pad))
    rows.append(jnp.concatenate(row, axis=-1))
  return depth_to_space2(jnp.concatenate(rows, axis=-1), kernel_hwio.shape[3])


_TEXTBOOK_CONV_TRANSPOSE = contextvars.ContextVar("textbook_conv_transpose", default=False)


@contextlib.contextmanager
def textbook_conv_transpose():
  """While tracing inside this context, ConvTranspose uses the lhs-dilated form.

  Same numbers, slower; used to count MACs the way torchprofile (and so the papers) counts a
  transposed conv: output elements x kernel taps x input channels.
  """
  token = _TEXTBOOK_CONV_TRANSPOSE.set(True)
  try:
    yield
  finally:
    _TEXTBOOK_CONV_TRANSPOSE.reset(token)


# Forward-only with constant weights (batch 1 and 4, 256x256 generators, 2 cores), the per-phase
# form was the fastest transposed conv almost everywhere (the U-Net's 1024->512 at 8x8: 8.4 ms,
# against 10.8 lhs-dilated and 17.6 sub-pixel, whose 9-tap kernel holds 5 zero taps in 9), but an
# output layer to a few channels runs as 4 convolutions with a 3-wide output, which XLA:CPU does
# badly: batch 1 at 128x128, 128->3: 12.1 ms per-phase, 3.0 lhs-dilated; the ngf 16 U-Net's
# 32->3: 5.0-5.2 ms per-phase, 1.9-2.1 lhs-dilated (2026-12-01, on a second machine type).
INFERENCE_DILATED_MAX_OUT = 4


def inference_conv_transpose(c_out: int):
  """The transposed conv form the inference graph uses for this width (measured: see above)."""
  if c_out <= INFERENCE_DILATED_MAX_OUT:
    return conv_transpose_dilated
  return conv_transpose_phases


# Training (forward + backward, batch 4, 2 cores, 256x256 U-Nets): the per-phase form does the
# transposed conv's own multiply-adds, the sub-pixel form 9/4 of them (the zero taps), and was
# 1.6-1.9x slower on the wide layers (input 16x16 1024->256: 347 against 188 ms; 32x32 512->128:
# 308 / 165; 64x64 256->64: 334 / 208; the student's 16x16 256->64: 21.4 / 14.9). A few output
# channels turn that around, as forward-only (128x128 128->3: 110 against 166 ms; 32->3: 26 / 45),
# so those layers keep the sub-pixel form (the lhs-dilated one is 30-45x slower to differentiate).
TRAINING_SUBPIXEL_MAX_OUT = 4


def training_conv_transpose(c_out: int):
  """The transposed conv form the training graph uses for this width (measured: see above)."""
  return conv_transpose_subpixel if c_out <= TRAINING_SUBPIXEL_MAX_OUT else conv_transpose_phases


class ConvTranspose(nn.Module):
  """PyTorch ``ConvTranspose2d(in, features, kernel, stride=2, padding, output_padding)``."""

  features: int
  kernel: int
  padding: int
  output_padding: int = 0
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    w = self.param("kernel", WEIGHT_INIT, (self.kernel, self.kernel, x.shape[-1], self.features))
    if _TEXTBOOK_CONV_TRANSPOSE.get():
      impl = conv_transpose_dilated
    elif _EXPORT_GRAPH.get():
      impl = conv_transpose_subpixel  # One CONV_2D node (export.py).
    elif _INFERENCE_GRAPH.get():
      impl = inference_conv_transpose(self.features)
    else:
      impl = training_conv_transpose(self.features)
    y = impl(x, w, self.padding, self.output_padding)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))
    return y


class SeparableConv(nn.Module):
  """gan-compression ``SeparableConv2d``: depthwise conv, InstanceNorm, pointwise 1x1.

  The reference hard-codes InstanceNorm and biases inside it, whatever the generator norm.
  Padding is applied by the caller (reflection) so ``padding`` here is the conv's zero pad.
  """

  features: int
  kernel: int = 3
  padding: int = 0

  @nn.compact
  def __call__(self, x):
    c_in = x.shape[-1]
    x = Conv(c_in, self.kernel, padding=self.padding, groups=c_in, name="depthwise")(x)
    x = instance_norm(x)
    return Conv(self.features, 1, name="pointwise")(x)


def dropout(module: nn.Module, x, rate: float, train: bool):
  """nn.Dropout(rate) that only asks for a 'dropout' rng when it would actually drop."""
  if not train or rate <= 0.0:
    return x
  keep = 1.0 - rate
  mask = jax.random.bernoulli(module.make_rng("dropout"), keep, x.shape)
  return jnp.where(mask, x / keep, jnp.zeros_like(x))


def count_params(params) -> int:
  """Number of scalars in a params pytree."""
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))



class ExpansionBlock(nn.Module):
  """OMGD deep-teacher residual block (``ExpansionResnetBlock`` / deep U-Net ``ResnetBlock``).

  Reflection pad 1, 1x1 conv C->4C, norm, ReLU, 3x3 conv (no pad) 4C->4C, norm, ReLU,
  1x1 conv 4C->C, norm, ReLU, dropout, reflection pad 1, 3x3 conv C->C, norm; plus identity.
  The reference pads *before* the first 1x1 conv, so its norm sees the padded border: kept.
  """

  norm: str
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool = True):
    c, bias = x.shape[-1], conv_bias_for(self.norm)
    h = reflect_pad(x, 1)
    h = nn.relu(Norm(self.norm)(Conv(4 * c, 1, use_bias=bias)(h), train=train))
    h = nn.relu(Norm(self.norm)(Conv(4 * c, 3, use_bias=bias)(h), train=train))
    h = nn.relu(Norm(self.norm)(Conv(c, 1, use_bias=bias)(h), train=train))
    h = dropout(self, h, self.dropout_rate, train)
    h = Norm(self.norm)(Conv(c, 3, use_bias=bias)(reflect_pad(h, 1)), train=train)
    return x + h
