"""Faults: SIGTERM in one of two processes, an injected NaN, kill -9 during a checkpoint write.

Each run starts from, or is compared with, the uninterrupted 1-process reference of
tests/test_multihost.py (same tiny config; its workdir at step 2 holds a committed checkpoint).
"""

import hashlib
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from gankd_jax import checkpointing, train
from test_multihost import (REPO, assert_fingerprints_close, fingerprints, launch_local,
                            read_summary, reference, subprocess_env, tiny_config, tiny_flags)

__all__ = ["reference"]  # The fixture, imported so that pytest finds it here.

# gankd_jax.main, but process 1 sends itself SIGTERM before its first stop check (after step 1).
# log_every=2 and checkpoint_every=2: step 1 is no sync point, so process 0 learns of it at step 2.
SIGTERM_IN_PROCESS_1 = '''
import os, signal
import jax
from absl import app
from gankd_jax import main, train
from gankd_jax.cli import parse_flags

_stop_agreed = train._stop_agreed

def stop_agreed(requested, sync_point):
  if not requested and jax.process_index() == 1:
    os.kill(os.getpid(), signal.SIGTERM)
  return _stop_agreed(requested, sync_point)

train._stop_agreed = stop_agreed
main.define_flags()
app.run(main.main, flags_parser=parse_flags)
'''


@pytest.mark.multiprocess
def test_sigterm_in_one_process_stops_both_at_one_step_and_resume_matches(
    tmp_path, capfd, reference):
  (tmp_path / "sigterm_in_process_1.py").write_text(SIGTERM_IN_PROCESS_1)
  workdir = tmp_path / "run"
  env = subprocess_env(PYTHONPATH=str(tmp_path))
  status = launch_local(tiny_flags(workdir, checkpoint_every=100), num_processes=2,
                        devices_per_process=1, module="sigterm_in_process_1", env=env,
                        timeout=3600)  # hang guard
  out = capfd.readouterr().out
  assert status == 0, out[-3000:]
  for process in ("[p0]", "[p1]"):
    assert any(line.startswith(process) and "stopped at step 2 on SIGTERM" in line
               for line in out.splitlines()), out[-3000:]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]
  assert read_summary(workdir)["steps"] == 2

  resumed = train.train_and_evaluate(tiny_config(), str(workdir))
  assert (resumed["steps"], resumed["steps_this_run"]) == (4, 2)
  # Steps 1-2 ran on 2 processes, so the match is to float32 rounding (see test_multihost).
  assert_fingerprints_close(fingerprints(resumed), reference["at_4"])


def _start_main(workdir, *extra_flags, **env):
  """`python -m gankd_jax.main` on 8 CPU devices, as the reference ran (so its compiled programs
  come from the shared persistent cache)."""
  return subprocess.Popen(
      [sys.executable, "-m", "gankd_jax.main", *tiny_flags(workdir), *extra_flags], cwd=REPO,
      env=subprocess_env(JAX_NUM_CPU_DEVICES="8", **env), stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True)


def _file_hashes(directory) -> dict[str, str]:
  return {os.path.relpath(os.path.join(root, name), directory):
          hashlib.sha256(open(os.path.join(root, name), "rb").read()).hexdigest()
          for root, _, names in os.walk(directory) for name in names}


@pytest.mark.multiprocess
def test_nan_stops_the_run_naming_loss_and_step_and_keeps_the_last_checkpoint(tmp_path, reference):
  workdir = tmp_path / "run"
  shutil.copytree(reference["workdir_at_2"], workdir)
  before = _file_hashes(workdir / "checkpoints")
  # NaN at step 3; step 3 is no sync point (log_every=2), so it is found at step 4, before the
  # checkpoint of step 4, and reported as step 3.
  process = _start_main(workdir, "--config.debug_nan_step=3")
  _, stderr = process.communicate(timeout=3600)  # hang guard
  assert process.returncode == 1, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]
  assert last.startswith("error: loss '") and "is nan at step 3;" in last, stderr[-3000:]
  assert "last good checkpoint is kept" in last
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]
  assert _file_hashes(workdir / "checkpoints") == before


def test_non_finite_parameter_is_named():
  state = {"student": {"kernel": np.ones(3, np.float32), "bias": np.array([0.0, np.inf], np.float32)},
           "step": np.int32(5)}
  with pytest.raises(train.NonFiniteLossError, match=r"\['student'\]\['bias'\] is not finite at step 7"):
    train._check_finite_state(7, state)
  train._check_finite_state(7, {"student": {"kernel": np.ones(3, np.float32)}})


def _wait_for_uncommitted(checkpoints, step: int, process, timeout: float = 3600) -> str:
  """Polls for the checkpoint; `timeout` only guards against a hang (the process is alive)."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if checkpoints.is_dir():
      pending = [n for n in os.listdir(checkpoints) if n.startswith(f"{step}.") and "tmp" in n]
      if pending:
        return pending[0]
    assert process.poll() is None, process.stderr.read()[-3000:]
    time.sleep(0.05)
  raise AssertionError(f"no uncommitted checkpoint {step} after {timeout} s")


@pytest.mark.multiprocess
def test_kill_during_a_checkpoint_write_then_resume_equals_uninterrupted(tmp_path, reference):
  workdir = tmp_path / "run"
  shutil.copytree(reference["workdir_at_2"], workdir)
  # Every commit waits 600 s after its files are written: checkpoint 4 stays uncommitted until
  # the kill, deterministically.
  process = _start_main(workdir, **{checkpointing.COMMIT_DELAY_ENV: "600"})
  try:
    pending = _wait_for_uncommitted(workdir / "checkpoints", 4, process)
  finally:
    process.kill()
    process.wait()
  assert sorted(os.listdir(workdir / "checkpoints")) == sorted(["2", pending])

  resumed = train.train_and_evaluate(tiny_config(), str(workdir))
  assert (resumed["steps"], resumed["steps_this_run"]) == (4, 2)
  # The leftover is removed, and checkpoint 2 with it: the run keeps its latest checkpoint
  # (keep_checkpoints 1) plus the best evaluated one, and only step 4 was evaluated.
  assert sorted(os.listdir(workdir / "checkpoints")) == ["4"]
  assert fingerprints(resumed) == reference["at_4"]
  assert resumed["eval_end"] == reference["summary_at_4"]["eval_end"]
