"""Paired-translation quality: PSNR / SSIM / L1 of every generator against the target, and of the
student against each teacher (how close distillation brought it)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gankd_jax.losses import image


def _compare(a: jax.Array, b: jax.Array, prefix: str) -> dict[str, jax.Array]:
  return {
      f"{prefix}/psnr": image.psnr(a, b),
      f"{prefix}/ssim": image.ssim_per_image(a, b),
      f"{prefix}/l1": jnp.mean(jnp.abs(a - b), axis=(1, 2, 3)),
  }


def per_example_metrics(outputs: dict[str, jax.Array], batch: dict[str, jax.Array]
                        ) -> dict[str, jax.Array]:
  metrics = {}
  for role, generated in outputs.items():
    metrics.update(_compare(generated, batch["B"], role))
  if "student" in outputs:
    for role in outputs:
      if role.startswith("teacher"):
        metrics.update(_compare(outputs["student"], outputs[role], f"student_vs_{role}"))
  return metrics
