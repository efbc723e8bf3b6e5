"""NICKEL & DiME (gankd_jax.methods.nickel_dime) with a tiny reference teacher: the pruned start,
the fused step's terms, sizes at the paper's setup, bad input, and a tiny run through the shared
loop whose resume equals an uninterrupted run.

The teacher is tests/fixtures/make_stylegan2_fixtures.py's `uncond16` network pickle (a reference
G / D at 16 px, RGB), so the architecture fields below are that pickle's."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gankd_jax import model_stats, runs, train
from gankd_jax.methods import build_method

from configs import nickel_dime as nd_configs
from conftest import override

PICKLE = os.path.join(os.path.dirname(__file__), "fixtures", "stylegan2", "uncond16.pkl")
TINY = {
    "data.image_size": 16, "data.channels": 3, "generator.z_dim": 24, "generator.w_dim": 16,
    "generator.mapping_layers": 2, "generator.channel_base": 64, "generator.channel_max": 16,
    "generator.conv_clamp": 0, "discriminator.conv_clamp": 0, "discriminator.channel_base": 64,
    "discriminator.channel_max": 16, "discriminator.mbstd_group_size": 4,
    # Regularisers every step: one step variant to compile.
    "loss.pl_interval": 1, "loss.r1_interval": 1,
    "batch_size": 8, "teacher.network": PICKLE, "dime.num_target_samples": 64,
    "student.pruning_ratio": 0.5, "num_train_steps": 4, "log_every": 2, "eval_every": 100,
    "checkpoint_every": 2, "eval.max_examples": 8, "eval.batch_size": 8,
    "eval.num_sample_images": 4, "num_devices": 1, "eval.evaluators.fid.every": -1,
}


def tiny_config(**overrides):
  return override(nd_configs.get_config("small"), {**TINY, **overrides})


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


@pytest.mark.parametrize("overrides,message", [
    ({"student.pruning_ratio": 1.0}, r"student.pruning_ratio must be in \[0, 1\)"),
    ({"student.criterion": "l2"}, "student.criterion: unknown 'l2'"),
    ({"dime.form": "kl"}, "dime.form: unknown 'kl'"),
    ({"nickel.resolution": 16}, "nickel.resolution=16: the generator has no block output"),
    ({"nickel.resolution": 8, "nickel.levels": 4}, "nickel.levels=4 halves 8 px below 1 px"),
    ({"teacher.workdir": "/somewhere"}, "not both"),
    ({"dime.micro_batch": 3}, "dime.micro_batch=3 must divide batch_size=8"),
    ({"output_kd.perceptual": -1.0}, "output_kd.perceptual must be >= 0"),
    ({"output_kd.network.normalization": "tf"}, "output_kd.network.normalization: unknown 'tf'"),
])
def test_bad_fields_are_one_line_errors(overrides, message):
  with pytest.raises(ValueError, match=message):
    build_method(tiny_config(**overrides))


def test_bad_teachers_and_embeddings_before_any_compute(tmp_path):
  with pytest.raises(ValueError, match="no teacher: set --config.teacher.workdir"):
    build_method(tiny_config(**{"teacher.network": ""})).load_frozen()
  with pytest.raises(ValueError, match="teacher.network: no such network pickle"):
    build_method(tiny_config(**{"teacher.network": str(tmp_path / "no.pkl")})).load_frozen()
  # A teacher of another channel count than the config: the tensor is named.
  with pytest.raises(ValueError, match=r"uncond16.pkl:G_ema .* has shape"):
    build_method(tiny_config(**{"generator.channel_max": 8})).load_frozen()
  with pytest.raises(ValueError, match="dime.networks.digits.network: unknown 'resnet5'"):
    build_method(tiny_config(**{"dime.networks.digits.network": "resnet5"})).load_frozen()
  # A phi without weights names the file it needs and the field to set.
  with pytest.raises(ValueError, match=r"resnet50 needs weights .*--config.dime.networks.digits"
                                       r".weights=FILE"):
    build_method(tiny_config(**{"dime.networks.digits.network": "resnet50",
                                "dime.networks.digits.random_init": False})).load_frozen()


def test_small_phi_is_a_seeded_random_classifier_not_the_evaluator():
  """The small default's DiME phi (and output-KD network) is the digit classifier's architecture
  at random weights, asked for by name: the shipped weights are FID's features."""
  from gankd_jax.metrics import digit_classifier
  from gankd_jax.methods import nickel_dime
  config = nd_configs.get_config("small")
  assert config.eval.evaluators.fid.features == "digit_classifier"
  shipped = _leaves(digit_classifier.load_weights())
  first, again = (_leaves(nickel_dime.load_embedding("digits", config.dime.networks.digits)
                          .variables) for _ in range(2))
  assert [a.shape for a in first] == [a.shape for a in shipped]
  assert all(np.array_equal(a, b) for a, b in zip(first, again))
  assert not any(np.array_equal(a, b) for a, b in zip(first, shipped) if a.std() > 0)
  config.dime.networks.digits.weights = "x.npz"
  with pytest.raises(ValueError, match="dime.networks.digits: both weights=x.npz and random_init"):
    nickel_dime.load_embedding("digits", config.dime.networks.digits)


