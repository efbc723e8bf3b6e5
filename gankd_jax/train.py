"""The shared training loop: any method, any data, one jitted fused step over a device mesh.

`train_and_evaluate(config, workdir)` validates everything before compiling anything, then
initialises or resumes, trains with periodic logging / evaluation / checkpoints, and writes
`workdir/summary.json`. The loop knows no method: it asks the method for its frozen inputs, its
state, its step variants (`phase`), its generators' outputs and its networks (methods/base.py), and
evaluates through the one evaluation pass (evaluation.py). At a step that both evaluates and
checkpoints, the evaluation (and `Method.on_eval`) comes first, so the checkpoint holds what the
evaluation changed.

Multi-host: every process runs this same loop on its share of each global batch; only process 0
writes files other than checkpoints (which orbax writes collectively). Faults: SIGTERM stops every
process at one agreed step with a checkpoint; a NaN/Inf loss or parameter stops the run before
anything broken is saved; a killed run resumes from its latest committed checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from jax.experimental import multihost_utils

from gankd_jax import (checkpointing, data, evaluation, parallel, preflight, runs, stats, visualize,
                       xla_cpu)
from gankd_jax.data import pipeline
from gankd_jax.methods import Method, build_method
from gankd_jax.methods.base import WARNING
from gankd_jax.models import layers

SUMMARY_FILE = "summary.json"
EVALS_FILE = "evals.jsonl"


class NonFiniteLossError(RuntimeError):
  """A loss or parameter became NaN/Inf; the last good checkpoint is kept."""


@dataclasses.dataclass
class Run:
  """Everything validated and built before any compute is spent."""
  config: ml_collections.ConfigDict
  workdir: str
  method: Method
  mesh: jax.sharding.Mesh
  train_data: Any
  eval_data: Any
  resuming: bool
  training_reals: Any = None  # The training images as eval examples, if a reference side wants them.


def prepare(config: ml_collections.ConfigDict, workdir: str) -> Run:
  """Checks the config, data, architectures and workdir; raises a one-line ValueError if bad."""
  for note in preflight.check(config):  # Also selects the data source a data.path implies.
    logging.info(note)
  for field in ("num_train_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
    if config[field] <= 0:
      raise ValueError(f"{field} must be positive, got {config[field]}")
  checkpointing.check_best_metric(config.best_checkpoint_metric)
  mesh = parallel.make_mesh(config.num_devices or None)
  parallel.check_batch_size(config.batch_size, mesh)
  if config.batch_size % jax.process_count():
    raise ValueError(f"batch_size={config.batch_size} must be divisible by the number of processes "
                     f"({jax.process_count()})")
  specs = evaluation.parse(config.eval.evaluators)
  train_data = data.build_dataset(config.data, "train")
  for note in preflight.fit_to_data(config, train_data):  # Before the method reads the fields.
    logging.info(note)
  method = build_method(config)
  evaluation.check_roles(specs, method.generator_roles)
  eval_data = data.build_dataset(config.data, "eval")
  training_reals = (data.build_dataset(config.data, "train_eval")
                    if evaluation.wants_training_reals(specs) else None)
  resuming = checkpointing.check_workdir_config(workdir, config, method.resumable_fields)
  return Run(config, workdir, method, mesh, train_data, eval_data, resuming, training_reals)


# --------------------------------------------------------------------------------- compiled parts
def make_train_step(method: Method, mesh, phase):
  """The fused step for one phase: state donated, batch sharded on `data`, state replicated."""
  @functools.partial(layers.with_precision, layers.precision_of(method.config))
  def step(state, batch, frozen):
    return method.train_step(state, batch, frozen, phase)
  rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  return jax.jit(step, in_shardings=(rep, shard, rep), out_shardings=(rep, rep), donate_argnums=(0,))


# --------------------------------------------------------------------------------- evaluation
def evaluate(run: Run, state, frozen, step: int, writer, evaluators: evaluation.Evaluators,
             eval_steps: dict) -> dict[str, Any]:
  """The evaluators due at `step`, over the evaluation split, as an evals.jsonl record; process 0
  writes the scalars and the sample grid."""
  cfg = run.config.eval
  key = tuple(spec.name for spec in evaluators.specs)
  if key not in eval_steps:  # One compiled step per set of per-example evaluators.
    eval_steps[key] = evaluation.make_eval_step(run.method, run.mesh, evaluators.specs)
  result = evaluation.evaluation_pass(
      run.method, state, frozen, run.eval_data, run.mesh, evaluators, batch_size=cfg.batch_size,
      max_examples=cfg.max_examples, num_sample_images=cfg.num_sample_images,
      eval_step=eval_steps[key], training_reals=run.training_reals)
  if jax.process_index() == 0:
    writer.write_scalars(step, {f"eval/{k}": v for k, v in _flat(result.results).items()})
    grid = visualize.image_grid(result.columns, labels=result.labels)
    visualize.save_png(grid, checkpointing.as_path(run.workdir) / "samples" / f"step_{step:07d}.png")
    writer.write_images(step, {"samples": grid[None]})
  logging.info("eval at step %d over %d examples: %s", step, result.num_examples,
               evaluation.format_results(result.results))
  skipped = {"skipped": list(evaluators.notes)} if evaluators.notes else {}
  return {"step": step, "num_examples": result.num_examples, **result.results, **skipped}


def _flat(result: dict[str, dict[str, float]]) -> dict[str, float]:
  return {f"{group}/{k}": v for group, values in result.items() for k, v in values.items()}


def read_evals(workdir: str) -> list[dict[str, Any]]:
  path = checkpointing.as_path(workdir) / EVALS_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class EvalHistory:
  """The run's evaluations in memory; process 0 mirrors them to evals.jsonl.

  On resume process 0 reads the earlier ones (up to the resumed step: later ones belong to work
  that was lost and is redone). The file is rewritten whole on each evaluation (GCS cannot append).
  """

  def __init__(self, workdir: str, start_step: int):
    self.path = checkpointing.as_path(workdir) / EVALS_FILE
    self.is_writer = jax.process_index() == 0
    earlier = read_evals(workdir) if self.is_writer and start_step > 0 else []
    self.records = [r for r in earlier if r["step"] <= start_step]

  def add(self, record: dict[str, Any]) -> None:
    self.records = [r for r in self.records if r["step"] < record["step"]] + [record]
    if self.is_writer:
      checkpointing.write_text_atomically(
          self.path, "".join(json.dumps(r) + "\n" for r in self.records))


# --------------------------------------------------------------------------------- summary
def network_stats(method: Method, state, frozen) -> dict[str, dict[str, Any]]:
  result = {}
  for role, net in method.networks(state, frozen).items():
    example = jax.ShapeDtypeStruct((1, *net.input_shape), jnp.float32)
    result[role] = {
        "params": stats.count_params(net.variables["params"]),
        "macs": stats.count_macs(net.apply_fn, net.variables, example),
        "param_fingerprint": stats.param_fingerprint(net.variables["params"]),
    }
  return result


def write_summary(run: Run, state, frozen, step: int, wall_time_s: float, steps_this_run: int,
                  evals: list[dict[str, Any]]) -> dict:
  summary = {
      "method": run.config.method,
      "networks": network_stats(run.method, state, frozen),
      "eval_start": evals[0] if evals else None,
      "eval_end": evals[-1] if evals else None,
      "steps": step,
      "wall_time_s": round(wall_time_s, 3),
      "steps_this_run": steps_this_run,
      "losses": run.method.active_losses(),
      "notes": [note.text for note in run.method.notes()],
      "data": {"name": run.config.data.name, "train_examples": len(run.train_data),
               "eval_examples": len(run.eval_data), "image_size": run.train_data.image_shape[0]},
      "devices": run.mesh.size,
      "processes": jax.process_count(),
      # Bitwise results hold on one machine; across machines these decide them (README).
      "environment": xla_cpu.environment(),
  }
  if jax.process_index() == 0:
    checkpointing.write_text_atomically(checkpointing.as_path(run.workdir) / SUMMARY_FILE,
                                        json.dumps(summary, indent=2))
  return summary


# --------------------------------------------------------------------------------- the loop
class _StopSignal:
  """Turns SIGTERM into a request to checkpoint and stop (see `_stop_agreed`)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: leave signals alone.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    logging.warning("SIGTERM: will checkpoint and stop at the next agreed step")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _stop_agreed(requested: bool, sync_point: bool) -> bool:
  """Whether to stop after this step; every process gets the same answer.

  One process: its own flag, at every step. Several: the OR of all processes' flags, gathered only
  at sync points (logging and checkpoint steps, the same on every process), as a gather costs a
  host round trip and stalls asynchronous dispatch. So a run of several processes stops within
  `log_every` steps of a SIGTERM: keep that shorter than the preemption grace period.
  """
  if jax.process_count() == 1:
    return requested
  if not sync_point:
    return False
  return bool(np.any(multihost_utils.process_allgather(np.int32(requested))))


