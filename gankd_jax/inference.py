"""The inference path: a generator compiled for forward passes only.

Training differentiates through every weight on every step, so the training graph keeps weights
as arguments and its layers in forms that are cheap to differentiate. A deployed generator's
weights are fixed: `compile_inference` closes over them, so XLA sees them as constants and folds
the weight-only work once at compile time (the transposed convs' tap slices, the eval batch
norm's rsqrt(var + eps) * scale), and traces the network inside `layers.inference_graph()`,
where layers take the forward-only forms measured fastest (models/layers.py). The outputs equal
the training graph's eval-mode outputs to float rounding (tests/test_inference.py).

`gankd_jax.evaluate` (latency), `gankd_jax.translate`, `gankd_jax.generate` and
`metrics.latency.measure_latency` run generators through it. Closing over the weights keeps them
in the executable: compile once per network and input shape, then call it many times.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from gankd_jax.models import layers


def compile_inference(apply_fn: Callable[..., Any], variables: Any, *,
                      precision: str = "float32", device=None) -> Callable[..., Any]:
  """`f(*inputs) = apply_fn(variables, *inputs)`, jitted with `variables` as constants, traced in
  the inference graph mode and in `precision` (config.precision), on `device` (default: the
  first device)."""
  layers.check_precision(precision)
  constants = jax.tree_util.tree_map(np.asarray, jax.device_get(variables))
  device = device or jax.devices()[0]

  def forward(*inputs):
    with layers.inference_graph(), layers.compute_precision(precision):
      return apply_fn(constants, *inputs)
  jitted = jax.jit(forward)

  def call(*inputs):
    return jitted(*jax.device_put(inputs, device))
  call.jitted = jitted  # Its only arguments are the inputs.
  return call
