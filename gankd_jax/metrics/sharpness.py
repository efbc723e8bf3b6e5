"""Sharpness as the Variance of the Laplacian (VoL), used by Aguinaldo et al. (2019).

As `cv2.Laplacian(gray, cv2.CV_64F).var()`: the image in [-1, 1] goes to [0, 255], to grey with
ITU-R 601 weights (0.299, 0.587, 0.114; single-channel images as they are), is filtered by the
3x3 Laplacian [[0, 1, 0], [1, -4, 1], [0, 1, 0]] with OpenCV's default border (reflect-101,
NumPy's 'reflect'), and the population variance of the result over pixels is taken. Per image, so
it is a per-example evaluator the loop averages.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

GREY_WEIGHTS = (0.299, 0.587, 0.114)


def variance_of_laplacian(images: jax.Array) -> jax.Array:
  """(N, H, W, C) images in [-1, 1] -> (N,) VoL on the 0..255 grey scale."""
  x = (images.astype(jnp.float32) + 1.0) * 127.5
  grey = x[..., 0] if x.shape[-1] == 1 else jnp.tensordot(x[..., :3], jnp.asarray(GREY_WEIGHTS), axes=1)
  padded = jnp.pad(grey, ((0, 0), (1, 1), (1, 1)), mode="reflect")
  laplacian = (padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2]
               + padded[:, 1:-1, 2:] - 4.0 * grey)
  return jnp.var(laplacian, axis=(1, 2))


def per_example_metrics(outputs: dict[str, jax.Array], batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """`<role>/vol` for every generated output."""
  del batch
  return {f"{role}/vol": variance_of_laplacian(images) for role, images in outputs.items()}
