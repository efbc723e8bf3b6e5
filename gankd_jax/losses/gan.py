"""Adversarial losses (hinge, lsgan, vanilla) as pure functions of discriminator logits.

Semantics follow bytedance/OMGD `models/modules/loss.py::GANLoss` together with the way its
distillers combine the terms (`distillers/base_multiteacher_distiller.py::backward_D_teacher`,
`models/pix2pix_model.py`, `models/cycle_gan_model.py`): the discriminator loss is
`0.5 * (loss(real, target=real) + loss(fake, target=fake))`; every per-term loss is a mean over
all logits.

- hinge:   D real `mean(relu(1 - r))`, D fake `mean(relu(1 + f))`, G `-mean(f)`.
- lsgan:   D real `mean((r - 1)^2)`, D fake `mean(f^2)`, G `mean((f - 1)^2)`.
- vanilla: binary cross-entropy with logits, targets 1 (real) / 0 (fake), G target 1.

Logits may be a single array or a list/tuple of arrays (multi-scale discriminators); a list is
reduced to the mean of the per-array losses, as OMGD's hinge branch does for lists.
"""
from __future__ import annotations

from typing import Callable, Sequence, Union

import jax
import jax.numpy as jnp

Logits = Union[jax.Array, Sequence[jax.Array]]

GAN_KINDS = ("hinge", "lsgan", "vanilla")


def _check_kind(kind: str) -> None:
  if kind not in GAN_KINDS:
    raise ValueError(f"unknown GAN loss kind {kind!r}; expected one of {', '.join(GAN_KINDS)}")


def _as_list(logits: Logits) -> list:
  """Single arrays and lists of arrays share one code path."""
  if isinstance(logits, (list, tuple)):
    if not logits:
      raise ValueError("GAN loss got an empty list of logits")
    return list(logits)
  return [logits]


def _mean_over_outputs(per_output: Callable[[jax.Array], jax.Array], logits: Logits) -> jax.Array:
  terms = [per_output(jnp.asarray(x, jnp.float32)) for x in _as_list(logits)]
  return sum(terms) / len(terms)


def _bce_with_logits(logits: jax.Array, target: float) -> jax.Array:
  """Numerically stable BCE-with-logits, mean reduced (torch.nn.BCEWithLogitsLoss)."""
  per_element = jnp.maximum(logits, 0.0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  return jnp.mean(per_element)


def _real_term(kind: str, logits: jax.Array) -> jax.Array:
  if kind == "hinge":
    return jnp.mean(jax.nn.relu(1.0 - logits))
  if kind == "lsgan":
    return jnp.mean(jnp.square(logits - 1.0))
  return _bce_with_logits(logits, 1.0)


def _fake_term(kind: str, logits: jax.Array) -> jax.Array:
  if kind == "hinge":
    return jnp.mean(jax.nn.relu(1.0 + logits))
  if kind == "lsgan":
    return jnp.mean(jnp.square(logits))
  return _bce_with_logits(logits, 0.0)


def _generator_term(kind: str, logits: jax.Array) -> jax.Array:
  if kind == "hinge":
    return -jnp.mean(logits)
  # lsgan / vanilla: the generator wants its fakes classified as real.
  return _real_term(kind, logits)


def discriminator_real_loss(kind: str, real_logits: Logits) -> jax.Array:
  """The discriminator's loss on real samples alone (OMGD's `loss_D_real`)."""
  _check_kind(kind)
  return _mean_over_outputs(lambda x: _real_term(kind, x), real_logits)


def discriminator_fake_loss(kind: str, fake_logits: Logits) -> jax.Array:
  """The discriminator's loss on generated samples alone (OMGD's `loss_D_fake`)."""
  _check_kind(kind)
  return _mean_over_outputs(lambda x: _fake_term(kind, x), fake_logits)


def discriminator_loss(kind: str, real_logits: Logits, fake_logits: Logits) -> jax.Array:
  """Discriminator loss `0.5 * (real + fake)`, the combination OMGD and pix2pix use."""
  return 0.5 * (discriminator_real_loss(kind, real_logits) + discriminator_fake_loss(kind, fake_logits))


def generator_loss(kind: str, fake_logits: Logits) -> jax.Array:
  """Generator's adversarial loss on the discriminator's logits for its fakes (no 0.5 factor)."""
  _check_kind(kind)
  return _mean_over_outputs(lambda x: _generator_term(kind, x), fake_logits)


# --------------------------------------------------------------------------- Wasserstein (WGAN-GP)
# Gulrajani et al. 2017, "Improved Training of Wasserstein GANs", Algorithm 1: the critic
# minimises D(fake) - D(real) + lambda * (||grad_x D(x_hat)||_2 - 1)^2 with x_hat on random
# interpolates of real and fake samples; the generator minimises -D(fake). Kept apart from
# GAN_KINDS: its discriminator loss has no 0.5 factor and needs the critic itself (the penalty).
WASSERSTEIN_GP = "wgan_gp"


def wasserstein_critic_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """`mean(D(fake)) - mean(D(real))` (the negated Wasserstein estimate)."""
  return jnp.mean(jnp.asarray(fake_logits, jnp.float32)) - jnp.mean(jnp.asarray(real_logits, jnp.float32))


def wasserstein_generator_loss(fake_logits: jax.Array) -> jax.Array:
  """`-mean(D(fake))`."""
  return -jnp.mean(jnp.asarray(fake_logits, jnp.float32))


def gradient_penalty(critic: Callable[[jax.Array], jax.Array], real: jax.Array, fake: jax.Array,
                     rng: jax.Array) -> jax.Array:
  """`mean((||grad_x critic(x_hat)||_2 - 1)^2)`, x_hat = eps real + (1 - eps) fake, eps ~ U[0, 1]
  per example. `critic` maps a batch to one logit per example and must treat examples
  independently (no BatchNorm), so the gradient of the summed logits is per example."""
  eps = jax.random.uniform(rng, (real.shape[0],) + (1,) * (real.ndim - 1), real.dtype)
  interpolates = eps * real + (1.0 - eps) * fake
  grads = jax.grad(lambda x: jnp.sum(critic(x)))(interpolates)
  norms = jnp.sqrt(jnp.sum(jnp.square(grads), axis=tuple(range(1, grads.ndim))) + 1e-12)
  return jnp.mean(jnp.square(norms - 1.0))
