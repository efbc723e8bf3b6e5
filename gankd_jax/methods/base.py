"""What a distillation method is, as the shared training loop sees it.

A method says which networks it builds, which losses it combines and what one fused step updates.
The loop, data, checkpointing, evaluation and the commands know nothing else about it. Everything
a method returns to the loop is a pytree of arrays, so the loop can jit, shard, donate and
checkpoint it.

The life of a method object, as every command drives it:

  method = Method(config)         validates the config only: no file is read, nothing allocated
  frozen = method.load_frozen()   reads what every step needs but never trains (pretrained
                                  feature networks, a teacher from another run or a weights file);
                                  once, by the caller, and only when it will compute
  state = method.init_state(rng, batch, frozen)
                                  all trainable state; may copy from `frozen` (e.g. a student
                                  pruned from its teacher's weights)
  state, metrics = method.train_step(state, batch, frozen, method.phase(step))
                                  one fused update, jitted with the state donated
  outputs = method.generate(state, batch, frozen)
                                  every generator role's images, in inference mode
  state = method.on_eval(state, results)
                                  keeps what an evaluation taught (e.g. the best-FID teacher);
                                  at a step that both evaluates and checkpoints, the evaluation
                                  comes first, so the checkpoint holds the choice

Each trainable network is a `NetState` that owns its optimiser (any optax transformation, chains
included); a learning-rate schedule of the *global* step is one link of that chain
(`scale_by_global_schedule`), so a network updated every n-th step still follows the run's
schedule.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Hashable

import flax
import jax
import optax

PyTree = Any
Batch = dict[str, jax.Array]

INFO, WARNING = "info", "warning"


@dataclasses.dataclass(frozen=True)
class Note:
  """A one-line remark a run prints at start and records in summary.json."""
  text: str
  level: str = INFO  # INFO, or WARNING for something off that the user may want on.


class NetState(flax.struct.PyTreeNode):
  """One trainable network: parameters, running statistics, and its own optimiser."""
  params: PyTree
  batch_stats: PyTree
  opt_state: optax.OptState
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, variables: dict[str, PyTree], tx: optax.GradientTransformation) -> "NetState":
    params = variables["params"]
    return cls(params=params, batch_stats=variables.get("batch_stats", {}),
               opt_state=tx.init(params), tx=tx)

  def variables(self) -> dict[str, PyTree]:
    return {"params": self.params, "batch_stats": self.batch_stats}

  def apply_gradients(self, grads: PyTree, batch_stats: PyTree, *, step: jax.Array) -> "NetState":
    """One optimiser update; `step` is the run's global step (for global schedules)."""
    tx = optax.with_extra_args_support(self.tx)
    updates, opt_state = tx.update(grads, self.opt_state, self.params, global_step=step)
    return self.replace(params=optax.apply_updates(self.params, updates),
                        batch_stats=batch_stats, opt_state=opt_state)


def scale_by_global_schedule(schedule: optax.Schedule) -> optax.GradientTransformationExtraArgs:
  """Scales updates by `-schedule(global_step)`, the step passed to `NetState.apply_gradients`.

  Unlike `optax.scale_by_schedule` (which counts this network's own updates), a network updated
  every `n_dis` steps still follows the schedule of the global step, as the reference's
  per-epoch LambdaLR does.
  """
  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None, *, global_step, **extra_args):
    del params, extra_args
    step_size = -schedule(global_step)
    return jax.tree_util.tree_map(lambda g: step_size * g, updates), state

  return optax.GradientTransformationExtraArgs(init, update)


@dataclasses.dataclass(frozen=True)
class Network:
  """A network for statistics and export: `apply_fn(variables, x)` in inference mode."""
  apply_fn: Callable[[PyTree, jax.Array], Any]
  variables: PyTree
  input_shape: tuple[int, ...]  # One example, NHWC without the batch axis.


