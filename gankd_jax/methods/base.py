"""What a distillation method is, as the shared training loop sees it.

A method says which networks it builds, which losses it combines and what one fused step updates.
The loop, data, checkpointing and metrics know nothing else about it. Everything a method returns
to the loop is a pytree of arrays, so the loop can jit, shard, donate and checkpoint it.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Hashable

import flax
import jax
import jax.numpy as jnp
import optax

PyTree = Any
Batch = dict[str, jax.Array]


@flax.struct.dataclass
class NetState:
  """One trainable network: its parameters, running statistics and optimiser state."""
  params: PyTree
  batch_stats: PyTree
  opt_state: optax.OptState

  def variables(self) -> dict[str, PyTree]:
    return {"params": self.params, "batch_stats": self.batch_stats}


@dataclasses.dataclass(frozen=True)
class Network:
  """A network for statistics and export: `apply_fn(variables, x)` in inference mode."""
  apply_fn: Callable[[PyTree, jax.Array], Any]
  variables: PyTree
  input_shape: tuple[int, ...]  # One example, NHWC without the batch axis.


def linear_decay_schedule(base_lr: float, constant_steps: int, decay_steps: int) -> optax.Schedule:
  """Constant for `constant_steps`, then linear decay to zero over `decay_steps` (pix2pix 'linear')."""
  def schedule(step):
    decayed = jnp.maximum(0, step - constant_steps) / max(decay_steps, 1)
    return base_lr * jnp.clip(1.0 - decayed, 0.0, 1.0)
  return schedule


def adam_with_global_schedule(b1: float, b2: float) -> optax.GradientTransformation:
  """Adam whose learning rate is set from the global step on each update.

  Networks updated every `n_dis` steps still follow the schedule of the global step (as the
  reference's per-epoch LambdaLR does), not the count of their own updates.
  """
  return optax.inject_hyperparams(optax.adam)(learning_rate=0.0, b1=b1, b2=b2)


def apply_update(net: NetState, grads: PyTree, new_batch_stats: PyTree,
                 optimizer: optax.GradientTransformation, learning_rate: jax.Array) -> NetState:
  opt_state = net.opt_state._replace(
      hyperparams={**net.opt_state.hyperparams, "learning_rate": learning_rate})
  updates, opt_state = optimizer.update(grads, opt_state, net.params)
  return NetState(optax.apply_updates(net.params, updates), new_batch_stats, opt_state)


class Method(abc.ABC):
  """The contract between a distillation method and the shared loop."""

  #: Roles reported in summary.json / model_stats, in order.
  roles: tuple[str, ...] = ()

  @abc.abstractmethod
  def init_state(self, rng: jax.Array, batch: Batch) -> PyTree:
    """All trainable state (a pytree of arrays, including the step counter)."""

  def frozen_variables(self) -> PyTree:
    """Fixed inputs of every step that are never trained nor checkpointed (e.g. VGG weights)."""
    return {}

  def phase(self, step: int) -> Hashable:
    """A static variant of the step for this step number (each variant compiles once)."""
    return None

  @abc.abstractmethod
  def train_step(self, state: PyTree, batch: Batch, frozen: PyTree, phase: Hashable
                 ) -> tuple[PyTree, dict[str, jax.Array]]:
    """One fused update: a pure function of arrays, jitted and donated by the loop."""

  @abc.abstractmethod
  def generate(self, state: PyTree, batch: Batch, frozen: PyTree = None) -> dict[str, jax.Array]:
    """Inference-mode outputs of every generator role on the batch's input (`frozen`: as in
    `train_step`, e.g. a teacher read from another run)."""

  @abc.abstractmethod
  def networks(self, state: PyTree) -> dict[str, Network]:
    """The networks by role, for parameter counts, MACs and fingerprints."""

  def sample_columns(self, batch: Batch, outputs: dict[str, jax.Array]) -> list[jax.Array]:
    """Image columns (N, H, W, C) of the evaluation sample grid, in display order.

    Default: every generator output, in `roles` order (pytrees come back with sorted keys).
    Methods with inputs or targets to show put them around it.
    """
    return [outputs[role] for role in self.roles if role in outputs]

  def active_losses(self) -> dict[str, float]:
    """Loss term name -> weight, for terms that are on (reported in the summary)."""
    return {}

  def notes(self) -> list[str]:
    """One-line remarks the run should print at start and record (e.g. disabled terms)."""
    return []
