"""CycleGAN's teacher losses (Zhu et al. 2017) as the reference `backward_G` / `backward_D_basic`.

LOCAL STAND-IN of the `cycleref` helper's module (contract: /work/wt/CYCLE_CONTRACT.md); the lead
takes that helper's version on merge.

  generator: GAN(D_A(G_A(A))) + GAN(D_B(G_B(B))) + lambda_a |G_B(G_A(A)) - A| + lambda_b
             |G_A(G_B(B)) - B| + lambda_identity (lambda_b |G_A(B) - B| + lambda_a |G_B(A) - A|)
  discriminator: 0.5 (real term + fake term) on the pool's fakes.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from gankd_jax.losses import gan

Net = Callable[[jax.Array], jax.Array]


def _l1(a, b):
  return jnp.mean(jnp.abs(a - b))


def generator_losses(g_a: Net, g_b: Net, d_a: Net, d_b: Net, real_a, real_b, *,
                     gan_mode: str = "lsgan", lambda_a: float = 10.0, lambda_b: float = 10.0,
                     lambda_identity: float = 0.5):
  """(total, terms, images) of the generators' step; D_A judges domain B, D_B domain A."""
  fake_b = g_a(real_a)
  rec_a = g_b(fake_b)
  fake_a = g_b(real_b)
  rec_b = g_a(fake_a)
  terms = {"gan_a": gan.generator_loss(gan_mode, d_a(fake_b)),
           "gan_b": gan.generator_loss(gan_mode, d_b(fake_a)),
           "cycle_a": lambda_a * _l1(rec_a, real_a),
           "cycle_b": lambda_b * _l1(rec_b, real_b)}
  if lambda_identity > 0:
    terms["idt_a"] = lambda_b * lambda_identity * _l1(g_a(real_b), real_b)
    terms["idt_b"] = lambda_a * lambda_identity * _l1(g_b(real_a), real_a)
  total = sum(terms.values())
  return total, terms, {"fake_b": fake_b, "fake_a": fake_a, "rec_a": rec_a, "rec_b": rec_b}


def discriminator_loss(d: Net, real, fake, *, gan_mode: str = "lsgan") -> jax.Array:
  """0.5 (real + fake); `fake` is what the pool returned, seen as a constant."""
  return gan.discriminator_loss(gan_mode, d(real), d(jax.lax.stop_gradient(fake)))
