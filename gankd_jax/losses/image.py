"""Pixel-space image losses and similarity measures: SSIM, PSNR, L1 and total variation.

SSIM follows bytedance/OMGD `models/modules/pytorch_ssim.py` (the student's SSIM loss in
`distillers/multiteacher_distiller.py::backward_G_student`):
- 11x11 Gaussian window, sigma 1.5, normalised to sum 1, applied per channel (depthwise),
- zero padding of 5 pixels so the SSIM map has the input size ("same"),
- C1 = 0.01^2 and C2 = 0.03^2 with no data-range scaling, applied to the images as given
  (OMGD feeds generator outputs in [-1, 1] directly, so we do too),
- the result is the mean of the SSIM map over batch, channels and pixels.
The 2-D Gaussian window is the outer product of the 1-D one, so we filter separably
(rows then columns, each a banded matrix product), which is exact and much cheaper.

Total variation follows OMGD's `loss_G_tv`: the *sum* (not mean) of absolute differences
between horizontal and vertical neighbours over the whole batch.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

SSIM_WINDOW_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def gaussian_window_1d(size: int = SSIM_WINDOW_SIZE, sigma: float = SSIM_SIGMA) -> np.ndarray:
  """Normalised 1-D Gaussian taps centred on `size // 2`.

  Normalised in float64 before the cast to float32: with taps summing to 1 as closely as
  float32 allows, `E[x^2] - E[x]^2` cancels cleanly on flat regions (4x smaller error
  against a float64 SSIM than normalising in float32).
  """
  taps = np.array([math.exp(-((i - size // 2) ** 2) / (2.0 * sigma**2)) for i in range(size)], np.float64)
  return (taps / taps.sum()).astype(np.float32)


def _check_image_pair(a: jax.Array, b: jax.Array, what: str) -> None:
  if a.ndim != 4 or a.shape != b.shape:
    raise ValueError(f"{what} needs two NHWC images of the same shape, got {a.shape} and {b.shape}")


def _zero_padded_filter_matrix(length: int, taps: np.ndarray) -> np.ndarray:
  """(length, length) banded matrix M with (M @ v)[i] = sum_k taps[k] v[i + k - pad], v = 0 outside."""
  pad = len(taps) // 2
  matrix = np.zeros((length, length), np.float32)
  for offset, tap in enumerate(taps):
    matrix += np.eye(length, k=offset - pad, dtype=np.float32) * tap
  return matrix


def _separable_blur(x: jax.Array, taps: np.ndarray) -> jax.Array:
  """Filter every channel of NHWC `x` with the window `taps x taps`, zero padded, same size.

  Done as two banded matmuls (rows, then columns): on CPU this is ~6x faster than XLA's
  depthwise convolution for 256x256 images, and it maps onto TPU matrix units.
  HIGHEST precision because SSIM subtracts near-equal moments; bf16 passes would wreck it.
  """
  rows = jnp.asarray(_zero_padded_filter_matrix(x.shape[1], taps), x.dtype)
  cols = jnp.asarray(_zero_padded_filter_matrix(x.shape[2], taps), x.dtype)
  x = jnp.einsum("ij,njwc->niwc", rows, x, precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum("ij,nhjc->nhic", cols, x, precision=jax.lax.Precision.HIGHEST)


def ssim_map(a: jax.Array, b: jax.Array, window_size: int = SSIM_WINDOW_SIZE,
             sigma: float = SSIM_SIGMA) -> jax.Array:
  """Per-pixel, per-channel SSIM map (N, H, W, C) of two NHWC image batches."""
  _check_image_pair(a, b, "ssim")
  a = jnp.asarray(a, jnp.float32)
  b = jnp.asarray(b, jnp.float32)
  # Blur the five moments of every channel in one pass.
  stacked = jnp.concatenate([a, b, a * a, b * b, a * b], axis=-1)
  blurred = _separable_blur(stacked, gaussian_window_1d(window_size, sigma))
  mu_a, mu_b, e_aa, e_bb, e_ab = jnp.split(blurred, 5, axis=-1)
  mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
  var_a, var_b, cov_ab = e_aa - mu_aa, e_bb - mu_bb, e_ab - mu_ab
  numerator = (2.0 * mu_ab + SSIM_C1) * (2.0 * cov_ab + SSIM_C2)
  denominator = (mu_aa + mu_bb + SSIM_C1) * (var_a + var_b + SSIM_C2)
  return numerator / denominator


def ssim_per_image(a: jax.Array, b: jax.Array) -> jax.Array:
  """SSIM of each image pair, shape (N,): the reference's `size_average=False`."""
  return jnp.mean(ssim_map(a, b), axis=(1, 2, 3))


def ssim(a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean SSIM over the batch, as OMGD's `SSIM()(img1, img2)` (the loss is `1 - ssim`)."""
  return jnp.mean(ssim_map(a, b))


def psnr(a: jax.Array, b: jax.Array, data_range: float = 2.0) -> jax.Array:
  """Peak signal-to-noise ratio per image, shape (N,); `data_range` 2 for [-1, 1] images.

  Identical images give +inf.
  """
  _check_image_pair(a, b, "psnr")
  diff = jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32)
  mse = jnp.mean(jnp.square(diff), axis=(1, 2, 3))
  return 10.0 * jnp.log10(data_range**2 / mse)


def l1(a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean absolute error over all elements (torch.nn.L1Loss / F.l1_loss default)."""
  if jnp.shape(a) != jnp.shape(b):
    raise ValueError(f"l1 needs arrays of the same shape, got {jnp.shape(a)} and {jnp.shape(b)}")
  return jnp.mean(jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32)))


def total_variation(images: jax.Array) -> jax.Array:
  """Anisotropic TV of an NHWC batch: sum of |horizontal| + |vertical| neighbour differences."""
  if images.ndim != 4:
    raise ValueError(f"total_variation needs NHWC images, got shape {images.shape}")
  images = jnp.asarray(images, jnp.float32)
  horizontal = jnp.sum(jnp.abs(images[:, :, 1:, :] - images[:, :, :-1, :]))
  vertical = jnp.sum(jnp.abs(images[:, 1:, :, :] - images[:, :-1, :, :]))
  return horizontal + vertical
