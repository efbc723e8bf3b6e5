"""OMGD's fused adversarial gradients equal the reference's plain two-loss formulation."""

import jax
import jax.numpy as jnp
import numpy as np

from gankd_jax import parallel
from gankd_jax.losses import gan, image, perceptual
from gankd_jax.methods import build_method
from gankd_jax.methods.common import step_rng
from gankd_jax.methods.omgd import TEACHER_ROLES
from conftest import tiny_omgd_config
from test_train import fixed_batch, tiny_config


def reference_gradients(method, state, x, y):
  """As `backward_D_teacher` + `backward_G_teacher`: separate forwards, fakes detached for D."""
  cfg = method.loss_cfg
  d = state.discriminator

  def disc(params, pair, branch):
    (logits,), _ = method._run_discriminator(params, d.batch_stats, pair, (branch,))
    return logits

  def teacher_loss(params):
    total, fakes = 0.0, {}
    for branch, role in enumerate(TEACHER_ROLES):
      fake, _, _ = method._run_generator(role, params[role], getattr(state, role).batch_stats, x,
                                         step_rng(state))
      fakes[role] = fake
      total += cfg.lambda_gan * gan.generator_loss(
          cfg.gan_mode, disc(d.params, jnp.concatenate([x, fake], -1), branch))
      total += cfg.lambda_recon * image.l1(fake, y)
    return total, fakes

  def d_loss(params, fakes):
    total = 0.0
    for branch, role in enumerate(TEACHER_ROLES):
      fake = disc(params, jnp.concatenate([x, fakes[role]], -1), branch)
      real = disc(params, jnp.concatenate([x, y], -1), branch)
      total += gan.discriminator_loss(cfg.gan_mode, real, fake)
    return total

  params = {role: getattr(state, role).params for role in TEACHER_ROLES}
  (_, fakes), teacher_grads = jax.value_and_grad(teacher_loss, has_aux=True)(params)
  d_grads = jax.grad(d_loss)(d.params, jax.lax.stop_gradient(fakes))
  return teacher_grads, d_grads


def test_fused_adversarial_gradients_equal_the_reference_formulation():
  config = tiny_config(**{"discriminator.n_share": 3})  # Separate branch heads: both paths used.
  mesh = parallel.make_mesh(1)
  method = build_method(config)
  batch = fixed_batch(config, mesh)
  state = jax.jit(method.init_state)(jax.random.key(1), batch, {})
  adversarial = jax.jit(method._adversarial_gradients)(state, batch["A"], batch["B"])
  teacher_grads, d_grads = adversarial.generator_grads, adversarial.discriminator_grads
  expected_teacher, expected_d = jax.jit(reference_gradients, static_argnums=0)(
      method, state, batch["A"], batch["B"])
  for got, want in ((teacher_grads, expected_teacher), (d_grads, expected_d)):
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_vgg_weights_file_turns_the_perceptual_terms_on(tmp_path):
  from gankd_jax.models import vgg
  from gankd_jax.weights import torch_pth
  params = vgg.VGG16Features().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  state_dict = {}
  for name, index in vgg.TORCHVISION_CONV_INDEX.items():
    state_dict[f"features.{index}.weight"] = np.asarray(params[name]["kernel"]).transpose(3, 2, 0, 1)
    state_dict[f"features.{index}.bias"] = np.asarray(params[name]["bias"])
  path = tmp_path / "vgg16-397923af.pth"
  torch_pth.save_state_dict(path, state_dict)

  config = tiny_config(**{"vgg.weights": str(path), "loss.lambda_cd": 0.0})
  method = build_method(config)
  assert {"style", "feature"} <= set(method.active_losses())
  assert any(str(path) in note.text and note.level == "info" for note in method.notes())
  mesh = parallel.make_mesh(1)
  batch = fixed_batch(config, mesh)
  frozen = method.load_frozen()
  state = jax.jit(method.init_state)(jax.random.key(0), batch, frozen)
  jax.tree_util.tree_map(np.testing.assert_array_equal, frozen["vgg"], jax.device_get(params))
  _, metrics = jax.jit(method.train_step, static_argnums=3)(state, batch, frozen, False)
  assert np.isfinite(metrics["student/style"]) and np.isfinite(metrics["student/feature"])
  # The terms are the Gram / relu2_2 L1 of these VGG features, weighted, summed over teachers.
  targets = [jnp.tanh(batch["B"]), -jnp.tanh(batch["B"])]
  _, (terms, _, fake) = jax.jit(method._student_loss)(
      state.student.params, state.student.batch_stats, batch["A"], targets, None, frozen,
      step_rng(state))
  features = lambda images: method.vgg.apply({"params": frozen["vgg"]}, images)  # noqa: E731
  cfg = config.loss
  style = sum(cfg.lambda_style * perceptual.style_loss(features(fake), features(t)) for t in targets)
  feature = sum(cfg.lambda_feature * perceptual.feature_loss(features(fake), features(t))
                for t in targets)
  np.testing.assert_allclose(terms["student/style"], style, rtol=1e-5)
  np.testing.assert_allclose(terms["student/feature"], feature, rtol=1e-5)
  assert float(terms["student/style"]) > 0 and float(terms["student/feature"]) > 0


def test_missing_vgg_file_named_is_an_error():
  import pytest
  with pytest.raises(ValueError, match="vgg.weights: no such file: /nope/vgg.pth"):
    build_method(tiny_config(**{"vgg.weights": "/nope/vgg.pth"}))


def test_pixel_term_is_the_l1_from_the_student_to_each_teacher():
  config = tiny_config(**{"loss.lambda_pixel": 2.0, "loss.lambda_cd": 0.0})
  method = build_method(config)
  assert method.active_losses()["pixel"] == 2.0
  mesh = parallel.make_mesh(1)
  batch = fixed_batch(config, mesh)
  state = jax.jit(method.init_state)(jax.random.key(0), batch, {})
  targets = [jnp.tanh(batch["B"]), -jnp.tanh(batch["B"])]
  _, (metrics, _, fake) = jax.jit(method._student_loss)(
      state.student.params, state.student.batch_stats, batch["A"], targets, None,
      method.load_frozen(), step_rng(state))
  expected = sum(2.0 * jnp.mean(jnp.abs(fake - t)) for t in targets)
  np.testing.assert_allclose(metrics["student/pixel"], expected, rtol=1e-6)


def test_default_setup_starts_with_students_unlike_their_teachers():
  """The default (U-Net family, instance norm) evaluates like it trains: at step 0 each generator
  prints its own random image, not the flat grey of fresh batch-norm running statistics, so the
  student-teacher distances logged at step 0 are a real starting point."""
  config = tiny_omgd_config("", batch_size=2)  # The default variant, tiny widths.
  assert all(config[role].norm == "instance" for role in ("teacher_wide", "teacher_deep", "student"))
  method = build_method(config)
  batch = fixed_batch(config, parallel.make_mesh(1))
  state = jax.jit(method.init_state)(jax.random.key(0), batch, {})
  outputs = jax.jit(method.generate)(state, batch, {})
  for role, image_out in outputs.items():
    assert float(jnp.std(image_out)) > 0.05, role
  assert float(jnp.mean(jnp.abs(outputs["student"] - outputs["teacher_wide"]))) > 0.05
