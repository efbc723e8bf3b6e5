"""Run directories as inputs: one restore helper, and the one teacher source every method uses.

  restore_run(workdir)   config.json + latest committed checkpoint -> config, method, step,
                         state, frozen inputs (used by `gankd_jax.evaluate`, the experiments and
                         teacher sources)
  TeacherSource          a teacher given as a run directory (`teacher.workdir`: one of our runs)
                         or a weights file (`teacher.weights`: a Flax variables .npz, e.g.
                         converted from PyTorch); validated without reading arrays, loaded once

The training loop restores its own run through the same `abstract_state`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from gankd_jax import checkpointing, data, parallel
from gankd_jax.data import unconditional

PyTree = Any


# --------------------------------------------------------------------------------- shapes
def example_batch(data_config) -> dict[str, jax.ShapeDtypeStruct]:
  """One example batch (batch size 1) of the data a config names, as shapes: nothing is read."""
  if data_config.name in data.UNCONDITIONAL_NAMES:
    shape = unconditional.image_shape(data_config)
    return {"image": jax.ShapeDtypeStruct((1, *shape), jnp.float32),
            "index": jax.ShapeDtypeStruct((1,), jnp.int32)}
  size = int(data_config.crop_size)
  return {key: jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32) for key in ("A", "B")}


def image_size(data_config) -> int:
  """The side of the images a data config yields."""
  return int(data_config.get("crop_size", None) or data_config.get("image_size"))


def abstract_state(method, data_config, frozen: PyTree, sharding) -> PyTree:
  """The method's state as shapes placed with `sharding` (the target of a restore)."""
  example = example_batch(data_config)
  shapes = jax.eval_shape(method.init_state, jax.random.key(0), example, frozen)
  return jax.tree_util.tree_map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


# --------------------------------------------------------------------------------- restore
@dataclasses.dataclass
class RestoredRun:
  workdir: str
  config: ml_collections.ConfigDict
  method: Any
  step: int
  state: PyTree
  frozen: PyTree
  mesh: jax.sharding.Mesh


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was started with; one-line ValueError if it has none or no checkpoint."""
  config = ml_collections.ConfigDict(checkpointing.read_config(workdir))
  if checkpointing.latest_step(workdir) is None:
    raise ValueError(f"{workdir} has no committed checkpoint (has its training saved one yet?)")
  return config


def restore_run(workdir: str, *, mesh: jax.sharding.Mesh | None = None) -> RestoredRun:
  """The run's latest committed checkpoint, replicated over `mesh` (default: a mesh of the run's
  device count, config.num_devices; 0: all), with its method's frozen inputs loaded.

  Checks the workdir, its config.json and a committed checkpoint first, each a one-line
  ValueError."""
  from gankd_jax.methods import build_method
  config = read_run_config(workdir)
  mesh = mesh or parallel.make_mesh(config.get("num_devices") or None)
  method = build_method(config)
  frozen = method.load_frozen(restoring=True)
  abstract = abstract_state(method, config.data, frozen, parallel.replicated(mesh))
  step, state = checkpointing.restore_latest(workdir, abstract)
  return RestoredRun(workdir, config, method, step, state, parallel.replicate(frozen, mesh), mesh)


# --------------------------------------------------------------------------------- teachers
def save_variables(path: str, variables: PyTree) -> None:
  """A network's Flax variables as an .npz of '/'-joined paths (the `teacher.weights` format)."""
  flat = traverse_util.flatten_dict(jax.device_get(variables), sep="/")
  tmp = f"{path}.{os.getpid()}.tmp.npz"
  np.savez(tmp, **{key: np.asarray(value) for key, value in flat.items()})
  os.replace(tmp, path)


def load_variables(path: str, expected: PyTree, what: str) -> PyTree:
  """Variables from `save_variables`' format, checked leaf by leaf against `expected` (shapes);
  the first missing or misshapen leaf is a one-line ValueError."""
  if not os.path.isfile(path):
    raise ValueError(f"{what}: no such file: {path}")
  try:
    with np.load(path, allow_pickle=False) as archive:
      stored = {key: archive[key] for key in archive.files}
  except (OSError, ValueError, EOFError) as error:
    raise ValueError(f"{what}: {path} is not a variables .npz ({error})") from None
  wanted = traverse_util.flatten_dict(expected, sep="/")
  for key, shape in wanted.items():
    if key not in stored:
      raise ValueError(f"{what}: {path} has no '{key}' (expected shape {tuple(shape.shape)})")
    if tuple(stored[key].shape) != tuple(shape.shape):
      raise ValueError(f"{what}: '{key}' in {path} has shape {tuple(stored[key].shape)}, "
                       f"expected {tuple(shape.shape)} for this architecture")
  return traverse_util.unflatten_dict(
      {key: jnp.asarray(stored[key], shape.dtype) for key, shape in wanted.items()}, sep="/")


@dataclasses.dataclass(frozen=True)
class TeacherSource:
  """Where a method's frozen teacher comes from: `teacher.workdir` (a run of ours) or
  `teacher.weights` (a variables .npz). `role` names the network within a run."""
  workdir: str = ""
  weights: str = ""
  role: str = "teacher"

  @classmethod
  def from_config(cls, teacher_config, role: str = "teacher") -> "TeacherSource | None":
    workdir = teacher_config.get("workdir", "") or ""
    weights = teacher_config.get("weights", "") or ""
    if workdir and weights:
      raise ValueError("set one of teacher.workdir (a run directory) and teacher.weights (a "
                       f"variables file), not both (got {workdir} and {weights})")
    if not (workdir or weights):
      return None
    if weights and not os.path.isfile(weights):
      raise ValueError(f"teacher.weights: no such file: {weights}")
    return cls(workdir, weights, role)

  def describe(self) -> str:
    return f"run {self.workdir}" if self.workdir else f"weights file {self.weights}"

  def run_config(self) -> ml_collections.ConfigDict | None:
    """The teacher run's config, for the method to check against its own (None for a weights
    file); then `require_checkpoint`."""
    if not self.workdir:
      return None
    return ml_collections.ConfigDict(checkpointing.read_config(self.workdir))

  def require_checkpoint(self) -> None:
    if self.workdir:
      read_run_config(self.workdir)  # One line when the run has no committed checkpoint.

  def load(self, expected: PyTree) -> PyTree:
    """The teacher's inference variables, checked against `expected` (abstract variables)."""
    if self.weights:
      return load_variables(self.weights, expected, "teacher.weights")
    # On this process's first device only: every process reads the teacher itself.
    local = jax.sharding.Mesh(np.asarray(jax.local_devices()[:1]), (parallel.DATA_AXIS,))
    restored = restore_run(self.workdir, mesh=local)
    networks = restored.method.networks(restored.state, restored.frozen)
    if self.role not in networks:
      raise ValueError(f"teacher.workdir {self.workdir} has no '{self.role}' network "
                       f"(it has {', '.join(networks)})")
    return jax.device_get(networks[self.role].variables)
