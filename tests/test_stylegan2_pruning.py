"""StyleGAN2 channel pruning (gankd_jax.models.stylegan2_pruning) on tiny generators: which
channels each criterion keeps, which slices the student gets, and that a student equals its
teacher where the teacher's pruned channels carried nothing (and at p = 0)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gankd_jax.models import stylegan2 as sg
from gankd_jax.models import stylegan2_pruning as pruning

RES = 16
KWARGS = dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=RES, img_channels=3,
              mapping_kwargs={"num_layers": 2},
              synthesis_kwargs={"channel_base": 128, "channel_max": 8})  # widths 8, 8, 8


def _generator(kwargs):
  return sg.generator_from_kwargs(kwargs)


@pytest.fixture(scope="module")
def teacher():
  g = _generator(KWARGS)
  variables = g.init(jax.random.PRNGKey(0), jnp.zeros((1, 8)), jnp.zeros((1, 0)))
  return g, jax.tree_util.tree_map(np.asarray, variables)


def _images(g, variables, z):
  return g.apply(variables, z, jnp.zeros((z.shape[0], 0)), noise_mode="const")


def test_maps_and_consumers_follow_the_reference_order():
  assert pruning.feature_maps(16) == [(4, "const"), (4, "conv1"), (8, "conv0"), (8, "conv1"),
                                      (16, "conv0"), (16, "conv1")]
  assert pruning.consumers(16) == [(4, "conv1"), (8, "conv0"), (8, "conv1"), (16, "conv0"),
                                   (16, "conv1"), (16, "torgb")]


def test_keep_masks_keep_the_highest_scores_ceil_of_one_minus_p():
  masks = pruning.keep_masks([np.array([3.0, 1.0, 2.0, 0.0, 5.0])], 0.5)
  # ceil(0.5 * 5) = 3 kept: the scores 5, 3, 2.
  np.testing.assert_array_equal(masks[0], [True, False, True, False, True])
  assert pruning.keep_masks([np.arange(7.0)], 0.9)[0].sum() == 1  # ceil(0.7) = 1
  assert pruning.keep_masks([np.arange(7.0)], 0.0)[0].all()
  for bad in (-0.1, 1.0):
    with pytest.raises(ValueError, match="pruning_ratio must be in"):
      pruning.keep_masks([np.arange(3.0)], bad)


def test_l1_scores_read_the_consumer_input_channels(teacher):
  _, variables = teacher
  params = jax.tree_util.tree_map(np.array, variables["params"])
  params["synthesis"]["b8"]["conv0"]["weight"][:, 5] *= 100.0  # map (4, conv1), channel 5
  scores = pruning.l1_scores(params, RES)
  assert [len(s) for s in scores] == [8] * 6
  assert int(np.argmax(scores[1])) == 5
  mask = pruning.keep_masks(scores, 0.9)[1]
  np.testing.assert_array_equal(np.flatnonzero(mask), [5])


def test_hand_made_masks_copy_the_right_slices(teacher):
  _, variables = teacher
  rng = np.random.default_rng(0)
  masks = [np.sort(rng.permutation(8)[:4]) for _ in range(6)]
  masks = [np.isin(np.arange(8), m) for m in masks]
  student = pruning.prune_generator(variables, masks, RES)
  t, s = variables["params"]["synthesis"], student["params"]["synthesis"]
  np.testing.assert_array_equal(s["b4"]["const"], t["b4"]["const"][masks[0]])
  # b8.conv1 reads map 2 (b8.conv0's output) and writes map 3.
  np.testing.assert_array_equal(s["b8"]["conv1"]["weight"],
                                t["b8"]["conv1"]["weight"][masks[3]][:, masks[2]])
  np.testing.assert_array_equal(s["b8"]["conv1"]["bias"], t["b8"]["conv1"]["bias"][masks[3]])
  np.testing.assert_array_equal(s["b8"]["conv1"]["affine"]["weight"],
                                t["b8"]["conv1"]["affine"]["weight"][masks[2]])
  np.testing.assert_array_equal(s["b16"]["torgb"]["weight"], t["b16"]["torgb"]["weight"][:, masks[5]])
  np.testing.assert_array_equal(s["b8"]["torgb"]["affine"]["bias"],
                                t["b8"]["torgb"]["affine"]["bias"][masks[3]])
  np.testing.assert_array_equal(s["b16"]["torgb"]["bias"], t["b16"]["torgb"]["bias"])
  # Mapping and buffers unchanged; shapes are those of a p = 0.5 student.
  np.testing.assert_array_equal(student["params"]["mapping"]["fc0"]["weight"],
                                variables["params"]["mapping"]["fc0"]["weight"])
  student_g = _generator(pruning.student_kwargs(KWARGS, 0.5))
  shapes = jax.eval_shape(lambda: student_g.init(jax.random.PRNGKey(1), jnp.zeros((1, 8)),
                                                 jnp.zeros((1, 0))))
  assert jax.tree_util.tree_map(lambda x: x.shape, shapes) == jax.tree_util.tree_map(
      lambda x: np.shape(x), student)


def test_student_equals_teacher_where_pruned_channels_carry_nothing(teacher):
  """Zero every weight that reads a pruned channel: the teacher's features no longer depend on
  those channels (modulation scales zeros, demodulation sums zeros), so the sliced student's
  block features must be the teacher's kept channels exactly. This checks every slice, conv by
  conv. The image differs by the reference's toRGB gain 1/sqrt(C_in), which is not
  demodulated: with every width halved, each toRGB's weighted sum grows by sqrt(2)."""
  g, variables = teacher
  masks = pruning.keep_masks(pruning.random_scores(variables["params"], RES, seed=3), 0.5)
  params = jax.tree_util.tree_map(np.array, variables["params"])
  synthesis = params["synthesis"]
  for mask, (res, name) in zip(masks, pruning.consumers(RES)):
    synthesis[f"b{res}"][name]["weight"][:, ~mask] = 0.0
  # Each block's toRGB reads the block's conv1 output (the intermediate ones too).
  for i, (res, name) in enumerate(pruning.feature_maps(RES)):
    if name == "conv1":
      synthesis[f"b{res}"]["torgb"]["weight"][:, ~masks[i]] = 0.0
  teacher_vars = {**variables, "params": params}
  student = pruning.prune_generator(teacher_vars, masks, RES)
  student_g = _generator(pruning.student_kwargs(KWARGS, 0.5))
  z = jax.random.normal(jax.random.PRNGKey(2), (3, 8))

  def run(gen, v):
    ws = gen.apply(v, z, jnp.zeros((3, 0)), method=lambda m, z, c: m.mapping(z, c))
    return gen.apply(v, ws, noise_mode="const", return_features=True,
                     method=lambda m, ws, **kw: m.synthesis(ws, **kw))

  img_t, feats_t = run(g, teacher_vars)
  img_s, feats_s = run(student_g, student)
  conv1_maps = [i for i, (_, name) in enumerate(pruning.feature_maps(RES)) if name == "conv1"]
  for res, index in zip((4, 8, 16), conv1_maps):
    np.testing.assert_allclose(feats_s[res], feats_t[res][..., masks[index]], rtol=1e-5,
                               atol=1e-6)
  biases = sum(synthesis[f"b{res}"]["torgb"]["bias"] for res in (4, 8, 16))
  np.testing.assert_allclose(img_s, np.sqrt(2.0) * img_t + (1 - np.sqrt(2.0)) * biases,
                             rtol=1e-5, atol=1e-5)


