"""Inception Score (Salimans et al. 2016) from the FID Inception's 1008 logits, streamed.

IS = exp(E_x KL(p(y|x) || p(y))), computed on `splits` (10) contiguous parts of the samples, as
the original TF code and torch-fidelity do: part i holds samples [i N / splits, (i + 1) N / splits);
the result is the mean and standard deviation over parts. Per part, the mean KL only needs
`sum_x sum_y p log p` and `sum_x p(y|x)`, since E_x KL(p_x || p_bar) = E_x sum p_x log p_x
- sum p_bar log p_bar, so memory stays O(splits x classes) for any number of samples. The number
of samples N must be known up front (it fixes the parts).
"""
from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, xlogy


def _probabilities(logits) -> np.ndarray:
  return np.exp(log_softmax(np.asarray(logits, np.float64), axis=-1))


class InceptionScore:
  """Streaming IS over exactly `num_samples` samples in `splits` contiguous parts."""

  def __init__(self, num_samples: int, num_classes: int = 1008, splits: int = 10):
    if num_samples < splits:
      raise ValueError(f"Inception Score over {splits} splits needs at least {splits} samples, "
                       f"got {num_samples}")
    self.num_samples, self.splits = num_samples, splits
    self.bounds = [i * num_samples // splits for i in range(splits + 1)]
    self.seen = 0
    self._p_sum = np.zeros((splits, num_classes))
    self._plogp_sum = np.zeros(splits)

  def update(self, logits, mask=None) -> None:
    logits = np.asarray(logits)
    if mask is not None:
      logits = logits[np.asarray(mask, bool)]
    if self.seen + len(logits) > self.num_samples:
      raise ValueError(f"more than the declared {self.num_samples} samples")
    p = _probabilities(logits)
    part = np.searchsorted(self.bounds, self.seen + np.arange(len(p)), side="right") - 1
    np.add.at(self._p_sum, part, p)
    np.add.at(self._plogp_sum, part, xlogy(p, p).sum(axis=1))
    self.seen += len(p)

  def result(self) -> tuple[float, float]:
    if self.seen != self.num_samples:
      raise ValueError(f"Inception Score declared {self.num_samples} samples, got {self.seen}")
    counts = np.diff(self.bounds)[:, None]
    p_bar = self._p_sum / counts
    kl = self._plogp_sum / counts[:, 0] - xlogy(p_bar, p_bar).sum(axis=1)
    scores = np.exp(kl)
    return float(scores.mean()), float(scores.std())


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
  """One-shot IS as the original code computes it (the reference the streaming form is tested on)."""
  p = _probabilities(logits)
  n = len(p)
  scores = []
  for i in range(splits):
    part = p[i * n // splits:(i + 1) * n // splits]
    p_bar = part.mean(axis=0, keepdims=True)
    scores.append(np.exp(np.mean(np.sum(xlogy(part, part) - xlogy(part, p_bar), axis=1))))
  return float(np.mean(scores)), float(np.std(scores))
