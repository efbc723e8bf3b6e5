"""Measured inference latency: batch 1, compiled, on one device, median after warm-up.

MACs predict speed poorly (memory traffic, layer shapes, the backend's kernels), so the speed-up
the papers claim is measured: `apply_fn(variables, x)` is compiled by the inference path
(gankd_jax/inference.py: weights as constants, forward-only layer forms) for a (1, H, W, C) input
on the first device, run `warmup` times (compilation and caches), then timed `iters` times with
`block_until_ready`; the median is robust to a busy machine's outliers.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from gankd_jax.inference import compile_inference


def median_seconds(fn, *args, iters: int, warmup: int = 1) -> float:
  """Median wall seconds of `fn(*args)` (blocked until ready) over `iters` calls after `warmup`
  untimed ones (the first compiles)."""
  for _ in range(max(warmup, 1)):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return sorted(times)[len(times) // 2]


def measure_latency(apply_fn: Callable[[Any, jax.Array], Any], variables: Any,
                    input_shape: tuple[int, ...], *, warmup: int = 3, iters: int = 20,
                    device=None, precision: str = "float32") -> dict[str, float]:
  """{"median_ms", "min_ms", "iters"} of one batch-1 call of `apply_fn` in `precision`."""
  device = device or jax.devices()[0]
  fn = compile_inference(apply_fn, variables, precision=precision, device=device)
  x = jax.device_put(jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, *input_shape)),
                                 jnp.float32), device)
  for _ in range(max(warmup, 1)):
    jax.block_until_ready(fn(x))
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(x))
    times.append(time.perf_counter() - start)
  return {"median_ms": float(np.median(times) * 1e3), "min_ms": float(np.min(times) * 1e3),
          "iters": iters}
