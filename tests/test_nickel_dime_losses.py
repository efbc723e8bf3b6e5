"""NICKEL & DiME losses (gankd_jax.losses.nickel_dime): the Haar transform against a direct
computation and its orthogonality, both losses against the reference code's own numbers
(tests/fixtures/nickel_dime/losses.npz, written by tests/fixtures/make_nickel_dime_fixtures.py
from a checkout of SangyeopYeo/NICKEL_AND_DIME: its loss_DD.py DWTForward and moment terms),
NICKEL's gradient reaching the discriminator side only, and the kernel MMD's unbiasedness."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gankd_jax.losses import nickel_dime

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "nickel_dime", "losses.npz")


def _nhwc(nchw):
  return jnp.asarray(np.transpose(nchw, (0, 2, 3, 1)))


def test_haar_step_against_a_direct_computation():
  x = np.random.default_rng(0).standard_normal((2, 4, 6, 3))
  low, highs = nickel_dime.haar_step(jnp.asarray(x))
  # The orthonormal 2-D Haar basis on each 2x2 block [[a, b], [c, d]].
  basis = 0.5 * np.array([[1, 1, 1, 1], [1, 1, -1, -1], [1, -1, 1, -1], [1, -1, -1, 1]])
  for i in range(2):
    for j in range(3):
      block = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(2, 4, 3)  # a, b, c, d
      coeffs = np.einsum("kq,nqc->nkc", basis, block)
      np.testing.assert_allclose(low[:, i, j], coeffs[:, 0], rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(highs[:, i, j], coeffs[:, 1:], rtol=1e-5, atol=1e-6)


def test_haar_transform_is_orthogonal():
  x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 16, 16, 2)))
  low, highs = nickel_dime.haar_transform(x, 3)
  energy = jnp.sum(low ** 2) + sum(jnp.sum(h ** 2) for h in highs)
  np.testing.assert_allclose(energy, jnp.sum(x ** 2), rtol=1e-5)
  assert [h.shape for h in highs] == [(1, 8, 8, 3, 2), (1, 4, 4, 3, 2), (1, 2, 2, 3, 2)]
  with pytest.raises(ValueError, match="even height and width"):
    nickel_dime.haar_step(jnp.zeros((1, 3, 4, 1)))


def test_nickel_loss_matches_the_reference():
  ref = np.load(FIXTURE)
  loss = nickel_dime.nickel_loss(_nhwc(ref["teacher"]), _nhwc(ref["discriminator"]), levels=4)
  np.testing.assert_allclose(loss, ref["nickel"], rtol=1e-5)
  _, t_highs = nickel_dime.haar_transform(_nhwc(ref["teacher"]), 4)
  _, d_highs = nickel_dime.haar_transform(_nhwc(ref["discriminator"]), 4)
  for level, (t, d) in enumerate(zip(t_highs, d_highs)):
    np.testing.assert_allclose(jnp.mean((t - d) ** 2), ref["nickel_level_mse"][level], rtol=1e-5)


def test_nickel_gradient_reaches_the_discriminator_side_only():
  rng = np.random.default_rng(2)
  teacher = jnp.asarray(rng.standard_normal((1, 8, 8, 2)), jnp.float32)
  disc = jnp.asarray(rng.standard_normal((1, 8, 8, 2)), jnp.float32)
  g_teacher, g_disc = jax.grad(nickel_dime.nickel_loss, argnums=(0, 1))(teacher, disc, 2)
  assert not np.any(g_teacher)
  assert np.any(g_disc)
  # The low band is discarded: a constant offset (pure low band) changes nothing.
  np.testing.assert_allclose(nickel_dime.nickel_loss(teacher, disc + 3.0, 3),
                             nickel_dime.nickel_loss(teacher, disc, 3), rtol=1e-5)
  with pytest.raises(ValueError, match="equal shapes"):
    nickel_dime.nickel_loss(teacher, disc[:, :4], 2)


def test_moment_matching_matches_the_reference_terms():
  ref = np.load(FIXTURE)
  weights = (20.0, 15.0)
  loss = nickel_dime.moment_matching_loss(jnp.asarray(ref["embeddings"]), ref["first_target"],
                                          ref["second_target"], micro_batch=8, weights=weights)
  expected = np.mean(weights[0] * ref["first_terms"] + weights[1] * ref["second_terms"])
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  with pytest.raises(ValueError, match="micro-batches of 8"):
    nickel_dime.moment_matching_loss(jnp.zeros((12, 4)), jnp.zeros(4), jnp.zeros(4))


def test_mmd_against_a_direct_computation_and_unbiased():
  rng = np.random.default_rng(3)
  x, y = rng.standard_normal((5, 3)), rng.standard_normal((4, 3)) + 0.5
  bandwidths = (0.5, 2.0)

  def k(a, b):
    return sum(np.exp(-np.sum((a - b) ** 2) / (2 * s * s * 3)) for s in bandwidths)

  xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
  yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
  xy = sum(k(a, b) for a in x for b in y) / 20
  np.testing.assert_allclose(nickel_dime.mmd_rbf(jnp.asarray(x), jnp.asarray(y), bandwidths),
                             xx + yy - 2 * xy, rtol=1e-5)
  # Equal distributions: the unbiased estimate averages to 0 (within 4 standard errors over
  # 400 seeded draws); a shifted distribution is clearly positive.
  draws = jax.random.normal(jax.random.PRNGKey(0), (400, 2, 8, 4))
  same = np.asarray(jax.vmap(lambda d: nickel_dime.mmd_rbf(d[0], d[1]))(draws))
  assert abs(same.mean()) < 4 * same.std() / np.sqrt(len(same))
  shifted = np.asarray(jax.vmap(lambda d: nickel_dime.mmd_rbf(d[0], d[1] + 1.0))(draws))
  assert shifted.mean() > 10 * shifted.std() / np.sqrt(len(shifted))
  with pytest.raises(ValueError, match="at least 2 samples"):
    nickel_dime.mmd_rbf(jnp.zeros((1, 3)), jnp.zeros((4, 3)))