def _check_finite_losses(first_step: int, per_step: list[dict[str, float]]) -> None:
  """Raises naming the first non-finite loss and its step (`per_step[0]` is `first_step`)."""
  for offset, values in enumerate(per_step):
    for name in sorted(values):
      if not np.isfinite(values[name]):
        raise NonFiniteLossError(f"loss '{name}' is {values[name]} at step {first_step + offset}; "
                                 "stopped, the last good checkpoint is kept")


def _float_leaves(tree) -> list[tuple[Any, jax.Array]]:
  return [(path, x) for path, x in jax.tree_util.tree_leaves_with_path(tree)
          if jnp.issubdtype(x.dtype, jnp.inexact)]


@jax.jit
def _finite_leaves(tree) -> jax.Array:
  """One flag per floating-point leaf of `tree`: one reduction each, one small transfer."""
  return jnp.stack([jnp.all(jnp.isfinite(x)) for _, x in _float_leaves(tree)])


def _check_finite_state(step: int, state) -> None:
  """Raises naming the first parameter (or optimiser / running statistic) that is not finite."""
  finite = np.asarray(jax.device_get(_finite_leaves(state)))
  if not finite.all():
    path = _float_leaves(state)[int(np.argmin(finite))][0]
    raise NonFiniteLossError(f"state leaf {jax.tree_util.keystr(path)} is not finite at step "
                             f"{step}; stopped, the last good checkpoint is kept")


