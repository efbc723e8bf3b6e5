"""Images as the pretrained feature networks take them.

Generator outputs and real images are [-1, 1] NHWC; pytorch-fid's InceptionV3 and torchvision's
VGG16 take [0, 1] RGB (each network resizes and standardises inside), grey images repeated to RGB
as pytorch-fid converts them. The distribution evaluators themselves live in
gankd_jax/evaluation.py.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def to_inception_input(images: jax.Array) -> jax.Array:
  """[-1, 1] NHWC (1 or 3 channels) -> [0, 1] RGB."""
  x = (images.astype(jnp.float32) + 1.0) * 0.5
  return jnp.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x[..., :3]
