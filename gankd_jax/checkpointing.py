"""Run directories: the config a run was started with, and its orbax checkpoints.

A workdir belongs to one config. Starting again on it resumes from the latest checkpoint, which is
only allowed when the config agrees on everything that shapes the run; fields that only change how
long or how verbosely it runs (RESUMABLE_FIELDS, plus those a method declares in its
`resumable_fields`, e.g. OMGD's schedule) may differ.

Paths go through `etils.epath`, so a workdir may be local or a URL such as `gs://bucket/run` (TPU
pods). Orbax commits a checkpoint atomically (a temporary directory renamed on commit, or a commit
file on GCS), so a process killed mid-write leaves an uncommitted directory that is ignored and
removed when the next run opens the workdir.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

CONFIG_FILE = "config.json"
RESUMABLE_FIELDS = frozenset({
    "num_train_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
    "best_checkpoint_metric",
    "num_devices", "eval.batch_size", "eval.max_examples", "eval.num_sample_images",
    "eval.inception_weights", "eval.vgg16_weights", "data.num_threads", "debug_nan_step",
})
# Which evaluators run, and how, changes no trained parameter (a method whose on_eval feeds
# evaluations back declares the fields it depends on as not resumable by checking them itself).
RESUMABLE_PREFIX = "eval.evaluators."
# Fault-injection test hook: seconds to wait inside every checkpoint commit, after the files are
# written and before the commit, so a test can kill the run while a checkpoint is incomplete.
COMMIT_DELAY_ENV = "GANKD_DEBUG_CHECKPOINT_COMMIT_DELAY_S"


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: tree}


def config_as_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  # JSON round trip: tuples become lists, so stored and fresh configs compare alike.
  return json.loads(config.to_json_best_effort())


def as_path(workdir: str) -> epath.Path:
  """A local path made absolute (orbax needs that), or a URL such as gs://... left as it is."""
  path = epath.Path(workdir)
  return path if "://" in str(workdir) else path.absolute()


def check_workdir_config(workdir: str, config: ml_collections.ConfigDict,
                         method_fields: frozenset[str] = frozenset()) -> bool:
  """Raises if `workdir` holds a run of another config (`method_fields`: the method's fields
  that may change on resume); returns whether it holds a run at all."""
  path = as_path(workdir) / CONFIG_FILE
  if not path.exists():
    if (as_path(workdir) / "checkpoints").is_dir():
      raise ValueError(f"{workdir} holds checkpoints but no {CONFIG_FILE}; use a new --workdir")
    return False
  try:
    stored = _flatten(json.loads(path.read_text()))
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is unreadable ({e}); use a new --workdir") from None
  fresh = _flatten(config_as_dict(config))
  for key in sorted(set(stored) | set(fresh)):
    if (key in RESUMABLE_FIELDS or key in method_fields or key.startswith(RESUMABLE_PREFIX)
        or stored.get(key) == fresh.get(key)):
      continue
    if key not in stored and fresh[key] in (None, "", False):
      continue  # A field added since that run, at its off default: the run's config still holds.
    raise ValueError(
        f"{workdir} holds a run of a different config ({key}: {stored.get(key, '<absent>')!r} there, "
        f"{fresh.get(key, '<absent>')!r} now); use a new --workdir")
  return True


