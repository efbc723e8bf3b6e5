"""The shared training loop: any method, any data, one jitted fused step over a device mesh.

`train_and_evaluate(config, workdir)` validates everything before compiling anything, then
initialises or resumes, trains with periodic logging / evaluation / checkpoints, and writes
`workdir/summary.json`. The loop knows no method: it asks the method for its state, its step
variants (`phase`), its generators' outputs and its networks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from gankd_jax import checkpointing, data, metrics, parallel, stats, visualize
from gankd_jax.methods import Method, build_method
from gankd_jax.data import pipeline

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


def prepare(config: ml_collections.ConfigDict, workdir: str) -> Run:
  """Checks the config, data, architectures and workdir; raises a one-line ValueError if bad."""
  for field in ("num_train_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
    if config[field] <= 0:
      raise ValueError(f"{field} must be positive, got {config[field]}")
  mesh = parallel.make_mesh(config.num_devices or None)
  parallel.check_batch_size(config.batch_size, mesh)
  if config.batch_size % jax.process_count():
    raise ValueError(f"batch_size={config.batch_size} must be divisible by the number of processes "
                     f"({jax.process_count()})")
  metrics.get_evaluators(config.eval.evaluators)
  method = build_method(config)
  train_data = data.build_dataset(config.data, "train")
  eval_data = data.build_dataset(config.data, "eval")
  resuming = checkpointing.check_workdir_config(workdir, config)
  return Run(config, workdir, method, mesh, train_data, eval_data, resuming)


# --------------------------------------------------------------------------------- compiled parts
def compile_init(run: Run, example_batch):
  """Initial state, created directly with replicated sharding (no host copy of big params)."""
  init = jax.jit(run.method.init_state, out_shardings=parallel.replicated(run.mesh))
  return init, jax.eval_shape(run.method.init_state, jax.random.key(0), example_batch)


def make_train_step(method: Method, mesh, phase):
  """The fused step for one phase: state donated, batch sharded on `data`, state replicated."""
  def step(state, batch, frozen):
    return method.train_step(state, batch, frozen, phase)
  rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  return jax.jit(step, in_shardings=(rep, shard, rep), out_shardings=(rep, rep), donate_argnums=(0,))


def make_eval_step(method: Method, mesh, evaluators):
  def step(state, batch):
    outputs = method.generate(state, batch)
    per_example = {}
    for evaluator in evaluators:
      per_example.update(evaluator(outputs, batch))
    return batch, outputs, per_example
  rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  # Outputs replicated so every process can read the whole batch without extra collectives.
  return jax.jit(step, in_shardings=(rep, shard), out_shardings=rep)


# --------------------------------------------------------------------------------- evaluation
def evaluate(run: Run, eval_step, state, step: int, writer) -> dict[str, dict[str, float]]:
  """Mean of every per-example metric over the evaluation split; writes a sample grid."""
  cfg = run.config.eval
  batch_size = -(-cfg.batch_size // run.mesh.size) * run.mesh.size
  sums: dict[str, float] = {}
  count = 0
  sample_columns = None
  for local in pipeline.eval_batches(run.eval_data, batch_size, jax.process_index(),
                                     jax.process_count(), max_examples=cfg.max_examples):
    batch, outputs, per_example = jax.device_get(
        eval_step(state, parallel.global_batch(local, run.mesh)))
    mask = np.asarray(batch["mask"], bool)
    for name, values in per_example.items():
      sums[name] = sums.get(name, 0.0) + float(np.sum(np.asarray(values, np.float64)[mask]))
    count += int(mask.sum())
    if sample_columns is None:
      rows = min(cfg.num_sample_images, int(mask.sum()))
      sample_columns = [batch["A"][:rows], *[v[:rows] for v in outputs.values()], batch["B"][:rows]]
  result: dict[str, dict[str, float]] = {}
  for name, total in sums.items():
    group, metric = name.split("/", 1)
    result.setdefault(group, {})[metric] = total / max(count, 1)
  if jax.process_index() == 0:
    writer.write_scalars(step, {f"eval/{k}": v for k, v in _flat(result).items()})
    grid = visualize.image_grid(sample_columns)
    visualize.save_png(grid, os.path.join(run.workdir, "samples", f"step_{step:07d}.png"))
    writer.write_images(step, {"samples": grid[None]})
    with open(os.path.join(run.workdir, EVALS_FILE), "a") as f:
      f.write(json.dumps({"step": step, "num_examples": count, **result}) + "\n")
  logging.info("eval at step %d over %d examples: %s", step, count, _format_eval(result))
  return result


def _flat(result: dict[str, dict[str, float]]) -> dict[str, float]:
  return {f"{group}/{k}": v for group, values in result.items() for k, v in values.items()}


def _format_eval(result) -> str:
  return "; ".join(f"{group} " + " ".join(f"{k}={v:.4g}" for k, v in values.items())
                   for group, values in result.items())


def read_evals(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, EVALS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------------- summary
def network_stats(method: Method, state) -> dict[str, dict[str, Any]]:
  result = {}
  for role, net in method.networks(state).items():
    example = jax.ShapeDtypeStruct((1, *net.input_shape), jnp.float32)
    result[role] = {
        "params": stats.count_params(net.variables["params"]),
        "macs": stats.count_macs(net.apply_fn, net.variables, example),
        "param_fingerprint": stats.param_fingerprint(net.variables["params"]),
    }
  return result


def write_summary(run: Run, state, step: int, wall_time_s: float, steps_this_run: int) -> dict:
  evals = read_evals(run.workdir)
  summary = {
      "method": run.config.method,
      "networks": network_stats(run.method, state),
      "eval_start": evals[0] if evals else None,
      "eval_end": evals[-1] if evals else None,
      "steps": step,
      "wall_time_s": round(wall_time_s, 3),
      "steps_this_run": steps_this_run,
      "losses": run.method.active_losses(),
      "notes": run.method.notes(),
      "data": {"name": run.config.data.name, "train_examples": len(run.train_data),
               "eval_examples": len(run.eval_data), "image_size": run.config.data.crop_size},
      "devices": run.mesh.size,
      "processes": jax.process_count(),
  }
  if jax.process_index() == 0:
    tmp = os.path.join(run.workdir, SUMMARY_FILE + ".tmp")
    with open(tmp, "w") as f:
      json.dump(summary, f, indent=2)
    os.replace(tmp, os.path.join(run.workdir, SUMMARY_FILE))
  return summary


# --------------------------------------------------------------------------------- the loop
class _StopSignal:
  """Turns SIGTERM into a request to checkpoint and exit at the next step boundary."""

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
    logging.warning("SIGTERM: checkpointing and stopping at the next step")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _check_finite(step: int, values: dict[str, float]) -> None:
  for name, value in values.items():
    if not np.isfinite(value):
      raise NonFiniteLossError(
          f"loss '{name}' is {value} at step {step}; stopped, the last good checkpoint is kept")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_after_steps: int | None = None) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the summary written to summary.json.

  `stop_after_steps`: stop (with a checkpoint) once that many steps are done in total, as a
  preemption would; a later call resumes.
  """
  return train(prepare(config, workdir), stop_after_steps=stop_after_steps)