@jax.jit
def _poisoned(batch):
  """Fault injection (config.debug_nan_step): the batch times NaN, so every loss becomes NaN."""
  return jax.tree_util.tree_map(
      lambda x: x * jnp.nan if jnp.issubdtype(x.dtype, jnp.inexact) else x, batch)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_after_steps: int | None = None) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the summary written to summary.json.

  `stop_after_steps`: stop (with a checkpoint) once that many steps are done in total, as a
  preemption would; a later call resumes.
  """
  return train(prepare(config, workdir), stop_after_steps=stop_after_steps)


def _init_or_restore(run: Run, manager, frozen):
  """The latest committed checkpoint on this run's mesh (any process count), else a fresh state,
  created directly with replicated sharding (no host copy of big parameters)."""
  latest = manager.latest_step()
  if latest is None:
    example = {k: jnp.zeros(v.shape, v.dtype)
               for k, v in runs.example_batch(run.config.data).items()}
    init = jax.jit(run.method.init_state, out_shardings=parallel.replicated(run.mesh))
    return init(jax.random.key(run.config.seed), example, frozen), 0
  abstract = runs.abstract_state(run.method, run.config.data, frozen, parallel.replicated(run.mesh))
  logging.info("resuming from %s at step %d", manager.directory, latest)
  return checkpointing.restore(manager, latest, abstract), latest


def train(run: Run, *, stop_after_steps: int | None = None) -> dict:
  """The loop proper, on a prepared (validated) run."""
  with _StopSignal() as stop_signal:
    return _train(run, stop_signal, stop_after_steps)


def _train(run: Run, stop_signal: _StopSignal, stop_after_steps: int | None) -> dict:
  config, workdir = run.config, run.workdir
  # Everything, also when resuming: deciding "resuming" here would open a CheckpointManager, whose
  # cross-process barriers race with other processes' own (restore_run, alone, skips init inputs).
  frozen = parallel.replicate(run.method.load_frozen(), run.mesh)
  for note in run.method.notes():
    (logging.warning if note.level == WARNING else logging.info)("%s", note.text)
  checkpointing.write_config(workdir, config)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  best_metric = config.best_checkpoint_metric
  manager = checkpointing.checkpoint_manager(workdir, config.keep_checkpoints, best_metric)
  state, start_step = _init_or_restore(run, manager, frozen)

  evaluators = evaluation.build(config.eval, run.mesh, config.eval.batch_size,
                                layers.precision_of(config))
  for note in evaluators.notes:
    logging.warning("%s", note)  # Once per run; also recorded in every evals.jsonl record.
  eval_steps = {}

  def evaluate_if_due(state, step: int, force: bool = False):
    if run.method.must_evaluate(step):  # Every evaluator that is on (e.g. for a selection).
      due = evaluators.due(step, 1, config.num_train_steps, every_step=True)
      force = True
    else:
      due = evaluators.due(step, config.eval_every, config.num_train_steps)
    if not due.specs and not force:
      return state
    record = evaluate(run, state, frozen, step, writer, due, eval_steps)
    evals.add(record)
    return run.method.on_eval(state, {k: v for k, v in record.items() if isinstance(v, dict)})

  evals = EvalHistory(workdir, start_step)
  train_steps = {}
  end_step = config.num_train_steps if stop_after_steps is None else min(
      stop_after_steps, config.num_train_steps)

  if start_step == 0:
    state = evaluate_if_due(state, 0, force=True)
  train_iter = pipeline.GlobalBatchIterator(
      run.train_data, config.batch_size, seed=config.seed, start_step=start_step,
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_threads=config.data.num_threads)
  progress = Progress(config.num_train_steps, start_step)
  pending_metrics = []
  start_time = time.time()
  step = saved_step = start_step
  stop = False
  try:
    while step < end_step and not stop:
      phase = run.method.phase(step)
      compiling = phase not in train_steps
      if compiling:
        train_steps[phase] = make_train_step(run.method, run.mesh, phase)
        jax.block_until_ready(pending_metrics)  # Earlier steps' time is steady time.
        progress.start_compiling(step)
      batch = parallel.global_batch(next(train_iter), run.mesh)
      if step + 1 == config.debug_nan_step:
        batch = _poisoned(batch)
      state, step_metrics = train_steps[phase](state, batch, frozen)
      pending_metrics.append(step_metrics)
      step += 1
      if compiling:  # Timed to its end, so the steady rate starts after it.
        jax.block_until_ready(step_metrics)
        logging.info("step %d compiled and ran in %.1f s (left out of the steady rate)", step,
                     progress.compiled(step))
      checkpoint_now = step % config.checkpoint_every == 0 or step == end_step
      sync_point = step % config.log_every == 0 or checkpoint_now
      if sync_point:
        # Checked before every checkpoint, so a non-finite state is never saved.
        per_step = jax.device_get(pending_metrics)
        _check_finite_losses(step - len(per_step) + 1, per_step)
        pending_metrics = []
        means = _mean_metrics(per_step)
        logging.info("%s", progress.line(step, means))
        rate = progress.steps_per_s()
        writer.write_scalars(step, {**{f"train/{k}": v for k, v in means.items()},
                                    **({"steps_per_sec": rate} if rate else {})})
      stop = _stop_agreed(stop_signal.requested, sync_point)
      if checkpoint_now or (stop and step != saved_step):
        # Before the evaluation too: nothing is evaluated (or kept by on_eval) from a broken state.
        _check_finite_losses(step - len(pending_metrics) + 1, jax.device_get(pending_metrics))
        _check_finite_state(step, state)
      # Evaluated before the checkpoint of the same step, so a resume keeps what on_eval chose.
      # A SIGTERM skips the periodic evaluation (the grace period is short), never the last nor
      # one the method must have (its on_eval decides what the resumed run does).
      if step == config.num_train_steps or not stop or run.method.must_evaluate(step):
        state = evaluate_if_due(state, step, force=step % config.eval_every == 0
                                or step == config.num_train_steps)
      if checkpoint_now or (stop and step != saved_step):
        latest = evals.records[-1] if evals.records and evals.records[-1]["step"] == step else None
        checkpointing.save(manager, step, state,
                           checkpointing.checkpoint_metrics(best_metric, latest) if best_metric
                           else None)
        saved_step = step
  finally:
    train_iter.close()
    manager.wait_until_finished()
    writer.flush()

  wall_time = time.time() - start_time
  if stop:
    logging.warning("stopped at step %d on SIGTERM with a checkpoint; run the same command again "
                    "to resume", step)
  summary = write_summary(run, state, frozen, step, wall_time, step - start_step, evals.records)
  writer.flush()
  manager.close()
  return summary


class Progress:
  """The console's progress line: an ETA from the steady step rate.

  A step that compiles (the first, and the first of each new `Method.phase`) takes minutes where
  the others take seconds; counting it would put the ETA far off for most of a short run. Such a
  step is timed on its own (`start_compiling` .. `compiled`) and left out of the rate; the rest
  (steps with their evaluations and checkpoints) is the steady rate. `clock` is injectable for
  tests.
  """

  def __init__(self, total: int, start_step: int, clock=time.monotonic):
    self.total, self._clock = total, clock
    self._last_step, self._last_time = start_step, clock()
    self._steady_steps, self._steady_s = 0, 0.0

  def _advance(self, step: int, steady: bool) -> float:
    now = self._clock()
    seconds = now - self._last_time
    if steady:
      self._steady_steps += step - self._last_step
      self._steady_s += seconds
    self._last_step, self._last_time = step, now
    return seconds

  def start_compiling(self, step: int) -> None:
    """Before the step after `step` compiles: the time up to here is steady."""
    self._advance(step, steady=True)

  def compiled(self, step: int) -> float:
    """After compiling step `step` finished: its seconds, left out of the rate."""
    return self._advance(step, steady=False)

  def update(self, step: int) -> None:
    """Steps up to `step` are done; everything since the last call was steady."""
    self._advance(step, steady=True)

  def steps_per_s(self) -> float | None:
    """The steady rate so far; None before any steady step."""
    return self._steady_steps / self._steady_s if self._steady_steps and self._steady_s > 0 else None

  def eta_s(self) -> float | None:
    """Seconds to `total` at the steady rate, from the last step seen; None without a rate."""
    rate = self.steps_per_s()
    return (self.total - self._last_step) / rate if rate else None

  def line(self, step: int, means: dict[str, float]) -> str:
    """`update(step)`, then the progress line with the losses' totals."""
    self.update(step)
    rate, eta = self.steps_per_s(), self.eta_s()
    losses = " ".join(f"{k}={v:.4g}" for k, v in sorted(means.items()) if k.endswith("total"))
    timing = (f"{rate:.2f} steps/s  ETA {int(eta) // 60}m{int(eta) % 60:02d}s" if rate
              else "ETA after more steps")
    return f"step {step}/{self.total}  {timing}  {losses}"


def _mean_metrics(per_step: list[dict[str, Any]]) -> dict[str, float]:
  """Averages each metric over the steps that reported it (phases report different sets)."""
  sums, counts = {}, {}
  for metrics_of_step in per_step:
    for name, value in metrics_of_step.items():
      sums[name] = sums.get(name, 0.0) + float(value)
      counts[name] = counts.get(name, 0) + 1
  return {name: sums[name] / counts[name] for name in sums}
