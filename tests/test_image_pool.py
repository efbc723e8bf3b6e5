"""The CycleGAN image pool against its definition (gankd_jax/image_pool.py): the reference's own
`ImagePool.query` replayed on recorded draws (fixture from tests/fixtures/make_cycle_fixtures.py),
a NumPy re-statement of the reference loop on our draws, the swap frequency, the fill phase, a
later image of a batch getting an earlier one of the same batch, jit, and pool_size 0."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gankd_jax.image_pool import ImagePool, pool_draws, query, query_with_draws

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "cycle", "image_pool.npz")


def reference_query(stored: list, images: np.ndarray, pool_size: int, uniforms, slots):
  """The reference loop (utils/image_pool.py) in NumPy, with given per-image draws."""
  out = []
  for image, uniform, slot in zip(images, uniforms, slots):
    if len(stored) < pool_size:
      stored.append(image)
      out.append(image)
    elif uniform > 0.5:
      out.append(stored[slot])
      stored[slot] = image
    else:
      out.append(image)
  return np.stack(out)


def test_replays_the_reference_query():
  with np.load(FIXTURE) as archive:
    data = {k: archive[k] for k in archive.files}
  pool = ImagePool.create(int(data["pool_size"]), (2, 2, 1))
  swaps = 0
  for step in range(int(data["steps"])):
    images = data[f"images_{step}"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
    pool, out = query_with_draws(pool, images, data[f"uniforms_{step}"], data[f"slots_{step}"])
    expected = data[f"out_{step}"].transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(np.asarray(out), expected, err_msg=f"batch {step}")
    swaps += int(np.sum(np.any(expected != images, axis=(1, 2, 3))))
  assert swaps >= 3  # the fixture exercises swaps, not only the fill and keep branches
  assert int(pool.count) == int(data["pool_size"])


def test_equals_numpy_restatement_on_our_draws():
  pool_size, shape = 4, (3, 2, 2)
  pool = ImagePool.create(pool_size, shape)
  stored: list = []
  rng = jax.random.PRNGKey(3)
  step = jax.jit(query)
  for index, batch in enumerate((3, 1, 3, 3, 1, 3)):  # two batch sizes: two compiles
    rng, key, draw = jax.random.split(rng, 3)
    images = np.asarray(jax.random.normal(draw, (batch,) + shape))
    uniforms, slots = (np.asarray(a) for a in pool_draws(key, batch, pool_size))
    expected = reference_query(stored, images, pool_size, uniforms, slots)
    pool, out = step(pool, images, key)
    np.testing.assert_array_equal(np.asarray(out), expected, err_msg=f"batch {index}")
    np.testing.assert_array_equal(np.asarray(pool.images)[:len(stored)], np.stack(stored))


def test_fill_returns_and_stores_the_new_images_in_order():
  pool = ImagePool.create(3, (1, 1, 1))
  images = jnp.arange(5, dtype=jnp.float32).reshape(5, 1, 1, 1) + 1
  # Draws that would swap, were the pool full: the first three images only fill it.
  new_pool, out = query_with_draws(pool, images[:3], jnp.ones(3), jnp.zeros(3, jnp.int32))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(images[:3]))
  np.testing.assert_array_equal(np.asarray(new_pool.images).ravel(), [1, 2, 3])
  assert int(new_pool.count) == 3
  # Full: no swap at uniform 0.5 exactly (the reference's strict `> 0.5`), a swap above it.
  new_pool, out = query_with_draws(new_pool, images[3:], jnp.array([0.5, 0.75]),
                                   jnp.array([2, 0], jnp.int32))
  np.testing.assert_array_equal(np.asarray(out).ravel(), [4, 1])
  np.testing.assert_array_equal(np.asarray(new_pool.images).ravel(), [5, 2, 3])
  assert int(new_pool.count) == 3


def test_a_later_image_gets_an_earlier_one_of_its_own_batch():
  pool = ImagePool.create(2, (1, 1, 1))
  images = jnp.array([10.0, 20.0, 30.0, 40.0]).reshape(4, 1, 1, 1)
  # 10 and 20 fill the pool; 30 swaps with slot 1 (holding 20, of this batch); 40 swaps with
  # slot 1 again, now holding 30.
  pool, out = query_with_draws(pool, images, jnp.array([0.9, 0.9, 0.9, 0.6]),
                               jnp.array([0, 0, 1, 1], jnp.int32))
  np.testing.assert_array_equal(np.asarray(out).ravel(), [10, 20, 20, 30])
  np.testing.assert_array_equal(np.asarray(pool.images).ravel(), [10, 40])


def test_swap_frequency_and_slots_are_uniform():
  pool_size, n = 5, 4000
  pool = ImagePool.create(pool_size, (1, 1, 1))
  pool, _ = query(pool, -jnp.ones((pool_size, 1, 1, 1)), jax.random.PRNGKey(0))
  images = jnp.arange(n, dtype=jnp.float32).reshape(n, 1, 1, 1)
  pool, out = jax.jit(query)(pool, images, jax.random.PRNGKey(1))
  swapped = np.asarray(out).ravel() != np.asarray(images).ravel()
  # Binomial(4000, 0.5): sd 0.008; 0.04 is five of them.
  assert abs(swapped.mean() - 0.5) < 0.04
  # A swapped image comes from the pool: an initial one (-1) or an earlier image of the batch.
  got = np.asarray(out).ravel()[swapped]
  assert np.all((got == -1) | (got < np.flatnonzero(swapped)))
  _, slots = pool_draws(jax.random.PRNGKey(1), n, pool_size)
  counts = np.bincount(np.asarray(slots), minlength=pool_size)
  assert counts.min() > 0.8 * n / pool_size and counts.max() < 1.2 * n / pool_size
  assert int(pool.count) == pool_size


def test_same_key_same_result_and_draws_independent_of_state():
  pool = ImagePool.create(3, (2, 2, 3))
  images = jax.random.normal(jax.random.PRNGKey(5), (6, 2, 2, 3))
  key = jax.random.PRNGKey(9)
  eager = query(pool, images, key)
  jitted = jax.jit(query)(pool, images, key)
  for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  other = query(pool, images, jax.random.PRNGKey(10))[1]
  assert not np.array_equal(np.asarray(eager[1]), np.asarray(other))


def test_pool_size_zero_returns_the_input():
  pool = ImagePool.create(0, (4, 4, 3))
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 3))
  new_pool, out = jax.jit(query)(pool, images, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(images))
  assert new_pool.images.shape == (0, 4, 4, 3) and int(new_pool.count) == 0


def test_no_gradient_flows_through_the_pool():
  pool = ImagePool.create(1, (1, 1, 1))
  grad = jax.grad(lambda x: jnp.sum(query(pool, x, jax.random.PRNGKey(0))[1]))(
      jnp.ones((2, 1, 1, 1)))
  np.testing.assert_array_equal(np.asarray(grad), 0.0)


def test_bad_input():
  with pytest.raises(ValueError, match="pool_size"):
    ImagePool.create(-1, (4, 4, 3))
  with pytest.raises(ValueError, match="image_shape"):
    ImagePool.create(2, (4, 4))
  with pytest.raises(ValueError, match=r"do not fit"):
    query(ImagePool.create(2, (4, 4, 3)), jnp.zeros((1, 4, 4, 1)), jax.random.PRNGKey(0))
