"""Network statistics: parameter counts, MACs and parameter fingerprints.

MACs are counted from the jaxpr of a forward pass, so they work for any Flax module (built-in or a
user's own teacher). Convolutions and matrix products are counted, as `torchprofile` counts them
for the papers' figures: a convolution costs `output elements x kernel taps x input channels per
group`; a dot product `output elements x contracted size`. Elementwise work (norms, activations) is
not counted.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import numpy as np

from gankd_jax.models import layers


def count_params(params: Any) -> int:
  """Number of scalars in a parameter pytree (norm scale/bias count, running statistics do not)."""
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))


def param_fingerprint(params: Any) -> list[float]:
  """[sum, sum of squares] over all parameter leaves, in float64, for reproducibility checks."""
  leaves = [np.asarray(jax.device_get(leaf), dtype=np.float64) for leaf in jax.tree_util.tree_leaves(params)]
  return [float(sum(l.sum() for l in leaves)), float(sum((l * l).sum() for l in leaves))]


def _conv_macs(eqn) -> int:
  rhs_shape = eqn.invars[1].aval.shape
  dn = eqn.params["dimension_numbers"]
  kernel_in = rhs_shape[dn.rhs_spec[1]]
  kernel_taps = math.prod(rhs_shape[d] for d in dn.rhs_spec[2:])
  out_size = math.prod(eqn.outvars[0].aval.shape)
  return out_size * kernel_taps * kernel_in


def _dot_macs(eqn) -> int:
  lhs_shape = eqn.invars[0].aval.shape
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  contracted = math.prod(lhs_shape[d] for d in lhs_contract)
  return math.prod(eqn.outvars[0].aval.shape) * contracted


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    candidates = value if isinstance(value, (tuple, list)) else (value,)
    for candidate in candidates:
      if isinstance(candidate, jax.extend.core.ClosedJaxpr):
        yield candidate.jaxpr
      elif isinstance(candidate, jax.extend.core.Jaxpr):
        yield candidate


def executed_macs(jitted: Callable[..., Any], *args) -> float:
  """Multiply-adds of one call of a jitted function as its program does them (XLA's cost
  analysis of the lowered program: flops / 2, elementwise work included, our routings as they
  run), for a benchmark's GMAC/s next to the machine's peak."""
  return float(jitted.lower(*args).cost_analysis()["flops"]) / 2


def jaxpr_macs(jaxpr) -> int:
  """Multiply-accumulates of convolutions and dot products in a jaxpr, nested jaxprs included."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      total += _conv_macs(eqn)
    elif name == "dot_general":
      total += _dot_macs(eqn)
    else:
      repeat = eqn.params.get("length", 1) if name == "scan" else 1
      subs = list(_sub_jaxprs(eqn))
      if name == "cond":  # Only one branch runs: count the most expensive one.
        total += max((jaxpr_macs(s) for s in subs), default=0)
      else:
        total += repeat * sum(jaxpr_macs(s) for s in subs)
  return total


def count_macs(apply_fn: Callable[..., Any], *example_args, with_filters: bool = False) -> int:
  """MACs of one call (see `mac_parts`); `with_filters`: the filters' multiply-adds included."""
  convs, filters = mac_parts(apply_fn, *example_args)
  return convs + filters if with_filters else convs


def mac_parts(apply_fn: Callable[..., Any], *example_args) -> tuple[int, int]:
  """(MACs of the convolutions, matrix products and fully connected layers, MACs of filters
  written as sums of slices) of one call of `apply_fn(*example_args)`; args may be arrays or
  ShapeDtypeStructs.

  Our transposed convs run as sub-pixel convs (4x less work than the textbook form); they are
  traced in the textbook form here so the count is the one the papers report. Instance norm's
  sums run as products with a ones vector (layers.py); traced in the export graph form (plain
  mean / variance) they are not counted as MACs, as torchprofile does not count a norm's.
  The filters are StyleGAN2's FIR resampling, which the StyleGAN-compression papers leave out
  of their counts.
  """
  with (layers.textbook_conv_transpose(), layers.export_graph(),
        layers.count_elementwise_macs() as filters):
    # A fresh function each time: a cached trace would not run the filters' reports again.
    closed = jax.make_jaxpr(lambda *args: apply_fn(*args))(*example_args)
  return jaxpr_macs(closed.jaxpr), filters[0]
