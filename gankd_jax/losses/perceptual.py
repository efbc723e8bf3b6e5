"""Feature-space losses on VGG16 activations: Gram matrices, style loss and feature loss.

Semantics follow bytedance/OMGD `distillers/multiteacher_distiller.py` (`gram`,
`backward_G_student`) with the VGG16 taps of `utils/vgg.py` (relu1_2, relu2_2, relu3_3, relu4_3):
- Gram matrix per image: `F F^T / (C * H * W)` with `F` the (C, H*W) feature matrix,
- style loss: sum over the four taps of the *mean* absolute difference of the Gram matrices
  (`F.l1_loss`, mean over batch x C x C),
- feature loss: mean absolute difference of the relu2_2 activations (`Sfeatures[1]`).
The weights (OMGD: style 1e4, feature 1e1) are applied by the caller.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from gankd_jax.losses.image import l1

STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
FEATURE_LAYER = "relu2_2"


def gram_matrix(features: jax.Array) -> jax.Array:
  """(N, C, C) Gram matrices of NHWC features, normalised by C*H*W."""
  if features.ndim != 4:
    raise ValueError(f"gram_matrix needs NHWC features, got shape {features.shape}")
  n, h, w, c = features.shape
  flat = jnp.reshape(jnp.asarray(features, jnp.float32), (n, h * w, c))
  gram = jnp.einsum("npc,npd->ncd", flat, flat, precision=jax.lax.Precision.HIGHEST)
  return gram / (c * h * w)


def _pick(features: Mapping[str, jax.Array], layer: str, side: str) -> jax.Array:
  if layer not in features:
    raise ValueError(f"{side} features have no layer {layer!r}; have {sorted(features)}")
  return features[layer]


def style_loss(student_features: Mapping[str, jax.Array], teacher_features: Mapping[str, jax.Array],
               layers: Sequence[str] = STYLE_LAYERS) -> jax.Array:
  """Sum over `layers` of mean |Gram(student) - Gram(teacher)|."""
  return sum(
      l1(gram_matrix(_pick(student_features, layer, "student")),
         gram_matrix(_pick(teacher_features, layer, "teacher")))
      for layer in layers)


def feature_loss(student_features: Mapping[str, jax.Array], teacher_features: Mapping[str, jax.Array],
                 layer: str = FEATURE_LAYER) -> jax.Array:
  """Mean |student - teacher| of the activations at `layer` (relu2_2 in OMGD)."""
  return l1(_pick(student_features, layer, "student"), _pick(teacher_features, layer, "teacher"))
