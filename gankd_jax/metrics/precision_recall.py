"""Improved precision and recall (Kynkäänniemi et al. 2019), k = 3, sharded over the mesh.

Each set's manifold is the union of balls around its samples with radius the distance to the
k-th nearest *other* sample of the same set. Precision = fraction of generated samples inside the
real manifold; recall = fraction of real samples inside the generated manifold. Features are
VGG16 fc2+ReLU embeddings (`models/vgg16_fc2.py`), as in the paper and stylegan2-ada's metric.

Distances are squared Euclidean, `|q|^2 + |r|^2 - 2 q.r` at HIGHEST precision, computed for blocks
of query rows sharded over the mesh's data axis, against all reference rows (replicated). The
same function gives the radii and the membership tests, so ties are decided consistently.
Features are kept with `kid.FeatureSample` (bounded memory).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gankd_jax import parallel

HIGHEST = jax.lax.Precision.HIGHEST


def _squared_distances(queries, refs):
  q2 = jnp.sum(queries * queries, axis=1, keepdims=True)
  r2 = jnp.sum(refs * refs, axis=1)[None, :]
  cross = jnp.matmul(queries, refs.T, precision=HIGHEST)
  return jnp.maximum(q2 + r2 - 2.0 * cross, 0.0)


@functools.partial(jax.jit, static_argnums=2)
def _kth_smallest(queries, refs, k):
  """Per query row, the k-th smallest squared distance to `refs` (k counts the row itself)."""
  return -jax.lax.top_k(-_squared_distances(queries, refs), k)[0][:, k - 1]


@jax.jit
def _inside_any_ball(queries, refs, radii):
  return jnp.any(_squared_distances(queries, refs) <= radii[None, :], axis=1)


def _rowwise(fn, queries: np.ndarray, mesh, block_rows: int, *args) -> np.ndarray:
  """`fn(query_block, *args)` over blocks of rows sharded on the mesh, padded to full blocks."""
  block = -(-block_rows // mesh.size) * mesh.size
  rep = parallel.replicated(mesh)
  args = [jax.device_put(a, rep) for a in args]
  out = []
  for start in range(0, len(queries), block):
    rows = queries[start:start + block]
    padded = np.concatenate([rows, np.zeros((block - len(rows), rows.shape[1]), rows.dtype)])
    result = fn(jax.device_put(padded, parallel.batch_sharded(mesh)), *args)
    out.append(np.asarray(jax.device_get(result))[:len(rows)])
  return np.concatenate(out)


def manifold_radii(features, k: int = 3, mesh=None, block_rows: int = 1024) -> np.ndarray:
  """Squared distance of every sample to its k-th nearest other sample of the same set."""
  features = np.asarray(features, np.float32)
  if len(features) <= k:
    raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set, got {len(features)}")
  mesh = mesh or parallel.make_mesh()
  return _rowwise(lambda q, r: _kth_smallest(q, r, k + 1), features, mesh, block_rows, features)


def coverage(queries, refs, radii, mesh=None, block_rows: int = 1024) -> float:
  """Fraction of `queries` inside the union of balls (refs, radii)."""
  mesh = mesh or parallel.make_mesh()
  inside = _rowwise(_inside_any_ball, np.asarray(queries, np.float32), mesh, block_rows,
                    np.asarray(refs, np.float32), np.asarray(radii, np.float32))
  return float(np.mean(inside))


def precision_recall(real, fake, k: int = 3, mesh=None, block_rows: int = 1024) -> dict[str, float]:
  real_radii = manifold_radii(real, k, mesh, block_rows)
  fake_radii = manifold_radii(fake, k, mesh, block_rows)
  return {"precision": coverage(fake, real, real_radii, mesh, block_rows),
          "recall": coverage(real, fake, fake_radii, mesh, block_rows)}
