"""Kernel Inception Distance (Binkowski et al. 2018), as clean-fid / stylegan2-ada / torch-fidelity.

Polynomial kernel k(x, y) = (x.y / d + 1)^3 on Inception pool features; the unbiased MMD^2
estimate (kernel diagonals left out of the within-set terms) on `num_subsets` random subsets of
`m = min(n_real, n_fake, subset_size)` samples of each set, drawn without replacement; reported
as the mean and standard deviation over subsets.

KID needs samples, not moments. `FeatureSample` keeps them streamed with bounded memory: every
row until `capacity`, then a uniform reservoir sample (seeded), which is still an unbiased input to
the estimator. With fewer samples than `capacity` the result equals the one-shot computation.
"""
from __future__ import annotations

import numpy as np


class FeatureSample:
  """Streamed rows of features kept up to `capacity` (reservoir sampling beyond)."""

  def __init__(self, dim: int, capacity: int = 50_000, seed: int = 0):
    self.dim, self.capacity = dim, capacity
    self.seen = 0
    self._rows = np.zeros((0, dim), np.float32)
    self._rng = np.random.default_rng(seed)

  def update(self, features, mask=None) -> None:
    features = np.asarray(features, np.float32).reshape(-1, self.dim)
    if mask is not None:
      features = features[np.asarray(mask, bool)]
    room = self.capacity - len(self._rows)
    if room > 0:
      self._rows = np.concatenate([self._rows, features[:room]])
      self.seen += min(room, len(features))
      features = features[room:]
    for row in features:  # Algorithm R: row t replaces a kept one with probability cap / t.
      self.seen += 1
      slot = self._rng.integers(self.seen)
      if slot < self.capacity:
        self._rows[slot] = row

  @property
  def rows(self) -> np.ndarray:
    return self._rows


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """(x.y / d + 1)^3, products in float32 BLAS, the cube in float64."""
  dot = np.asarray(x, np.float32) @ np.asarray(y, np.float32).T
  return (dot.astype(np.float64) / x.shape[1] + 1.0) ** 3


def unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 of equal-size samples x, y under the polynomial kernel."""
  m = len(x)
  k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
  within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
  return float(within - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(real, fake, num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
  """(mean, std) of the unbiased MMD^2 over random subsets (clean-fid's `kernel_distance`)."""
  real, fake = np.asarray(real), np.asarray(fake)
  m = min(len(real), len(fake), subset_size)
  if m < 2:
    raise ValueError(f"KID needs at least 2 samples in each set, got {len(real)} and {len(fake)}")
  rng = np.random.default_rng(seed)
  values = [unbiased_mmd2(fake[rng.choice(len(fake), m, replace=False)],
                          real[rng.choice(len(real), m, replace=False)])
            for _ in range(num_subsets)]
  return float(np.mean(values)), float(np.std(values))
