"""Frechet Inception Distance: streaming Gaussian statistics and pytorch-fid's Frechet distance.

`GaussianStats` accumulates the mean and covariance of feature vectors batch by batch, in float64
on the host, so memory stays `O(dim^2)` whatever the number of samples. Sums are taken around a
shift (the first batch's mean) so the covariance does not lose digits to `E[xx^T] - mu mu^T`
cancellation. The covariance is unbiased (`ddof=1`), as `np.cov` gives pytorch-fid.

`frechet_distance` is pytorch-fid's `calculate_frechet_distance` in float64:
`|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2))`. Only the trace of the square root is
needed, and S1 S2 is similar to the symmetric PSD matrix `S1^1/2 S2 S1^1/2`, so
`tr(sqrtm(S1 S2)) = sum_i sqrt(lambda_i)` over that matrix's eigenvalues: two symmetric
eigendecompositions (LAPACK syevd) instead of scipy's Schur-based `sqrtm` of a general matrix,
several times faster at 2048-d and equal to it within rounding (tests/test_fid_reference.py
checks pytorch-fid's own numbers). pytorch-fid's edge cases are kept: negative eigenvalues from
rounding count as 0 (pytorch-fid takes the real part; sqrt of a tiny negative is imaginary); one
below -1e-6 (an imaginary part above 1e-3, as pytorch-fid's check: a "covariance" that is not
PSD) is an error; a non-finite trace is retried with `eps` added to both diagonals.

Statistics files are pytorch-fid's: `.npz` with `mu` (dim,) and `sigma` (dim, dim).
"""
from __future__ import annotations

import os

import numpy as np
from absl import logging

IMAGINARY_TOLERANCE = 1e-3  # pytorch-fid's bound on the imaginary part of sqrtm(S1 S2)'s diagonal.


class GaussianStats:
  """Streaming mean and covariance of `dim`-dimensional features (float64 on the host)."""

  def __init__(self, dim: int):
    self.dim = dim
    self.count = 0
    self._shift = None
    self._sum = np.zeros(dim, np.float64)
    self._outer = np.zeros((dim, dim), np.float64)

  def update(self, features, mask=None) -> None:
    """Adds the rows of `features` (N, dim) where `mask` (N,) is true (all rows by default)."""
    features = np.asarray(features, np.float64).reshape(-1, self.dim)
    if mask is not None:
      features = features[np.asarray(mask, bool)]
    if not len(features):
      return
    if self._shift is None:
      self._shift = features.mean(axis=0)
    centred = features - self._shift
    self._sum += centred.sum(axis=0)
    self._outer += centred.T @ centred
    self.count += len(features)

  def merge(self, other: "GaussianStats") -> None:
    """Adds another accumulator's samples (same dim)."""
    if other.count == 0:
      return
    if self._shift is None:
      self._shift = other._shift.copy()
    delta = other._shift - self._shift  # Re-centre other's sums on our shift.
    self._sum += other._sum + other.count * delta
    self._outer += (other._outer + np.outer(other._sum, delta) + np.outer(delta, other._sum)
                    + other.count * np.outer(delta, delta))
    self.count += other.count

  def mean(self) -> np.ndarray:
    self._require(1)
    return self._shift + self._sum / self.count

  def covariance(self) -> np.ndarray:
    self._require(2)
    centred_mean = self._sum / self.count
    return (self._outer - self.count * np.outer(centred_mean, centred_mean)) / (self.count - 1)

  def result(self) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) as pytorch-fid computes them."""
    return self.mean(), self.covariance()

  def _require(self, n: int) -> None:
    if self.count < n:
      raise ValueError(f"Gaussian statistics need at least {n} samples, got {self.count}")


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix (negative rounding eigenvalues -> 0)."""
  values, vectors = np.linalg.eigh(sigma)
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """tr(sqrtm(sigma1 @ sigma2)) for covariances, from the eigenvalues of S1^1/2 S2 S1^1/2."""
  root1 = _psd_sqrt((sigma1 + sigma1.T) * 0.5)
  inner = root1 @ sigma2 @ root1
  eigenvalues = np.linalg.eigvalsh((inner + inner.T) * 0.5)
  if eigenvalues.size and eigenvalues.min() < -IMAGINARY_TOLERANCE ** 2:
    raise ValueError(f"FID: imaginary component {np.sqrt(-eigenvalues.min()):.4g} in "
                     "sqrtm(S1 S2) (a covariance that is not positive semi-definite)")
  return float(np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """pytorch-fid's Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), float64."""
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"statistics of different dimensions: mu {mu1.shape} vs {mu2.shape}, "
                     f"sigma {sigma1.shape} vs {sigma2.shape}")
  if not all(np.isfinite(x).all() for x in (mu1, mu2, sigma1, sigma2)):
    raise ValueError("FID: the statistics hold NaN or Inf values")
  diff = mu1 - mu2
  trace_covmean = trace_sqrt_product(sigma1, sigma2)
  if not np.isfinite(trace_covmean):
    logging.warning("FID: singular covariance product; adding %g to the diagonals", eps)
    offset = np.eye(sigma1.shape[0]) * eps
    trace_covmean = trace_sqrt_product(sigma1 + offset, sigma2 + offset)
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_covmean)


def save_stats(path: str, mu: np.ndarray, sigma: np.ndarray) -> None:
  """pytorch-fid's format (`np.savez_compressed(path, mu=, sigma=)`), written atomically."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp.npz")
  np.savez_compressed(tmp, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))
  os.replace(tmp, path)


def load_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) from a pytorch-fid `.npz`; ValueError naming what is wrong."""
  if not os.path.isfile(path):
    raise ValueError(f"statistics file {path} does not exist")
  try:
    with np.load(path, allow_pickle=False) as archive:
      missing = [key for key in ("mu", "sigma") if key not in archive.files]
      if missing:
        raise ValueError(f"{path} has no '{missing[0]}' array (it holds {', '.join(archive.files)}); "
                         "expected pytorch-fid statistics with mu and sigma")
      mu, sigma = archive["mu"], archive["sigma"]
  except (OSError, EOFError) as error:
    raise ValueError(f"{path} is not a readable .npz file ({error})") from None
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not form Gaussian statistics")
  return mu.astype(np.float64), sigma.astype(np.float64)
