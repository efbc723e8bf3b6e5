"""Aguinaldo et al. distillation (gankd_jax.methods.aguinaldo) on tiny DCGANs at 16x16 digits."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gankd_jax import stats, train
from gankd_jax.methods import build_method

from configs import aguinaldo as configs_aguinaldo
from conftest import tiny_aguinaldo_config


def tiny_config(variant, **overrides):
  return tiny_aguinaldo_config(variant, **overrides)


def init(method, config, seed=0):
  size = config.data.image_size
  batch = {"image": jnp.asarray(np.random.default_rng(seed).uniform(
      -1, 1, (config.batch_size, size, size, 1)), jnp.float32),
           "index": jnp.arange(config.batch_size, dtype=jnp.int32)}
  return jax.jit(method.init_state)(jax.random.key(seed), batch, {}), batch


def test_mse_distillation_drives_the_student_to_its_teacher_on_a_fixed_latent_batch():
  config = tiny_config("mse", **{"optimizer.lr": 3e-3, "optimizer.b1": 0.9, "optimizer.b2": 0.999})
  method = build_method(config)
  state, _ = init(method, config)
  teacher = state.teacher.variables()
  key = jax.random.key(7)  # The same key every step: the same latent batch.
  z = jax.random.normal(key, (config.batch_size, config.nz))

  @jax.jit
  def steps(student):
    def body(_, net):
      return method._mse_update(net, teacher, key, config.batch_size, config.optimizer.lr)[0]
    return jax.lax.fori_loop(0, 150, body, student)

  def distance(student):
    return float(jnp.mean(jnp.square(
        method.generator.apply(student.variables(), z, train=True, mutable=["batch_stats"])[0]
        - method.teacher_generator.apply(teacher, z, train=False))))

  before = distance(state.generator)
  after = distance(steps(state.generator))
  assert after < 0.1 * before, (before, after)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_joint_loss_is_the_convex_combination(alpha):
  # Hinge (no gradient penalty): the weights are the point here, and it compiles 3x faster.
  config = tiny_config("joint", **{"loss.alpha": alpha, "loss.gan": "hinge", "loss.n_critic": 1})
  method = build_method(config)
  state, batch = init(method, config)
  frozen = {"teacher": state.teacher.variables()}
  state = state.replace(teacher=None, teacher_discriminator=None)
  step = jax.jit(lambda s, b, f: method.train_step(s, b, f, ("student", True)))
  new_state, metrics = step(state, batch, frozen)
  expected = alpha * metrics["student/adversarial"] + (1 - alpha) * metrics["student/mse"]
  np.testing.assert_allclose(metrics["student/total"], expected, rtol=1e-5, atol=1e-6)
  # The weights reach the gradients: alpha = 1 ignores the teacher, alpha = 0 the critic.
  other_teacher = jax.tree_util.tree_map(lambda x: x * 1.5 + 0.01, frozen["teacher"])
  other_critic = state.replace(discriminator=state.discriminator.replace(
      params=jax.tree_util.tree_map(lambda x: -x, state.discriminator.params)))
  with_other_teacher = step(state, batch, {"teacher": other_teacher})[0].generator.params
  with_other_critic = step(other_critic, batch, frozen)[0].generator.params
  same = lambda a, b: all(np.allclose(x, y, atol=1e-7) for x, y in zip(
      jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
  assert same(with_other_teacher, new_state.generator.params) == (alpha == 1.0)
  assert same(with_other_critic, new_state.generator.params) == (alpha == 0.0)


def test_phases_count_critic_steps_and_the_in_run_teacher_first():
  config = tiny_config("joint", **{"teacher.num_train_steps": 10, "num_train_steps": 20})
  method = build_method(config)
  phases = [method.phase(s) for s in range(20)]
  assert phases[:5] == [("teacher", False)] * 4 + [("teacher", True)]
  assert phases[10:15] == [("student", False)] * 4 + [("student", True)]
  mse = build_method(tiny_config("mse", **{"teacher.num_train_steps": 10, "num_train_steps": 20}))
  assert [mse.phase(s) for s in (9, 10, 11)] == [("teacher", True), ("student", True), ("student", True)]
  assert build_method(tiny_config("scratch")).roles == ("student", "discriminator")
  assert build_method(tiny_config("teacher")).roles == ("teacher", "discriminator")


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("teacher"))
  summary = train.train_and_evaluate(tiny_config("teacher"), workdir)
  return workdir, summary


def test_teacher_run_is_loaded_frozen_and_distilled(teacher_run, tmp_path):
  teacher_dir, teacher_summary = teacher_run
  assert teacher_summary["steps"] == 4 and set(teacher_summary["networks"]) == {"teacher", "discriminator"}
  config = tiny_config("mse", **{"teacher.workdir": teacher_dir, "teacher.d": 0})
  method = build_method(config)
  assert stats.param_fingerprint(method.load_frozen()["teacher"]["params"]) == pytest.approx(
      teacher_summary["networks"]["teacher"]["param_fingerprint"])
  summary = train.train_and_evaluate(config, str(tmp_path / "student"))
  assert summary["networks"]["teacher"]["param_fingerprint"] == pytest.approx(
      teacher_summary["networks"]["teacher"]["param_fingerprint"])  # Frozen: unchanged.
  assert summary["networks"]["student"]["params"] < summary["networks"]["teacher"]["params"]
  assert summary["losses"] == {"mse": 1.0}
  assert os.path.exists(tmp_path / "student" / "samples" / "step_0000004.png")


def test_teacher_loading_errors_name_the_cause(teacher_run, tmp_path):
  teacher_dir, _ = teacher_run

  def error(**overrides):
    with pytest.raises(ValueError) as info:
      build_method(tiny_config("joint", **overrides))
    assert "\n" not in str(info.value)
    return str(info.value)

  assert "does not exist" in error(**{"teacher.workdir": str(tmp_path / "missing")})
  assert "no config.json" in error(**{"teacher.workdir": str(tmp_path)})
  other = tmp_path / "omgd_run"
  other.mkdir()
  (other / "config.json").write_text(json.dumps({"method": "omgd"}))
  assert "holds a 'omgd' run, not an aguinaldo teacher run" in error(**{"teacher.workdir": str(other)})
  message = error(**{"teacher.workdir": teacher_dir, "data.image_size": 32})
  assert "another image size (16x16 there, 32x32 in this run)" in message
  assert "another latent size nz (8 there, 16" in error(**{"teacher.workdir": teacher_dir, "nz": 16})
  assert "teacher depth scale d (4 there, 8" in error(**{"teacher.workdir": teacher_dir, "teacher.d": 8})
  assert "image channels (1 there, 3" in error(**{"teacher.workdir": teacher_dir, "data.channels": 3})
  empty = tmp_path / "no_ckpt"
  empty.mkdir()
  (empty / "config.json").write_text(
      (open(os.path.join(teacher_dir, "config.json")).read()))
  assert "has no committed checkpoint" in error(**{"teacher.workdir": str(empty)})


def test_bad_fields_are_one_line_errors_before_compute():
  cases = {
      ("loss.alpha", 1.5): "loss.alpha must be in [0, 1]",
      ("loss.alpha", -0.1): "loss.alpha must be in [0, 1]",
      ("student.d", 0): "student.d (the depth scale factor) must be a positive integer",
      ("teacher.d", -2): "teacher.d (the depth scale factor) must be a positive integer",
      ("data.image_size", 28): "power of two",
      ("mode", "kd"): "mode: unknown 'kd'",
      ("loss.gan", "wgan"): "loss.gan: unknown 'wgan'",
      ("discriminator.norm", "batch"): "cannot be used with loss.gan='wgan_gp'",
  }
  for (field, value), message in cases.items():
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)")):
      build_method(tiny_config("joint", **{field: value}))
  with pytest.raises(ValueError, match="teacher.num_train_steps"):
    build_method(tiny_config("mse", **{"teacher.num_train_steps": 4}))
  with pytest.raises(ValueError, match="unknown variant 'kd'"):
    configs_aguinaldo.get_config("kd")