def train(run: Run, *, stop_after_steps: int | None = None) -> dict:
  """The loop proper, on a prepared (validated) run."""
  config, workdir = run.config, run.workdir
  for note in run.method.notes():
    logging.warning("%s", note) if "off" in note else logging.info("%s", note)
  checkpointing.write_config(workdir, config)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  manager = checkpointing.checkpoint_manager(workdir, config.keep_checkpoints)

  example = next(iter(pipeline.eval_batches(run.eval_data, 1, 0, 1, max_examples=1)))
  example_batch = {k: jnp.asarray(v) for k, v in example.items() if k != "mask"}
  init, abstract_state = compile_init(run, example_batch)
  latest = manager.latest_step()
  if latest is not None:
    abstract_state = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=parallel.replicated(run.mesh)),
        abstract_state)
    state = checkpointing.restore(manager, latest, abstract_state)
    start_step = latest
    logging.info("resumed from %s at step %d", manager.directory, latest)
  else:
    state = init(jax.random.key(config.seed), example_batch)
    start_step = 0
  frozen = parallel.replicate(run.method.frozen_variables(), run.mesh)

  evaluators = metrics.get_evaluators(config.eval.evaluators)
  eval_step = make_eval_step(run.method, run.mesh, evaluators)
  train_steps = {}
  end_step = config.num_train_steps if stop_after_steps is None else min(
      stop_after_steps, config.num_train_steps)

  if start_step == 0:
    evaluate(run, eval_step, state, 0, writer)
  train_iter = pipeline.GlobalBatchIterator(
      run.train_data, config.batch_size, seed=config.seed, start_step=start_step,
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_threads=config.data.num_threads)
  report = periodic_actions.ReportProgress(num_train_steps=config.num_train_steps, writer=writer)
  pending_metrics = []
  start_time = time.time()
  step = start_step
  try:
    with _StopSignal() as stop_signal:
      while step < end_step and not stop_signal.requested:
        phase = run.method.phase(step)
        if phase not in train_steps:
          train_steps[phase] = make_train_step(run.method, run.mesh, phase)
        batch = parallel.global_batch(next(train_iter), run.mesh)
        state, step_metrics = train_steps[phase](state, batch, frozen)
        pending_metrics.append(step_metrics)
        step += 1
        report(step)
        checkpoint_now = step % config.checkpoint_every == 0 or step == end_step
        if step % config.log_every == 0 or checkpoint_now:
          # Checked before every checkpoint, so a non-finite state is never saved.
          means = _mean_metrics(jax.device_get(pending_metrics))
          pending_metrics = []
          _check_finite(step, means)
          writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()})
          _log_progress(step, config.num_train_steps, start_step, start_time, means)
        if checkpoint_now:
          checkpointing.save(manager, step, state)
        if step % config.eval_every == 0 and step != config.num_train_steps:
          evaluate(run, eval_step, state, step, writer)
      if stop_signal.requested and step not in manager.all_steps():
        _check_finite(step, _mean_metrics(jax.device_get(pending_metrics)))
        checkpointing.save(manager, step, state)
  finally:
    train_iter.close()
    manager.wait_until_finished()
    writer.flush()

  wall_time = time.time() - start_time
  if step == config.num_train_steps:
    evaluate(run, eval_step, state, step, writer)
  summary = write_summary(run, state, step, wall_time, step - start_step)
  writer.flush()
  manager.close()
  return summary


def _log_progress(step: int, total: int, start_step: int, start_time: float,
                  means: dict[str, float]) -> None:
  elapsed = time.time() - start_time
  rate = (step - start_step) / max(elapsed, 1e-9)
  eta = (total - step) / max(rate, 1e-9)
  losses = " ".join(f"{k}={v:.4g}" for k, v in sorted(means.items()) if k.endswith("total"))
  logging.info("step %d/%d  %.2f steps/s  ETA %dm%02ds  %s", step, total, rate, eta // 60,
               eta % 60, losses)


def _mean_metrics(per_step: list[dict[str, Any]]) -> dict[str, float]:
  """Averages each metric over the steps that reported it (phases report different sets)."""
  sums, counts = {}, {}
  for metrics_of_step in per_step:
    for name, value in metrics_of_step.items():
      sums[name] = sums.get(name, 0.0) + float(value)
      counts[name] = counts.get(name, 0) + 1
  return {name: sums[name] / counts[name] for name in sums}
