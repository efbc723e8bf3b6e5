"""The console: progress ETA from the steady rate, the quiet-by-default log filter, and which
checkpoints a run keeps (the latest plus the best by `best_checkpoint_metric`)."""

import logging
import os

import jax.numpy as jnp
import numpy as np
import pytest

from gankd_jax import checkpointing, console, train


class FakeClock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def test_eta_ignores_the_compiling_step():
  clock = FakeClock()
  progress = train.Progress(total=100, start_step=0, clock=clock)
  progress.start_compiling(0)
  clock.now += 300.0                      # Step 1 compiles: 5 minutes.
  assert progress.compiled(1) == 300.0
  assert progress.steps_per_s() is None and progress.eta_s() is None
  clock.now += 9 * 2.0                    # Steps 2-10 take 2 s each.
  line = progress.line(10, {"student/total": 1.5, "student/ssim": 0.1})
  assert progress.steps_per_s() == pytest.approx(0.5)
  assert progress.eta_s() == pytest.approx(90 * 2.0)  # Not (300 + 18) / 10 per step.
  assert line == "step 10/100  0.50 steps/s  ETA 3m00s  student/total=1.5"


def test_eta_ignores_a_later_phase_compiling_and_a_resumed_start():
  clock = FakeClock()
  progress = train.Progress(total=50, start_step=20, clock=clock)
  progress.start_compiling(20)
  clock.now += 100.0
  progress.compiled(21)
  clock.now += 4 * 1.0                    # Steps 22-25: 1 s each.
  progress.start_compiling(25)            # A new phase compiles at step 26.
  clock.now += 60.0
  progress.compiled(26)
  clock.now += 4 * 1.0                    # Steps 27-30.
  progress.update(30)
  assert progress.steps_per_s() == pytest.approx(1.0)
  assert progress.eta_s() == pytest.approx(20.0)


def _record(pathname, level=logging.INFO):
  return logging.LogRecord("absl", level, pathname, 1, "message", (), None)


def test_quiet_console_keeps_our_lines_and_everyones_errors():
  ours = os.path.join(os.path.dirname(console.__file__), "train.py")
  theirs = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
  keep = console.OursOrErrors().filter
  assert keep(_record(ours)) and keep(_record(ours, logging.WARNING))
  assert not keep(_record(theirs)) and not keep(_record(theirs, logging.WARNING))
  assert keep(_record(theirs, logging.ERROR))


def _state(value):
  return {"w": jnp.full((4,), value, jnp.float32)}


def test_keeps_the_latest_and_the_best_checkpoint_across_a_resume(tmp_path):
  workdir = str(tmp_path)
  metric = "student/psnr"
  # (step, PSNR of that step's evaluation; None: no evaluation at that step)
  first_run = [(1, 10.0), (2, 14.0), (3, 12.0), (4, None)]
  manager = checkpointing.checkpoint_manager(workdir, keep=1, best_metric=metric)
  for step, psnr in first_run:
    evaluation = {"step": step, "student": {"psnr": psnr}} if psnr is not None else None
    checkpointing.save(manager, step, _state(step),
                       checkpointing.checkpoint_metrics(metric, evaluation))
    manager.wait_until_finished()
  manager.close()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
  # A resumed run reads the kept checkpoints' metrics back: 2 stays best until beaten.
  manager = checkpointing.checkpoint_manager(workdir, keep=1, best_metric=metric)
  assert manager.latest_step() == 4
  for step, psnr in [(5, 13.0), (6, 15.0), (7, np.nan)]:
    checkpointing.save(manager, step, _state(step), checkpointing.checkpoint_metrics(
        metric, {"student": {"psnr": psnr}}))
    manager.wait_until_finished()
    if step == 5:
      assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "5"]
  manager.close()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["6", "7"]


def test_lower_is_better_metrics_and_no_metric():
  ranking = checkpointing._ranking("student_vs_teacher_wide/l1")  # pylint: disable=protected-access
  assert ranking({"student_vs_teacher_wide/l1": 0.1}) > ranking({"student_vs_teacher_wide/l1": 0.2})
  assert ranking({}) == -np.inf
  checkpointing.check_best_metric("")
  checkpointing.check_best_metric("student/fid")
  for bad in ("psnr", "student/accuracy"):
    with pytest.raises(ValueError, match="best_checkpoint_metric"):
      checkpointing.check_best_metric(bad)
