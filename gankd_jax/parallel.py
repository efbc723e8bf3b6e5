"""Device mesh and shardings: data parallelism with `jax.jit` over a one-axis `data` mesh.

The batch is sharded over `data`, every state (parameters, optimiser moments, running statistics)
is replicated. Global batches are assembled from each process's local part, so the same code runs
on one CPU, eight virtual CPU devices, a GPU node or a TPU pod.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh over the first `num_devices` global devices (all of them by default)."""
  devices = jax.devices()
  if num_devices is not None:
    if not 0 < num_devices <= len(devices):
      raise ValueError(f"num_devices={num_devices} but {len(devices)} devices are available")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
  if global_batch_size <= 0 or global_batch_size % mesh.size:
    raise ValueError(
        f"batch_size={global_batch_size} must be a positive multiple of the number of devices ({mesh.size})")


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Builds the global batch arrays from this process's local rows (batch axis sharded on `data`)."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))
