"""Run directories: the config a run was started with, and its orbax checkpoints.

A workdir belongs to one config. Starting again on it resumes from the latest checkpoint, which is
only allowed when the config agrees on everything that shapes the run; fields that only change how
long or how verbosely it runs (RESUMABLE_FIELDS) may differ.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"
RESUMABLE_FIELDS = frozenset({
    "num_train_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
    "num_devices", "eval.batch_size", "eval.max_examples", "eval.num_sample_images",
    "data.num_threads", "optimizer.constant_steps", "optimizer.decay_steps",
})


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


def check_workdir_config(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """Raises if `workdir` holds a run of another config; returns whether it holds a run at all."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    if os.path.isdir(os.path.join(workdir, "checkpoints")):
      raise ValueError(f"{workdir} holds checkpoints but no {CONFIG_FILE}; use a new --workdir")
    return False
  try:
    with open(path) as f:
      stored = _flatten(json.load(f))
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is unreadable ({e}); use a new --workdir") from None
  fresh = _flatten(config_as_dict(config))
  for key in sorted(set(stored) | set(fresh)):
    if key in RESUMABLE_FIELDS or stored.get(key) == fresh.get(key):
      continue
    raise ValueError(
        f"{workdir} holds a run of a different config ({key}: {stored.get(key, '<absent>')!r} there, "
        f"{fresh.get(key, '<absent>')!r} now); use a new --workdir")
  return True


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, CONFIG_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(config_as_dict(config), f, indent=2, sort_keys=True)
  os.replace(tmp, os.path.join(workdir, CONFIG_FILE))


def checkpoint_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """Async manager keeping the last `keep` checkpoints under DIR/checkpoints."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
  manager.save(step, args=ocp.args.StandardSave(state))


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
  """Restores onto the shardings of `abstract_state` (any device or process count)."""
  return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
