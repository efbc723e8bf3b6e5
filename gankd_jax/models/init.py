"""pix2pix's `init_weights('normal', 0.02)`, applied to a whole variable tree at once.

The reference initialises every network with one pass over its modules: conv / transposed conv /
linear weights N(0, gain), biases 0, BatchNorm weights N(1, gain) and biases 0. Doing the same
from the variable shapes with ONE random draw keeps XLA's compile of the initialisation to
seconds (a separate draw per leaf costs ~70 ms of compile each on a CPU).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp


def _is_batchnorm_scale(path) -> bool:
  return jax.tree_util.keystr(path[-1:]) == "['scale']"


def reference_init(key: jax.Array, variables_shape: Any, gain: float = 0.02) -> Any:
  """Variables of the given shapes: params as pix2pix initialises them, running stats 0 / 1."""
  def leaf_kind(path):
    name = jax.tree_util.keystr(path[-1:])[2:-2]
    collection = jax.tree_util.keystr(path[:1])[2:-2]
    if collection == "batch_stats":
      return "one" if name == "var" else "zero"
    if name == "bias":
      return "zero"
    return "normal"  # kernels, and norm scales (around 1)

  flat, treedef = jax.tree_util.tree_flatten_with_path(variables_shape)
  kinds = [leaf_kind(path) for path, _ in flat]
  sizes = [math.prod(leaf.shape) if kind == "normal" else 0 for kind, (_, leaf) in zip(kinds, flat)]
  noise = gain * jax.random.normal(key, (sum(sizes),), jnp.float32)
  leaves, offset = [], 0
  for kind, size, (path, leaf) in zip(kinds, sizes, flat):
    if kind == "normal":
      value = noise[offset:offset + size].reshape(leaf.shape)
      offset += size
      if _is_batchnorm_scale(path):
        value = value + 1.0
    else:
      value = jnp.full(leaf.shape, 1.0 if kind == "one" else 0.0)
    leaves.append(value.astype(leaf.dtype))
  return jax.tree_util.tree_unflatten(treedef, leaves)


def init_variables(module, key: jax.Array, *args, **kwargs) -> Any:
  """`module.init(...)`'s variables, traced for shapes only, then `reference_init`."""
  shapes = jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a, **kwargs), *args)
  return reference_init(key, shapes)
