"""The shared loop with OMGD on tiny networks: learning, sharding, resume, the command line."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from gankd_jax import parallel, train
from gankd_jax.methods import build_method

from conftest import tiny_omgd_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
  return tiny_omgd_config(**overrides)


def fixed_batch(config, mesh, seed=0):
  rng = np.random.default_rng(seed)
  size = config.data.crop_size
  local = {k: rng.uniform(-1, 1, (config.batch_size, size, size, 3)).astype(np.float32)
           for k in ("A", "B")}
  return parallel.global_batch(local, mesh)


def run_steps(config, mesh, num_steps):
  method = build_method(config)
  batch = fixed_batch(config, mesh)
  frozen = parallel.replicate(method.load_frozen(), mesh)
  state = jax.jit(method.init_state, out_shardings=parallel.replicated(mesh))(
      jax.random.key(0), batch, frozen)
  history, step_fns = [], {}
  for step in range(num_steps):
    phase = method.phase(step)
    if phase not in step_fns:
      step_fns[phase] = train.make_train_step(method, mesh, phase)
    state, metrics = step_fns[phase](state, batch, frozen)
    history.append(jax.device_get(metrics))
  return jax.device_get(state), history


def test_fused_step_lowers_student_loss_on_a_fixed_batch():
  # Teachers update at step 0 only, so the student chases fixed targets.
  config = tiny_config(n_dis=1000, num_train_steps=1000, **{"optimizer.lr": 2e-3})
  _, history = run_steps(config, parallel.make_mesh(1), 30)
  first, last = history[1]["student/total"], history[-1]["student/total"]
  assert last < 0.8 * first, (first, last)
  assert set(history[0]) >= {"teacher_wide/gan", "teacher_wide/recon_l1", "teacher_deep/gan",
                             "discriminator/total", "student/ssim", "student/cd", "student/tv"}


def test_student_only_phase_leaves_teachers_and_discriminator_parameters():
  config = tiny_config(n_dis=2)
  mesh = parallel.make_mesh(1)
  method = build_method(config)
  batch = fixed_batch(config, mesh)
  state = jax.jit(method.init_state)(jax.random.key(0), batch, {})
  before = jax.device_get(state)
  after, _ = train.make_train_step(method, mesh, method.phase(1))(state, batch, {})
  after = jax.device_get(after)
  for role in ("teacher_wide", "teacher_deep", "discriminator"):
    jax.tree_util.tree_map(np.testing.assert_array_equal, getattr(before, role).params,
                           getattr(after, role).params)
  changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(a != b)), before.student.params,
                                   after.student.params)
  assert all(jax.tree_util.tree_leaves(changed))


def test_one_device_equals_eight_devices():
  assert jax.device_count() >= 8
  config = tiny_config()
  # One full step (teachers, D, student): later steps only amplify float32 reduction-order noise
  # through the GAN dynamics (tests/test_multihost.py compares longer runs with looser bounds).
  state_1, history_1 = run_steps(config, parallel.make_mesh(1), 1)
  state_8, history_8 = run_steps(config, parallel.make_mesh(8), 1)
  for name, value in history_1[0].items():
    np.testing.assert_allclose(value, history_8[0][name], rtol=1e-4, atol=1e-6, err_msg=name)
  # Adam's first step is +-lr for every gradient, so reduction-order noise in a near-zero
  # gradient can move a parameter by 2 lr; on average they agree far more closely.
  lr = config.optimizer.lr
  params = lambda state: [getattr(state, role).params for role in build_method(config).roles]
  flat_1 = jax.tree_util.tree_leaves_with_path(params(state_1))
  flat_8 = jax.tree_util.tree_leaves(params(state_8))
  differing = total = 0
  for (path, a), b in zip(flat_1, flat_8):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2 * lr, err_msg=jax.tree_util.keystr(path))
    differing += int(np.sum(np.abs(a - b) > 1e-6))
    total += a.size
  assert differing < 0.01 * total, (differing, total)


def test_resume_equals_an_uninterrupted_run(tmp_path):
  config = tiny_config()
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  first_half = train.train_and_evaluate(config, str(tmp_path / "resumed"), stop_after_steps=2)
  assert first_half["steps"] == 2
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert resumed["steps"] == straight["steps"] == 4
  assert resumed["steps_this_run"] == 2
  for role, net in straight["networks"].items():
    assert resumed["networks"][role]["param_fingerprint"] == net["param_fingerprint"], role
  assert resumed["eval_end"]["student"] == straight["eval_end"]["student"]
  assert resumed["eval_start"] == straight["eval_start"]


def test_evaluations_and_checkpoints_do_not_touch_the_training(tmp_path):
  """The same config with an evaluation and a checkpoint after every step (and the data read by
  one thread instead of two) trains bit for bit the same parameters: what the loop does between
  steps never enters them (README, "Reproducible runs")."""
  quiet = train.train_and_evaluate(tiny_config(), str(tmp_path / "quiet"))
  busy = train.train_and_evaluate(
      tiny_config(eval_every=1, checkpoint_every=1, **{"data.num_threads": 1}),
      str(tmp_path / "busy"))
  for role, net in quiet["networks"].items():
    assert busy["networks"][role]["param_fingerprint"] == net["param_fingerprint"], role
  assert busy["eval_end"] == quiet["eval_end"]
  environment = quiet["environment"]
  assert environment["cpus"] >= 1 and environment["jax"] == jax.__version__


def _main(args, **kwargs):
  # No TF_CPP_MIN_LOG_LEVEL here: the console test below sees what a user sees.
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  return subprocess.run([sys.executable, "-m", "gankd_jax.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=3600, **kwargs)  # hang guard


TINY_FLAGS = ["--config=configs/omgd.py:unet64", "--config.data.crop_size=32", "--config.teacher_wide.ngf=8",
              "--config.teacher_deep.ngf=4", "--config.student.ngf=4", "--config.discriminator.ndf=8",
              "--config.num_train_steps=3", "--config.log_every=1", "--config.eval.max_examples=8",
              "--config.checkpoint_every=2", "--config.eval_every=2"]


def test_main_end_to_end_on_the_embedded_data(tmp_path):
  workdir = tmp_path / "run"
  result = _main([*TINY_FLAGS, f"--workdir={workdir}"])
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert set(summary["networks"]) == {"teacher_wide", "teacher_deep", "student", "discriminator"}
  for stats in summary["networks"].values():
    assert stats["params"] > 0 and stats["macs"] > 0 and len(stats["param_fingerprint"]) == 2
  assert summary["networks"]["student"]["params"] < summary["networks"]["teacher_wide"]["params"]
  assert summary["steps"] == 3
  assert summary["eval_start"]["step"] == 0 and summary["eval_end"]["step"] == 3
  for group in ("student", "teacher_wide", "teacher_deep", "student_vs_teacher_wide"):
    assert set(summary["eval_end"][group]) == {"psnr", "ssim", "l1"}
  assert summary["losses"] == {"gan": 1.0, "recon": 100.0, "ssim": 10.0, "tv": 1e-5, "cd": 10.0,
                               "pixel": 50.0}  # pixel: ours, not OMGD's (README, configs/omgd.py).
  assert any("VGG16 weights not found" in note for note in summary["notes"])
  assert "VGG16 weights not found" in result.stderr
  assert sorted(os.listdir(workdir / "samples")) == ["step_0000000.png", "step_0000002.png",
                                                     "step_0000003.png"]
  # The latest checkpoint, and the one whose evaluation scored the best student PSNR.
  evals = {r["step"]: r["student"]["psnr"] for r in train.read_evals(str(workdir))}
  best = max((2, 3), key=lambda step: (evals[step], step))
  assert sorted(os.listdir(workdir / "checkpoints")) == sorted({"3", str(best)})
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))
  # A quiet console: our notes, progress and evaluations; no library's INFO lines, no scalar
  # repeated by clu's logging writer, no TensorFlow banner.
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) <= 12, result.stderr
  assert any("step 1 compiled" in line for line in lines), result.stderr
  assert [line.split("] ")[-1].split("  ")[0] for line in lines if "ETA" in line] == [
      "step 1/3", "step 2/3", "step 3/3"], result.stderr  # log_every=1
  assert sum("eval at step" in line for line in lines) == 3, result.stderr
  for noise in ("orbax", "checkpoint_manager", "logging_writer", "oneDNN", "backend 'tpu'",
                "Setting work unit notes"):
    assert noise not in result.stderr, noise


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("overrides, message", [
    ({"data.crop_size": 48}, "power-of-two"),
    ({"student.ngf": 0}, "ngf must be a positive integer"),
    ({"data.name": "pix2pix_folder", "data.path": "/nonexistent/folder"}, "/nonexistent/folder"),
    ({"loss.gan_mode": "wasserstein"}, "gan_mode"),
    ({"batch_size": 6}, "multiple of the number of devices"),
    ({"teacher_wide.name": "unet_1024"}, "unknown generator 'unet_1024'"),
])
def test_bad_config_is_refused_before_any_compute(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message) as info:
    train.prepare(tiny_config(**overrides), str(tmp_path / "run"))
  assert "\n" not in str(info.value)
  assert not (tmp_path / "run").exists()


def test_corrupt_image_is_named(tmp_path):
  from PIL import Image
  folder = tmp_path / "data"
  (folder / "train").mkdir(parents=True)
  (folder / "val").mkdir()
  for split in ("train", "val"):
    Image.new("RGB", (64, 32), (10, 20, 30)).save(folder / split / "good.png")
  (folder / "train" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  config = tiny_config(**{"data.name": "pix2pix_folder", "data.path": str(folder)})
  with pytest.raises(ValueError, match="broken.jpg"):
    train.prepare(config, str(tmp_path / "run"))


def test_workdir_of_another_config_is_refused_and_left_alone(tmp_path):
  workdir = tmp_path / "run"
  train.checkpointing.write_config(str(workdir), tiny_config())
  before = (workdir / "config.json").read_text()
  with pytest.raises(ValueError, match="different config .*student.ngf"):
    train.prepare(tiny_config(**{"student.ngf": 8}), str(workdir))
  assert (workdir / "config.json").read_text() == before
  # Fields that only change the length of a run may differ: that is how a run is extended.
  train.prepare(tiny_config(num_train_steps=10), str(workdir))


def test_cli_errors_are_one_line(tmp_path):
  workdir = tmp_path / "run"
  for args, message in [
      (["--config=configs/omgd.py", "--config.no_such_field=1"], "no_such_field"),
      (["--config=configs/omgd.py:unet_s99"], "unet_s99"),
      (["--config=configs/omgd.py:unet64", "--config.data.crop_size=48"], "power-of-two"),
  ]:
    result = _main([*args, f"--workdir={workdir}"])
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and message in lines[-1], result.stderr[-2000:]
    assert len([line for line in lines if line.startswith("error:")]) == 1
  assert not workdir.exists()