class Method(abc.ABC):
  """The contract between a distillation method and the shared loop (see the module docstring)."""

  #: Networks reported in summary.json / model_stats, in order.
  roles: tuple[str, ...] = ()
  #: The roles `generate` returns, in display order.
  generator_roles: tuple[str, ...] = ()
  #: Config fields (dotted) of this method that may change when a run resumes, besides the
  #: loop's own (checkpointing.RESUMABLE_FIELDS): e.g. a schedule's length.
  resumable_fields: frozenset[str] = frozenset()

  def __init__(self, config):
    """Validates `config` (one-line ValueErrors); reads no file and computes nothing."""
    self.config = config

  def load_frozen(self, restoring: bool = False) -> PyTree:
    """Reads the fixed inputs of every step: never trained, never checkpointed (e.g. VGG16
    weights, a teacher from another run). Called once, before `init_state`. `restoring`: the
    state will come from a checkpoint, so what only `init_state` reads (weights to start from)
    is not needed and need not exist any more."""
    del restoring
    return {}

  @abc.abstractmethod
  def init_state(self, rng: jax.Array, batch: Batch, frozen: PyTree) -> PyTree:
    """All trainable state (a pytree of arrays, including the step counter)."""

  def phase(self, step: int) -> Hashable:
    """A static variant of the step for this step number (each variant compiles once)."""
    return None

  @abc.abstractmethod
  def train_step(self, state: PyTree, batch: Batch, frozen: PyTree, phase: Hashable
                 ) -> tuple[PyTree, dict[str, jax.Array]]:
    """One fused update: a pure function of arrays, jitted and donated by the loop."""

  @abc.abstractmethod
  def generate(self, state: PyTree, batch: Batch, frozen: PyTree) -> dict[str, jax.Array]:
    """Inference-mode outputs of every generator role on the batch's input."""

  def real_images(self, batch: Batch) -> jax.Array | dict[str, jax.Array] | None:
    """The real images each generator role's outputs are compared with as a distribution
    (FID, KID, precision / recall), or None when the batch holds none; {set: images} when roles
    are compared with different sets (`compared_with`), e.g. the two domains of unpaired
    translation."""
    return None

  def compared_with(self, role: str) -> str | None:
    """The real set (a key of `real_images`' dict) `role`'s outputs are compared with; None when
    `real_images` returns one array."""
    del role
    return None

  def counted_by(self, name: str | None) -> str | None:
    """The batch key of a 0/1 mask of the evaluation examples that count for `name` (a generator
    role or a real set), beside the padding; None: all of them. E.g. unpaired evaluation batches
    repeat the smaller domain's images, which count once."""
    del name
    return None

  def must_evaluate(self, step: int) -> bool:
    """Whether the loop evaluates (every evaluator that is on) after `step` steps whatever
    `eval_every` says, e.g. at the end of a training stage whose result `on_eval` selects."""
    del step
    return False

  def report(self, state: PyTree) -> dict[str, Any]:
    """What `gankd_jax.evaluate` records beside the metrics (JSON values), e.g. a selection
    history kept in the state."""
    del state
    return {}

  def paired_targets(self, batch: Batch, outputs: dict[str, jax.Array]
                     ) -> dict[str, dict[str, jax.Array]]:
    """Per generator role, the images its output should match pixel by pixel, by name:
    "target" for the ground truth, a teacher's role for how close distillation brought it."""
    return {}

  def on_eval(self, state: PyTree, results: dict[str, dict[str, float]]) -> PyTree:
    """The state after an evaluation (`results`: role -> metric -> value); default unchanged."""
    return state

  @abc.abstractmethod
  def networks(self, state: PyTree, frozen: PyTree) -> dict[str, Network]:
    """The networks by role, for parameter counts, MACs, latency and fingerprints."""

  def sample_columns(self, batch: Batch, outputs: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Image columns (N, H, W, C) of the evaluation sample grid by label, in display order (the
    labels head the grid's columns).

    Default: every generator output in `generator_roles` order, labelled by `role_label`.
    Methods with inputs or targets to show put them around it.
    """
    return {self.role_label(role): outputs[role] for role in self.generator_roles
            if role in outputs}

  def role_label(self, role: str) -> str:
    """A generator role as a sample grid names it ("teacher_wide" -> "teacher wide")."""
    return role.replace("_", " ")

  def active_losses(self) -> dict[str, float]:
    """Loss term name -> weight, for terms that are on (reported in the summary)."""
    return {}

  def notes(self) -> list[Note]:
    """Remarks the run prints at start and records (e.g. disabled terms). Complete only after
    `load_frozen` (what was found on disk)."""
    return []
