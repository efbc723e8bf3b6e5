"""CycleGAN teacher losses: adversarial (both directions), cycle consistency and identity.

As bytedance/OMGD trains its CycleGAN teachers (`distillers/cycleganbest_distiller.py`
`forward` / `backward_G_Teacher`, `distillers/base_cycleganbest_distiller.py`
`backward_D_basic`), which is junyanz's `models/cycle_gan_model.py`:

- fake_B = G_A(A), rec_A = G_B(fake_B), fake_A = G_B(B), rec_B = G_A(fake_A);
- gan_a = GAN(D_A(fake_B), real), gan_b = GAN(D_B(fake_A), real);
- cycle_a = lambda_A |rec_A - A|_1, cycle_b = lambda_B |rec_B - B|_1 (means over all elements);
- idt_a = lambda_B lambda_idt |G_A(B) - B|_1 ("G_A should be the identity on B"),
  idt_b = lambda_A lambda_idt |G_B(A) - A|_1; both absent (0, G not run) when lambda_idt is 0;
- the generators minimise the sum of the six terms;
- each discriminator minimises 0.5 (GAN(D(real), real) + GAN(D(fake), fake)), `fake` being what
  the image pool returned (gradient stopped: the reference uses `fake.detach()`).

The generator's adversarial term is the reference's `criterionGAN(pred, True)` *with the
discriminator's real-target form*: for lsgan and vanilla this is the usual generator loss; for
hinge it is mean(relu(1 - D(fake))) (the reference calls GANLoss with its default
`for_discriminator=True`), not gan.py's -mean(D(fake)).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from gankd_jax.losses import gan

ImageFn = Callable[[jax.Array], jax.Array]


def _l1(a: jax.Array, b: jax.Array) -> jax.Array:
  """torch.nn.L1Loss(): mean absolute difference over all elements."""
  return jnp.mean(jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32)))


def _check(gan_mode: str, **weights: float) -> None:
  if gan_mode not in gan.GAN_KINDS:
    raise ValueError(f"cycle losses: unknown gan_mode {gan_mode!r}; expected one of "
                     f"{', '.join(gan.GAN_KINDS)}")
  for name, value in weights.items():
    if value < 0:
      raise ValueError(f"cycle losses: {name} must be >= 0, got {value}")


def generator_losses(g_a: ImageFn, g_b: ImageFn, d_a: ImageFn, d_b: ImageFn,
                     real_a: jax.Array, real_b: jax.Array, *, gan_mode: str = "lsgan",
                     lambda_a: float = 10.0, lambda_b: float = 10.0,
                     lambda_identity: float = 0.5
                     ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
  """(total, terms, images) of one CycleGAN generator step; `g_*` map images to images and
  `d_*` images to logits (closures over their variables). Terms: gan_a, gan_b, cycle_a,
  cycle_b, idt_a, idt_b; images: fake_b, fake_a, rec_a, rec_b."""
  _check(gan_mode, lambda_a=lambda_a, lambda_b=lambda_b, lambda_identity=lambda_identity)
  fake_b = g_a(real_a)
  rec_a = g_b(fake_b)
  fake_a = g_b(real_b)
  rec_b = g_a(fake_a)
  if lambda_identity > 0:
    idt_a = _l1(g_a(real_b), real_b) * lambda_b * lambda_identity
    idt_b = _l1(g_b(real_a), real_a) * lambda_a * lambda_identity
  else:  # The reference skips the two extra generator passes.
    idt_a = idt_b = jnp.zeros((), jnp.float32)
  terms = {
      "gan_a": gan.discriminator_real_loss(gan_mode, d_a(fake_b)),
      "gan_b": gan.discriminator_real_loss(gan_mode, d_b(fake_a)),
      "cycle_a": _l1(rec_a, real_a) * lambda_a,
      "cycle_b": _l1(rec_b, real_b) * lambda_b,
      "idt_a": idt_a,
      "idt_b": idt_b,
  }
  total = sum(terms.values())
  images = {"fake_b": fake_b, "fake_a": fake_a, "rec_a": rec_a, "rec_b": rec_b}
  return total, terms, images


def discriminator_loss(d: ImageFn, real: jax.Array, fake: jax.Array, *,
                       gan_mode: str = "lsgan") -> jax.Array:
  """0.5 (real term + fake term) of discriminator `d` (images -> logits); `fake` is what the
  image pool returned, with its gradient stopped."""
  _check(gan_mode)
  return gan.discriminator_loss(gan_mode, d(real), d(jax.lax.stop_gradient(fake)))