def test_p_zero_student_is_the_teacher(teacher):
  g, variables = teacher
  masks = pruning.keep_masks(pruning.l1_scores(variables["params"], RES), 0.0)
  student = pruning.prune_generator(variables, masks, RES)
  student_g = _generator(pruning.student_kwargs(KWARGS, 0.0))
  z = jax.random.normal(jax.random.PRNGKey(4), (2, 8))
  np.testing.assert_array_equal(_images(student_g, student, z), _images(g, variables, z))


def test_gradient_criteria(teacher):
  g, variables = teacher
  scores = pruning.score_channels("saliency", g, variables, seed=0, num_samples=2, batch_size=2)
  again = pruning.score_channels("saliency", g, variables, seed=0, num_samples=2, batch_size=2)
  assert [s.shape for s in scores] == [(8,)] * 6
  assert all(np.all(s >= 0) and np.any(s > 0) for s in scores)
  for a, b in zip(scores, again):
    np.testing.assert_array_equal(a, b)
  # The content-aware form only adds noise inside the user's mask: an empty mask scores 0.
  empty = pruning.score_channels("content_aware", g, variables, num_samples=2, batch_size=2,
                                 mask_fn=lambda images: jnp.zeros(images.shape[:3], bool))
  assert all(np.all(s == 0) for s in empty)
  with pytest.raises(ValueError, match="needs a mask function"):
    pruning.score_channels("content_aware", g, variables)
  with pytest.raises(ValueError, match="unknown pruning criterion 'l2'"):
    pruning.score_channels("l2", g, variables)


def test_pruned_widths_and_bad_ratio():
  g = _generator(pruning.student_kwargs(KWARGS, 0.9))
  shapes = jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), jnp.zeros((1, 8)),
                                         jnp.zeros((1, 0))))
  assert shapes["params"]["synthesis"]["b8"]["conv1"]["weight"].shape == (1, 1, 3, 3)
  with pytest.raises(ValueError, match="pruning_ratio must be in"):
    jax.eval_shape(lambda: _generator(pruning.student_kwargs(KWARGS, 1.0)).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 8)), jnp.zeros((1, 0))))
  with pytest.raises(ValueError, match="already pruned"):
    pruning.student_kwargs(pruning.student_kwargs(KWARGS, 0.5), 0.5)