@pytest.fixture(scope="module")
def prepared():
  # With the output-KD terms of the experiment's output_kd arm (off by default).
  method = build_method(tiny_config(**{"output_kd.l1": 3.0, "output_kd.perceptual": 3.0}))
  frozen = method.load_frozen()
  batch = {"image": jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)),
                                jnp.float32), "index": jnp.arange(8, dtype=jnp.int32)}
  return method, frozen, batch


def test_student_starts_as_the_teachers_kept_slices(prepared):
  from gankd_jax.weights import network_pickle
  method, frozen, batch = prepared
  state = method.init_state(jax.random.key(0), batch, frozen)
  _, teacher = network_pickle.load_network(PICKLE, "G_ema")
  student = state.generator.params
  # Mapping copied (and trainable); a conv keeps ceil(0.5 * 16) = 8 of 16 channels.
  for a, b in zip(_leaves(student["mapping"]), _leaves(teacher["params"]["mapping"])):
    np.testing.assert_array_equal(a, b)
  assert student["synthesis"]["b4"]["conv1"]["weight"].shape == (8, 8, 3, 3)
  # D_T starts as the teacher's D; D_S does not.
  _, teacher_d = network_pickle.load_network(PICKLE, "D")
  for a, b in zip(_leaves(state.teacher_discriminator.params), _leaves(teacher_d["params"])):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(
      _leaves(state.discriminator.params["net"]), _leaves(teacher_d["params"])))


def test_p_zero_student_generates_the_teachers_images():
  method = build_method(tiny_config(**{"student.pruning_ratio": 0.0, "dime.form": "none"}))
  frozen = method.load_frozen()
  batch = {"image": jnp.zeros((4, 16, 16, 3)), "index": jnp.arange(4, dtype=jnp.int32)}
  state = method.init_state(jax.random.key(0), batch, frozen)
  outputs = method.generate(state, batch, frozen)
  np.testing.assert_array_equal(outputs["student"], outputs["teacher"])


def test_the_fused_step_reports_every_term_and_dime_targets_are_the_teachers(prepared):
  method, frozen, batch = prepared
  targets = frozen["targets"]["digits"]
  assert targets["first"].shape == (64,) and np.all(np.asarray(targets["second"]) >= 0)
  state = method.init_state(jax.random.key(0), batch, frozen)
  step = jax.jit(lambda s, b, f: method.train_step(s, b, f, (True, True)))
  new_state, metrics = step(state, batch, frozen)
  for name in ("G/adversarial_student_d", "G/adversarial_teacher_d", "G/dime_digits_first",
               "G/dime_digits_second", "G/pl_penalty", "D_S/adversarial", "D_S/nickel",
               "D_S/r1_penalty", "D_T/loss", "D_T/r1_penalty", "G/output_kd_l1",
               "G/output_kd_perceptual"):
    assert np.isfinite(metrics[name]), name
  assert float(metrics["D_S/nickel"]) > 0
  # Every trained network moved; the frozen teacher is not in the state.
  for old, new in ((state.generator.params, new_state.generator.params),
                   (state.discriminator.params, new_state.discriminator.params),
                   (state.teacher_discriminator.params, new_state.teacher_discriminator.params)):
    assert any(not np.array_equal(a, b) for a, b in zip(_leaves(old), _leaves(new)))


ALL_TERMS = {"output_kd.l1": 3.0, "output_kd.perceptual": 3.0}
NO_TERMS = {"dime.networks.digits.first_weight": 0.0, "dime.networks.digits.second_weight": 0.0,
            "nickel.weight": 0.0}
NO_REGULARISERS = {"loss.r1_gamma": 0.0, "loss.pl_weight": 0.0}  # Cheaper to compile.


def _one_step(overrides):
  method = build_method(tiny_config(**NO_REGULARISERS, **overrides))
  frozen = method.load_frozen()
  batch = {"image": jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (8, 16, 16, 3)),
                                jnp.float32), "index": jnp.arange(8, dtype=jnp.int32)}
  state = method.init_state(jax.random.key(0), batch, frozen)
  step = jax.jit(lambda s, b, f: method.train_step(s, b, f, method.phase(1)))
  return step, state, batch, frozen


def test_runs_that_differ_only_in_weights_share_one_compiled_step():
  """With weights_as_step_inputs, the experiment's arms lower to one program (so the persistent
  compilation cache compiles it once); as constants they do not."""
  def program(overrides):
    step, state, batch, frozen = _one_step(overrides)
    return step.lower(state, batch, frozen).as_text()
  inputs = {"weights_as_step_inputs": True}
  assert program({**inputs, **ALL_TERMS}) == program({**inputs, **NO_TERMS})
  assert program(ALL_TERMS) != program({**ALL_TERMS, **NO_TERMS})


