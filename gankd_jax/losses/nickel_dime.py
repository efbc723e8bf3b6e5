"""The two losses of NICKEL & DiME (Yeo, Jang, Yoo, ECCV 2024), as the reference code computes them.

DiME (distribution matching in embedding space), training/loss_DD.py Gmain: per micro-batch of the
student's images, the raw first and second moments of their embeddings phi(G_S(z)) (mean over the
batch of phi and of phi**2, not centred) are compared with target moments by mean absolute
difference over the embedding dimensions; the reference weights DINO ResNet-50 20 + 20 and CLIP RN50
15 + 15 and its micro-batch is the per-GPU batch of 8. `moment_matching_loss` is that form;
`mmd_rbf` is the kernel MMD the paper names (unbiased, a sum of RBF kernels of several
bandwidths), between the student's embeddings and the teacher's on the same latents.

NICKEL (knowledge exchange through the discriminator), loss_DD.py Dmain: the student
discriminator, shown the *teacher's* image G_T(z), must reproduce the teacher generator's
intermediate synthesis feature at one resolution; the distance is the MSE of the high-frequency
sub-bands of a J-level Haar wavelet transform (pytorch_wavelets' DWTForward, J=4, "haar", mode
"zero"), summed over levels, the low band discarded. On even sizes that transform equals the
orthonormal 2x2 Haar step below up to the sub-bands' order and sign, which the MSE ignores.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


# --------------------------------------------------------------------------------- NICKEL
def haar_step(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One orthonormal 2-D Haar level of NHWC `x` (even H, W): the low band (N, H/2, W/2, C) and
  the three high bands stacked on a new axis, (N, H/2, W/2, 3, C)."""
  if x.shape[1] % 2 or x.shape[2] % 2:
    raise ValueError(f"haar_step needs even height and width, got {tuple(x.shape[1:3])}")
  a, b = x[:, 0::2, 0::2], x[:, 0::2, 1::2]
  c, d = x[:, 1::2, 0::2], x[:, 1::2, 1::2]
  low = (a + b + c + d) / 2
  highs = jnp.stack([(a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2], axis=3)
  return low, highs


def haar_transform(x: jax.Array, levels: int) -> tuple[jax.Array, list[jax.Array]]:
  """`levels` Haar levels: the final low band and the high bands of each level, finest first."""
  highs = []
  for _ in range(levels):
    x, h = haar_step(x)
    highs.append(h)
  return x, highs


def nickel_loss(teacher_feature: jax.Array, discriminator_feature: jax.Array,
                levels: int = 4) -> jax.Array:
  """sum over levels of mean((H_j(teacher) - H_j(discriminator))**2), high bands only; the
  teacher's feature is a fixed target (no gradient), as the reference detaches it."""
  if teacher_feature.shape != discriminator_feature.shape:
    raise ValueError(f"NICKEL compares equal shapes; teacher feature {teacher_feature.shape} vs "
                     f"discriminator feature {discriminator_feature.shape}")
  _, teacher_highs = haar_transform(jax.lax.stop_gradient(teacher_feature).astype(jnp.float32),
                                    levels)
  _, disc_highs = haar_transform(discriminator_feature.astype(jnp.float32), levels)
  return sum(jnp.mean(jnp.square(t - d)) for t, d in zip(teacher_highs, disc_highs))


# --------------------------------------------------------------------------------- DiME
def raw_moments(embeddings: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean of phi and of phi**2 over the batch axis (not centred), as the reference."""
  embeddings = embeddings.astype(jnp.float32)
  return jnp.mean(embeddings, axis=0), jnp.mean(jnp.square(embeddings), axis=0)


def moment_matching_loss(embeddings: jax.Array, first_target: jax.Array,
                         second_target: jax.Array, *, micro_batch: int = 8,
                         weights: tuple[float, float] = (1.0, 1.0)) -> jax.Array:
  """weights . (mean_d |m1 - first_target|, mean_d |m2 - second_target|), moments over each
  micro-batch of `micro_batch` rows (the reference's per-GPU batch), averaged over them (as data
  parallel training averages the per-GPU gradients). The batch must split evenly."""
  n = embeddings.shape[0]
  if micro_batch <= 0 or n % micro_batch:
    raise ValueError(f"DiME moments: a batch of {n} does not split into micro-batches of "
                     f"{micro_batch}")
  groups = embeddings.reshape(n // micro_batch, micro_batch, -1)
  first, second = jax.vmap(raw_moments)(groups)
  first_term = jnp.mean(jnp.abs(first - first_target), axis=-1)
  second_term = jnp.mean(jnp.abs(second - second_target), axis=-1)
  return jnp.mean(weights[0] * first_term + weights[1] * second_term)


def _squared_distances(x: jax.Array, y: jax.Array) -> jax.Array:
  return (jnp.sum(x * x, axis=1)[:, None] + jnp.sum(y * y, axis=1)[None, :]
          - 2.0 * x @ y.T).clip(min=0.0)


def mmd_rbf(x: jax.Array, y: jax.Array, bandwidths: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
            *, scale_by_dimension: bool = True) -> jax.Array:
  """Unbiased MMD^2 between samples x (n, d) and y (m, d) under k = sum_s exp(-|a-b|^2 / (2 s^2 D)),
  D = d when `scale_by_dimension` (bandwidths relative to the feature scale), else 1. Zero in
  expectation when x and y come from one distribution (it can be negative on a given draw)."""
  n, m = x.shape[0], y.shape[0]
  if n < 2 or m < 2:
    raise ValueError(f"unbiased MMD needs at least 2 samples per side, got {n} and {m}")
  x, y = x.astype(jnp.float32), y.astype(jnp.float32)
  scale = x.shape[1] if scale_by_dimension else 1.0

  def kernel(a, b):
    d2 = _squared_distances(a, b)
    return sum(jnp.exp(-d2 / (2.0 * s * s * scale)) for s in bandwidths)

  kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
  off = lambda k, size: (jnp.sum(k) - jnp.sum(jnp.diag(k))) / (size * (size - 1))
  return off(kxx, n) + off(kyy, m) - 2.0 * jnp.mean(kxy)
