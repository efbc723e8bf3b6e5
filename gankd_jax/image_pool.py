"""CycleGAN's history of generated images (Shrivastava et al. 2017), as device state.

LOCAL STAND-IN of the `cycleref` helper's module (contract: /work/wt/CYCLE_CONTRACT.md, section
"Image pool"); the lead takes that helper's version on merge.

`query` follows the reference `ImagePool.query` per image, in batch order: while the pool is not
full, the image is stored and returned; once full, with probability 1/2 a random stored image is
returned and replaced by the new one, else the new image is returned. Pure JAX, so the pool lives
in the checkpointed state and a resumed run draws the same swaps.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp


class ImagePool(flax.struct.PyTreeNode):
  images: jax.Array  # (pool_size, H, W, C) float32
  count: jax.Array   # int32: how many slots are filled

  @classmethod
  def create(cls, pool_size: int, image_shape) -> "ImagePool":
    return cls(images=jnp.zeros((pool_size, *image_shape), jnp.float32),
               count=jnp.zeros((), jnp.int32))


def query(pool: ImagePool, images: jax.Array, rng: jax.Array) -> tuple[ImagePool, jax.Array]:
  """(new pool, the images the discriminator sees); pool_size 0 returns `images`."""
  size = pool.images.shape[0]
  if size == 0:
    return pool, images

  def one(carry, inputs):
    stored, count = carry
    image, key = inputs
    swap_key, index_key = jax.random.split(key)
    swap = jax.random.uniform(swap_key) > 0.5
    index = jax.random.randint(index_key, (), 0, size)
    full = count >= size
    slot = jnp.where(full, index, count)
    old = stored[slot]
    write = jnp.logical_or(~full, swap)
    stored = stored.at[slot].set(jnp.where(write, image, old))
    out = jnp.where(full & swap, old, image)
    return (stored, jnp.minimum(count + 1, size)), out

  keys = jax.random.split(rng, images.shape[0])
  (stored, count), out = jax.lax.scan(one, (pool.images, pool.count), (images.astype(jnp.float32), keys))
  return pool.replace(images=stored, count=count), out.astype(images.dtype)