def test_one_compiled_step_trains_each_arm_as_its_own_constant_weights():
  """One step compiled with weights as inputs, given each arm's weights, does what a step with
  those weights as constants does; a term of weight 0 is skipped at run time (reported as 0)."""
  step, state, batch, frozen = _one_step({**ALL_TERMS, "weights_as_step_inputs": True})
  adversarial = {**NO_TERMS, "output_kd.l1": 0.0, "output_kd.perceptual": 0.0}
  for weights in (ALL_TERMS, adversarial):
    constant_step, constant_state, _, constant_frozen = _one_step(weights)
    expected, expected_metrics = jax.device_get(constant_step(constant_state, batch,
                                                              constant_frozen))
    arm_weights = build_method(tiny_config(**weights)).loss_weights()
    got, metrics = jax.device_get(step(state, batch, {**frozen, "weights": jax.tree_util.tree_map(
        jnp.float32, arm_weights)}))
    for a, b in zip(_leaves(expected), _leaves(got)):
      np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-6)
    skipped = ("G/dime", "G/dime_digits_first", "G/dime_digits_second", "D_S/nickel",
               "G/output_kd_l1", "G/output_kd_perceptual")
    for name, value in expected_metrics.items():
      if weights is ALL_TERMS or name not in skipped:
        np.testing.assert_allclose(metrics[name], value, rtol=2e-5, atol=2e-6, err_msg=name)
    if weights is ALL_TERMS:
      assert all(float(metrics[name]) > 0 for name in skipped)
    else:
      assert all(float(metrics[name]) == 0.0 for name in skipped)


# Each term's value after STEPS fused steps over its first, at most: with 20 steps (measured
# last / first, in parentheses) DiME first 0.9 (0.80), second 0.85 (0.76), output-KD L1 0.95
# (0.90), perceptual 0.97 (0.93), G against D_T 0.8 (0.57), D_S's adversarial loss 0.85 (0.72),
# NICKEL 0.9 (0.77), D_T's loss 0.8 (0.56). A term whose gradient is dropped does not get there:
# DiME first at weight 0 ends at 1.13, second at weight 0 at 0.90 (it follows first somewhat).
STEPS = 20
MAX_RATIOS = {"G/dime_digits_first": 0.9, "G/dime_digits_second": 0.85, "G/output_kd_l1": 0.95,
              "G/output_kd_perceptual": 0.97, "G/adversarial_teacher_d": 0.8,
              "D_S/adversarial": 0.85, "D_S/nickel": 0.9, "D_T/loss": 0.8}


def test_the_fused_step_lowers_each_term_on_a_fixed_batch(prepared):
  """Each player's terms fall while it trains alone: the same reals and the same step key
  (state.step held at 0) every step; for G's terms D_S and D_T are put back to their start
  after each step, for the discriminators' terms G is. G against D_S is not checked: with
  DiME at weight 40 it is the smallest pull on G and rises (to 1.08 of its start)."""
  method, frozen, batch = prepared
  start = method.init_state(jax.random.key(0), batch, frozen)
  # The phase (and program) of the test above, so the compilation is shared.
  step = jax.jit(lambda s, b, f: method.train_step(s, b, f, (True, True)))
  g_alone, ds_alone, values = start, start, {}
  for _ in range(STEPS):
    g_alone, metrics = step(g_alone, batch, frozen)
    g_alone = g_alone.replace(step=start.step, discriminator=start.discriminator,
                              teacher_discriminator=start.teacher_discriminator)
    for name in ("G/loss", *(k for k in MAX_RATIOS if k.startswith("G/"))):
      values.setdefault(name, []).append(float(metrics[name]))
    ds_alone, metrics = step(ds_alone, batch, frozen)
    ds_alone = ds_alone.replace(step=start.step, generator=start.generator,
                                generator_ema=start.generator_ema, pl_mean=start.pl_mean)
    for name in (k for k in MAX_RATIOS if k.startswith("D")):
      values.setdefault(name, []).append(float(metrics[name]))
  assert values["G/loss"][-1] < values["G/loss"][0]
  for name, max_ratio in MAX_RATIOS.items():
    first, last = values[name][0], values[name][-1]
    assert first > 0 and last / first < max_ratio, (name, values[name])


def test_paper_setup_sizes_match_the_papers_macs_reduction():
  """paper256 teacher at p = 0.9: the paper reports 98.92 % fewer MACs (FIR filters apart)."""
  result = model_stats.compute(nd_configs.get_config("ffhq256_p90"))
  student, teacher = (result["networks"][r]["macs"] for r in ("student", "teacher"))
  assert 100 * (1 - student / teacher) == pytest.approx(98.92, abs=0.02)


def test_resume_equals_an_uninterrupted_run(tmp_path):
  config = tiny_config(**{"loss.r1_gamma": 0.0, "loss.pl_weight": 0.0})  # One step variant.
  whole = str(tmp_path / "whole")
  summary = train.train_and_evaluate(config, whole)
  assert summary["steps"] == 4
  parts = str(tmp_path / "parts")
  train.train_and_evaluate(config, parts, stop_after_steps=2)
  train.train_and_evaluate(config, parts)
  for a, b in zip(_leaves(runs.restore_run(whole).state), _leaves(runs.restore_run(parts).state)):
    np.testing.assert_array_equal(a, b)