def write_text_atomically(path: epath.Path, text: str) -> None:
  """Writes a sibling temporary file and renames it, so readers never see half a file."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  if jax.process_index() != 0:
    return
  write_text_atomically(as_path(workdir) / CONFIG_FILE,
                        json.dumps(config_as_dict(config), indent=2, sort_keys=True))


class _SlowCommitPath(ocp.path.atomicity.AtomicRenameTemporaryPath):
  """Local atomic-rename commit that first sleeps COMMIT_DELAY_ENV seconds (tests only)."""

  async def finalize(self, *args, **kwargs):
    await asyncio.sleep(float(os.environ[COMMIT_DELAY_ENV]))
    return await super().finalize(*args, **kwargs)


# Metrics (evaluation.py's names) where lower is better; for the others higher is.
LOWER_IS_BETTER = frozenset({"l1", "fid", "kid"})
METRICS = frozenset({"psnr", "ssim", "l1", "vol", "fid", "is", "kid", "precision", "recall"})


def check_best_metric(best_metric: str) -> None:
  """`best_checkpoint_metric` is "" or GROUP/METRIC of an evaluation (e.g. student/psnr)."""
  if not best_metric:
    return
  group, _, metric = best_metric.rpartition("/")
  if not group or metric not in METRICS:
    raise ValueError(f"best_checkpoint_metric must be '' or GROUP/METRIC as in evals.jsonl (e.g. "
                     f"student/psnr; METRIC one of {', '.join(sorted(METRICS))}), got "
                     f"'{best_metric}'")


def checkpoint_metrics(best_metric: str, evaluation: dict[str, Any] | None) -> dict[str, float]:
  """What a checkpoint records for ranking: `best_metric`'s value in the evaluation of its step
  ({} without one: such a checkpoint ranks last)."""
  group, _, metric = best_metric.rpartition("/")
  value = ((evaluation or {}).get(group) or {}).get(metric)
  return {} if value is None or not np.isfinite(value) else {best_metric: float(value)}


def _ranking(best_metric: str):
  """Higher is better, for orbax's BestN (which keeps the top of an ascending sort)."""
  sign = -1.0 if best_metric.rpartition("/")[2] in LOWER_IS_BETTER else 1.0
  return lambda metrics: sign * metrics[best_metric] if best_metric in (metrics or {}) else -np.inf


def checkpoint_manager(workdir: str, keep: int, best_metric: str = "") -> ocp.CheckpointManager:
  """Async manager under DIR/checkpoints keeping the last `keep` checkpoints and, with
  `best_metric`, also the one whose evaluation scored best (a checkpoint of a step without an
  evaluation is never the best). The latest is always kept, so resuming is unchanged.

  Uncommitted checkpoints left by a killed run are never listed as steps, and are deleted here.
  """
  slow_commit = _SlowCommitPath if os.environ.get(COMMIT_DELAY_ENV) else None
  policies = [ocp.checkpoint_managers.LatestN(n=keep)]
  if best_metric:
    policies.append(ocp.checkpoint_managers.BestN(
        get_metric_fn=_ranking(best_metric), n=1, keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
      create=True, enable_async_checkpointing=True, cleanup_tmp_directories=True,
      temporary_path_class=slow_commit,
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
      # Set only so that orbax writes and reads each checkpoint's metrics; `policies` decide.
      best_fn=_ranking(best_metric) if best_metric else None)
  return ocp.CheckpointManager(as_path(workdir) / "checkpoints", options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         metrics: dict[str, float] | None = None) -> None:
  """`metrics`: checkpoint_metrics' record (kept by a manager that ranks, else ignored)."""
  manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
  """Restores onto the shardings of `abstract_state` (any device or process count); a checkpoint
  of another state layout (e.g. written by an older gankd_jax) is a one-line ValueError."""
  try:
    return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
  except (ValueError, KeyError, TypeError) as error:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise ValueError(f"checkpoint {step} in {manager.directory} does not fit this version's "
                     f"state layout ({first_line[:200]}); it was written by another gankd_jax "
                     "version: use that version, or a new --workdir") from None


def read_config(workdir: str) -> dict[str, Any]:
  """The config another run was started with (its config.json), as a dict; ValueError if none."""
  if not as_path(workdir).is_dir():
    raise ValueError(f"run directory {workdir} does not exist")
  path = as_path(workdir) / CONFIG_FILE
  if not path.exists():
    raise ValueError(f"{workdir} holds no {CONFIG_FILE}: not a gankd_jax run directory")
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is unreadable ({e})") from None


def latest_step(workdir: str) -> int | None:
  """Step of the latest committed checkpoint of a run directory (read only), None if none."""
  directory = as_path(workdir) / "checkpoints"
  if not directory.is_dir():
    return None
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      create=False, read_only=True))
  try:
    return manager.latest_step()
  finally:
    manager.close()


def restore_latest(workdir: str, abstract_state: Any) -> tuple[int, Any]:
  """(step, state) of another run's latest committed checkpoint, read only, onto the shardings
  of `abstract_state`; ValueError when the run has no checkpoint."""
  directory = as_path(workdir) / "checkpoints"
  step = latest_step(workdir)
  if step is None:
    raise ValueError(f"{workdir} has no committed checkpoint")
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      create=False, read_only=True))
  try:
    return step, restore(manager, step, abstract_state)
  finally:
    manager.close()
