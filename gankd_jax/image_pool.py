"""The CycleGAN history of generated images ("image pool"), as device state.

CycleGAN (Zhu et al. 2017, following Shrivastava et al. 2017) updates each discriminator on a
history of generated images rather than only on the latest generator's. The reference
(`utils/image_pool.py` `ImagePool.query` in junyanz/pytorch-CycleGAN-and-pix2pix, copied by
gan-compression and bytedance/OMGD) walks the batch image by image:

- while fewer than `pool_size` images are stored, the image is appended and returned as is;
- once full, with probability 1/2 (`uniform(0, 1) > 0.5`) a stored image drawn uniformly is
  returned and the new image takes its slot, otherwise the new image is returned (not stored).

So a later image of a batch can get an earlier image of the same batch that was just stored.
`pool_size` 0 returns the input unchanged.

Here the pool is a `flax.struct.PyTreeNode` (stored images and how many slots are filled), so
it lives in the training state, is checkpointed with it, and a resumed run continues with the
same history. `query` is pure and jittable: the per-image walk is a `lax.scan`, and every
image's draws come from its own key of `jax.random.split(rng, batch)` (a fixed draw order, so
the result depends only on the pool, the images and `rng`). `query_with_draws` takes the draws
explicitly, which lets tests replay the reference's own random numbers.
"""
from __future__ import annotations

from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

# The reference swaps when `random.uniform(0, 1) > SWAP_THRESHOLD` (strictly).
SWAP_THRESHOLD = 0.5


class ImagePool(flax.struct.PyTreeNode):
  """Stored images (pool_size, H, W, C) float32 and the number of filled slots (int32)."""

  images: jax.Array
  count: jax.Array

  @property
  def pool_size(self) -> int:
    return self.images.shape[0]

  @classmethod
  def create(cls, pool_size: int, image_shape: Sequence[int]) -> ImagePool:
    """An empty pool of `pool_size` images of shape `image_shape` (H, W, C)."""
    if not isinstance(pool_size, (int, np.integer)) or pool_size < 0:
      raise ValueError(f"image pool: pool_size must be an integer >= 0, got {pool_size!r}")
    shape = tuple(image_shape)
    if len(shape) != 3 or any(not isinstance(s, (int, np.integer)) or s <= 0 for s in shape):
      raise ValueError(f"image pool: image_shape must be (H, W, C) positive integers, got {shape}")
    return cls(images=jnp.zeros((int(pool_size),) + tuple(int(s) for s in shape), jnp.float32),
               count=jnp.zeros((), jnp.int32))


def _check_batch(pool: ImagePool, images) -> None:
  if images.ndim != 4 or tuple(images.shape[1:]) != tuple(pool.images.shape[1:]):
    raise ValueError(f"image pool: images of shape {tuple(images.shape)} do not fit a pool of "
                     f"(N,) + {tuple(pool.images.shape[1:])} images")


def pool_draws(rng: jax.Array, batch: int, pool_size: int) -> tuple[jax.Array, jax.Array]:
  """Per image of the batch: (uniform in [0, 1), slot in [0, pool_size)), from its own key.
  Drawn for every image (also those that only fill the pool), so the draws do not depend on
  the pool's state."""
  def one(key):
    k_swap, k_slot = jax.random.split(key)
    return (jax.random.uniform(k_swap, (), jnp.float32),
            jax.random.randint(k_slot, (), 0, max(pool_size, 1), jnp.int32))
  return jax.vmap(one)(jax.random.split(rng, batch))


def query_with_draws(pool: ImagePool, images: jax.Array, uniforms: jax.Array,
                     slots: jax.Array) -> tuple[ImagePool, jax.Array]:
  """`query` with given draws: image i swaps when `uniforms[i] > 0.5` (once the pool is full)
  with the stored image `slots[i]`."""
  if pool.pool_size == 0:
    return pool, images
  _check_batch(pool, images)
  # The reference stores and returns `image.data`: no gradient flows through the pool.
  images = jax.lax.stop_gradient(jnp.asarray(images, pool.images.dtype))

  def step(carry, inputs):
    stored, count = carry
    image, uniform, slot = inputs
    filling = count < pool.pool_size
    swap = jnp.logical_and(jnp.logical_not(filling), uniform > SWAP_THRESHOLD)
    index = jnp.where(filling, count, slot)
    previous = stored[index]
    keep_new = jnp.logical_or(filling, swap)
    stored = stored.at[index].set(jnp.where(keep_new, image, previous))
    out = jnp.where(swap, previous, image)
    return (stored, count + filling.astype(count.dtype)), out

  (stored, count), out = jax.lax.scan(
      step, (pool.images, pool.count),
      (images, jnp.asarray(uniforms, jnp.float32), jnp.asarray(slots, jnp.int32)))
  return pool.replace(images=stored, count=count), out


def query(pool: ImagePool, images: jax.Array, rng: jax.Array) -> tuple[ImagePool, jax.Array]:
  """(new pool, images for the discriminator): the reference `ImagePool.query`, image by image
  in batch order; `images` (N, H, W, C). A pool of size 0 returns `images` unchanged."""
  if pool.pool_size == 0:
    return pool, images
  _check_batch(pool, images)
  uniforms, slots = pool_draws(rng, images.shape[0], pool.pool_size)
  return query_with_draws(pool, images, uniforms, slots)
