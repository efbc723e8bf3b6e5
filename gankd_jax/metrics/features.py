"""Frozen feature networks (Inception, VGG16) applied to image batches, sharded over the mesh.

`FeatureExtractor(apply_fn, variables, batch_size, mesh)` compiles `apply_fn(variables, images)`
once for a fixed global batch (rounded up to a multiple of the mesh size): the batch is sharded on
the mesh's data axis, the variables are replicated, and the outputs come back replicated, so every
process reads every row. Short batches are zero-padded and the padding rows dropped on return.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from gankd_jax import parallel


class FeatureExtractor:
  def __init__(self, apply_fn: Callable[[Any, jax.Array], Any], variables: Any, batch_size: int,
               mesh: jax.sharding.Mesh | None = None):
    self.mesh = mesh or parallel.make_mesh()
    self.batch_size = -(-max(int(batch_size), 1) // self.mesh.size) * self.mesh.size
    self.variables = parallel.replicate(variables, self.mesh)
    self._apply = jax.jit(apply_fn, in_shardings=(parallel.replicated(self.mesh),
                                                  parallel.batch_sharded(self.mesh)),
                          out_shardings=parallel.replicated(self.mesh))

  def output_shapes(self, image_shape=(32, 32, 3)) -> Any:
    """The outputs' shapes for a full batch of `image_shape` images (nothing is computed)."""
    images = jax.ShapeDtypeStruct((self.batch_size, *image_shape), np.float32)
    return jax.eval_shape(self._apply, self.variables, images)

  def __call__(self, images) -> Any:
    """Features of up to `batch_size` images (N, H, W, C); a pytree of (N, ...) numpy arrays.

    `images` is a host array holding the whole batch (one process), or a global `jax.Array`
    of exactly `batch_size` rows (any process count, e.g. a training loop's eval outputs).
    """
    if isinstance(images, jax.Array) and images.shape[0] == self.batch_size:
      images = jax.device_put(images, parallel.batch_sharded(self.mesh))  # e.g. from replicated
      return jax.tree_util.tree_map(np.asarray, jax.device_get(self._apply(self.variables, images)))
    images = np.asarray(images, np.float32)
    count = images.shape[0]
    if count > self.batch_size:
      raise ValueError(f"{count} images in one call, more than batch_size {self.batch_size}")
    if count < self.batch_size:
      pad = np.zeros((self.batch_size - count,) + images.shape[1:], np.float32)
      images = np.concatenate([images, pad])
    sharded = jax.device_put(images, parallel.batch_sharded(self.mesh))
    out = jax.device_get(self._apply(self.variables, sharded))
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[:count], out)
