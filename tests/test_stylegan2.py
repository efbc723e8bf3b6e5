"""StyleGAN2 training (gankd_jax.methods.stylegan2): the loss terms on hand-checkable cases, the
lazy-regularisation optimiser and schedule, and tiny runs through the shared loop (resume equals
an uninterrupted run)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from PIL import Image

from gankd_jax import generate, runs, train
from gankd_jax.methods import build_method
from gankd_jax.methods import stylegan2 as sg2

from configs import stylegan2 as configs_stylegan2
from conftest import override

TINY_STYLEGAN2 = {
    "data.image_size": 16, "generator.z_dim": 8, "generator.w_dim": 8,
    "generator.mapping_layers": 2, "generator.channel_base": 64, "generator.channel_max": 16,
    "discriminator.channel_base": 64, "discriminator.channel_max": 16,
    "discriminator.mbstd_group_size": 4, "loss.pl_interval": 1, "loss.r1_interval": 1,  # one step variant to compile
    "batch_size": 8, "num_train_steps": 4, "log_every": 2, "eval_every": 100,
    "checkpoint_every": 2, "eval.max_examples": 8, "eval.batch_size": 8,
    "eval.num_sample_images": 4, "num_devices": 1, "eval.evaluators.fid.every": -1,
}


def tiny_config(**overrides):
  return override(configs_stylegan2.get_config("small"), {**TINY_STYLEGAN2, **overrides})


# ------------------------------------------------------------------------------ loss terms
def test_r1_penalty_of_a_linear_discriminator_is_its_squared_weight_norm():
  weights = jnp.asarray(np.random.default_rng(0).normal(size=(4, 4, 3)), jnp.float32)
  real = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 4, 3)), jnp.float32)
  penalty = sg2.r1_penalty(lambda x: jnp.sum(x * weights, axis=(1, 2, 3)), real)
  np.testing.assert_allclose(penalty, [np.sum(np.square(weights))] * 2, rtol=1e-5)


def test_path_lengths_of_a_linear_synthesis_by_hand():
  rng = np.random.default_rng(0)
  n, num_ws, w_dim, h, w, c = 3, 2, 5, 2, 3, 1
  matrices = rng.normal(size=(num_ws, w_dim, h * w * c)).astype(np.float32)

  def synthesis(ws):
    return jnp.einsum("nkd,kdp->np", ws, matrices).reshape(n, h, w, c)

  ws = jnp.asarray(rng.normal(size=(n, num_ws, w_dim)), jnp.float32)
  key = jax.random.key(3)
  lengths = sg2.path_lengths(synthesis, ws, key)
  y = np.asarray(jax.random.normal(key, (n, h, w, c))).reshape(n, -1) / np.sqrt(h * w)
  jacobian_t_y = np.einsum("np,kdp->nkd", y, matrices)  # d<img, y>/d ws
  expected = np.sqrt(np.mean(np.sum(jacobian_t_y ** 2, axis=2), axis=1))
  np.testing.assert_allclose(lengths, expected, rtol=1e-5)


def test_path_length_penalty_moves_the_mean_and_keeps_its_gradient():
  lengths, pl_mean, decay = jnp.asarray([1.0, 2.0, 4.0]), jnp.asarray(0.5), 0.1
  penalty, new_mean = sg2.path_length_penalty(lengths, pl_mean, decay)
  expected_mean = 0.5 + 0.1 * (7.0 / 3 - 0.5)
  np.testing.assert_allclose(new_mean, expected_mean, rtol=1e-6)
  np.testing.assert_allclose(penalty, (np.asarray([1.0, 2.0, 4.0]) - expected_mean) ** 2,
                             rtol=1e-6)
  # Not detached (as the reference): d/dl_i sum_j (l_j - m')^2 with dm'/dl_i = decay / N.
  grad = jax.grad(lambda l: jnp.sum(sg2.path_length_penalty(l, pl_mean, decay)[0]))(lengths)
  residual = np.asarray(lengths) - expected_mean
  np.testing.assert_allclose(grad, 2 * residual - 2 * residual.sum() * decay / 3, rtol=1e-5)


def test_ema_beta_half_life_and_ramp_up():
  beta = sg2.ema_beta(jnp.asarray(100), 32, ema_kimg=10.0, rampup=0.0)
  np.testing.assert_allclose(beta, 0.5 ** (32 / 10_000), rtol=1e-6)
  assert float(sg2.ema_beta(jnp.asarray(0), 32, ema_kimg=10.0, rampup=0.05)) == 0.0  # G_ema = G.
  ramped = sg2.ema_beta(jnp.asarray(100), 32, ema_kimg=10.0, rampup=0.05)
  np.testing.assert_allclose(ramped, 0.5 ** (32 / (100 * 32 * 0.05)), rtol=1e-6)


def test_lazy_adam_rescales_lr_and_betas():
  config = configs_stylegan2.get_config().optimizer
  tx = sg2.lazy_adam(config, interval=4)
  params = {"w": jnp.zeros(3)}
  grads = {"w": jnp.asarray([0.5, -2.0, 1e-3])}
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)
  # b1 = 0: the first Adam step is lr' * g / (|g| + eps), lr' = lr * 4/5.
  np.testing.assert_allclose(updates["w"], -0.0025 * 0.8 * np.sign([0.5, -2.0, 1e-3]),
                             rtol=1e-4)
  adam_state = state[0]
  np.testing.assert_allclose(adam_state.nu["w"], (1 - 0.99 ** 0.8) * np.square([0.5, -2.0, 1e-3]),
                             rtol=1e-5)


def test_phases_follow_the_lazy_intervals():
  method = build_method(tiny_config(**{"loss.pl_interval": 4, "loss.r1_interval": 16}))
  assert [method.phase(s) for s in (0, 1, 4, 16)] == [
      (True, True), (False, False), (True, False), (True, True)]
  no_reg = build_method(tiny_config(**{"loss.pl_weight": 0.0, "loss.r1_gamma": 0.0}))
  assert no_reg.phase(0) == (False, False)


@pytest.mark.parametrize("field, value, message", [
    ("loss.r1_interval", 0, "loss.r1_interval must be a positive integer"),
    ("loss.pl_weight", -1.0, "loss.pl_weight must be >= 0"),
    ("loss.style_mixing_prob", 1.5, "loss.style_mixing_prob must be in [0, 1]"),
    ("generator.z_dim", 0, "generator.z_dim must be a positive integer"),
    ("data.image_size", 24, "power of two"),
    ("generator.channel_base", 0, "channel_base"),
])
def test_bad_fields_are_one_line_errors(field, value, message):
  with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")) as error:
    build_method(tiny_config(**{field: value}))
  assert "\n" not in str(error.value)


# ------------------------------------------------------------------------------ tiny runs
def _leaves(state):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
  """A tiny uninterrupted run of 4 steps, every phase at every step."""
  workdir = str(tmp_path_factory.mktemp("stylegan2") / "whole")
  summary = train.train_and_evaluate(tiny_config(), workdir)
  return workdir, summary


def test_a_tiny_run_trains_every_phase_and_tracks_w_avg(whole_run):
  workdir, summary = whole_run
  assert summary["steps"] == 4
  run = runs.restore_run(workdir)
  state = run.state
  w_avg = state.generator.batch_stats["mapping"]["w_avg"]  # Starts at 0, as the reference's.
  assert np.all(np.isfinite(w_avg)) and np.any(w_avg != 0)
  assert float(state.pl_mean) > 0  # The path-length phase ran.
  # G_ema lags G (ramp-up from G_ema = G at step 0).
  g, ema = _leaves(state.generator.params), _leaves(state.generator_ema["params"])
  assert any(not np.array_equal(a, b) for a, b in zip(g, ema))
  outputs = jax.jit(run.method.generate)(state, {"index": jnp.arange(4, dtype=jnp.int32)},
                                         run.frozen)
  assert outputs["generator"].shape == (4, 16, 16, 1)


def test_resume_equals_an_uninterrupted_run(whole_run, tmp_path):
  workdir, _ = whole_run
  train.train_and_evaluate(tiny_config(), str(tmp_path / "parts"), stop_after_steps=2)
  train.train_and_evaluate(tiny_config(), str(tmp_path / "parts"))
  whole = runs.restore_run(workdir).state
  parts = runs.restore_run(str(tmp_path / "parts")).state
  for a, b in zip(_leaves(whole), _leaves(parts)):
    np.testing.assert_array_equal(a, b)


def test_generate_writes_a_runs_ema_generator_as_the_reference_would(whole_run, tmp_path):
  workdir, _ = whole_run
  paths = generate.generate(workdir, [0, 3], str(tmp_path / "out"))
  assert [os.path.basename(p) for p in paths] == ["seed0000.png", "seed0003.png"]
  run = runs.restore_run(workdir)
  z = np.random.RandomState(3).randn(1, 8).astype(np.float32)
  image = run.method.generator.apply(run.state.generator_ema, z, np.zeros((1, 0), np.float32),
                                     noise_mode="const")
  expected = (np.asarray(image)[0, :, :, 0] * 127.5 + 128).clip(0, 255).astype(np.uint8)
  np.testing.assert_array_equal(np.asarray(Image.open(paths[1])), expected)
  with pytest.raises(ValueError, match="no generator role 'student'"):
    generate.generate(f"{workdir}:student", [0], str(tmp_path / "out"))


FIXTURE_PICKLE = os.path.join(os.path.dirname(__file__), "fixtures", "stylegan2", "uncond16.pkl")
# tests/fixtures/make_stylegan2_fixtures.py's `uncond16`: a reference G / D at 16 px, RGB.
UNCOND16 = {"data.channels": 3, "generator.z_dim": 24, "generator.w_dim": 16,
            "generator.conv_clamp": 0, "discriminator.conv_clamp": 0, "init_from": FIXTURE_PICKLE}


def test_training_starts_from_a_network_pickle():
  from gankd_jax.weights import network_pickle
  method = build_method(tiny_config(**UNCOND16))
  frozen = method.load_frozen()
  state = method.init_state(jax.random.key(0), {"image": jnp.zeros((1, 16, 16, 3))}, frozen)
  for which, variables in (("G", {"params": state.generator.params,
                                  "buffers": state.generator.batch_stats}),
                           ("G_ema", state.generator_ema),
                           ("D", {"params": state.discriminator.params})):
    _, expected = network_pickle.load_network(FIXTURE_PICKLE, which)
    for a, b in zip(_leaves(variables), _leaves(expected)):
      np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match=r"uncond16.pkl:G .*mapping.fc0.weight has shape"):
    build_method(tiny_config(**{**UNCOND16, "generator.z_dim": 8})).load_frozen()
  with pytest.raises(ValueError, match="init_from: no such network pickle"):
    build_method(tiny_config(init_from="missing.pkl")).load_frozen()
  assert not build_method(tiny_config(init_from="missing.pkl")).load_frozen(restoring=True)
