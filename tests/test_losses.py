"""Tests for the OMGD losses: GAN, SSIM/PSNR/L1/TV, Gram/style/feature, channel distillation."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from gankd_jax.losses.distill import ChannelConnector, channel_distillation_loss
from gankd_jax.losses.gan import discriminator_loss, generator_loss
from gankd_jax.losses.image import l1, psnr, ssim, ssim_map, ssim_per_image, total_variation
from gankd_jax.losses.perceptual import feature_loss, gram_matrix, style_loss


# ----------------------------------------------------------------------------- GAN losses

def test_hinge_losses_by_hand():
  real, fake = jnp.array([2.0, 0.5]), jnp.array([-2.0, 0.5])
  # real: mean(relu(1 - r)) = 0.25, fake: mean(relu(1 + f)) = 0.75, D = 0.5 * (0.25 + 0.75)
  assert float(discriminator_loss("hinge", real, fake)) == pytest.approx(0.5)
  assert float(generator_loss("hinge", fake)) == pytest.approx(0.75)


def test_lsgan_losses_by_hand():
  real, fake = jnp.array([1.0, 0.0]), jnp.array([0.0, 2.0])
  assert float(discriminator_loss("lsgan", real, fake)) == pytest.approx(0.5 * (0.5 + 2.0))
  assert float(generator_loss("lsgan", fake)) == pytest.approx(1.0)


def test_vanilla_losses_by_hand_and_stable():
  zero = jnp.zeros((2, 3, 3, 1))
  assert float(discriminator_loss("vanilla", zero, zero)) == pytest.approx(math.log(2.0), rel=1e-6)
  assert float(generator_loss("vanilla", zero)) == pytest.approx(math.log(2.0), rel=1e-6)
  logits = jnp.array([-3.0, 0.7, 5.0])
  expected_fake = np.mean(-np.log(1.0 - 1.0 / (1.0 + np.exp(-np.array(logits, np.float64)))))
  expected_gen = np.mean(-np.log(1.0 / (1.0 + np.exp(-np.array(logits, np.float64)))))
  assert float(generator_loss("vanilla", logits)) == pytest.approx(expected_gen, rel=1e-5)
  assert float(discriminator_loss("vanilla", logits, logits)) == pytest.approx(
      0.5 * (expected_gen + expected_fake), rel=1e-5)
  extreme = discriminator_loss("vanilla", jnp.array([200.0]), jnp.array([-200.0]))
  assert np.isfinite(float(extreme)) and float(extreme) < 1e-30


def test_list_of_logits_is_mean_of_per_output_losses():
  a, b = jnp.array([0.2, -0.4]), jnp.array([[1.5]])
  for kind in ("hinge", "lsgan", "vanilla"):
    expected = 0.5 * (generator_loss(kind, a) + generator_loss(kind, b))
    assert float(generator_loss(kind, [a, b])) == pytest.approx(float(expected), rel=1e-6)


def test_unknown_gan_kind_raises():
  with pytest.raises(ValueError, match="wgan"):
    discriminator_loss("wgan", jnp.zeros(2), jnp.zeros(2))
  with pytest.raises(ValueError, match="unknown GAN loss kind"):
    generator_loss("bce", jnp.zeros(2))


def test_gan_losses_jit_and_grad():
  grad = jax.jit(jax.grad(lambda f: generator_loss("hinge", f)))(jnp.ones((2, 4)))
  np.testing.assert_allclose(grad, -np.ones((2, 4)) / 8)


# ----------------------------------------------------------------------------- SSIM and friends

def _reference_ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Independent float64 SSIM: full 2-D Gaussian window, scipy correlate, zero padding."""
  taps = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
  taps /= taps.sum()
  window = np.outer(taps, taps)
  out = np.empty(a.shape, np.float64)
  for n in range(a.shape[0]):
    for c in range(a.shape[-1]):
      x, y = a[n, :, :, c].astype(np.float64), b[n, :, :, c].astype(np.float64)
      blur = lambda z: ndimage.correlate(z, window, mode="constant", cval=0.0)  # noqa: E731
      mu_x, mu_y = blur(x), blur(y)
      var_x = blur(x * x) - mu_x**2
      var_y = blur(y * y) - mu_y**2
      cov = blur(x * y) - mu_x * mu_y
      c1, c2 = 0.01**2, 0.03**2
      out[n, :, :, c] = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
          (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
  return out


def _structured_pair():
  yy, xx = np.meshgrid(np.linspace(-1, 1, 24), np.linspace(-1, 1, 30), indexing="ij")
  a = np.stack([np.sin(4 * xx) * np.cos(3 * yy), (xx > 0.1).astype(float) * 2 - 1, xx * yy], -1)
  b = np.stack([np.sin(4 * xx + 0.3) * np.cos(3 * yy), np.tanh(5 * xx), -xx * yy], -1)
  return a[None].astype(np.float32), b[None].astype(np.float32)


@pytest.mark.parametrize("case", ["random", "noisy_copy", "structured"])
def test_ssim_matches_scipy_reference(case):
  rng = np.random.default_rng(0)
  if case == "random":
    a = rng.uniform(-1, 1, (2, 19, 23, 3)).astype(np.float32)
    b = rng.uniform(-1, 1, (2, 19, 23, 3)).astype(np.float32)
  elif case == "noisy_copy":
    a = rng.uniform(-1, 1, (2, 20, 20, 3)).astype(np.float32)
    b = np.clip(a + 0.2 * rng.normal(size=a.shape), -1, 1).astype(np.float32)
  else:
    a, b = _structured_pair()
  reference = _reference_ssim_map(a, b)
  # Per pixel, float32 cancellation in E[x^2] - E[x]^2 on flat regions limits agreement.
  np.testing.assert_allclose(np.asarray(ssim_map(a, b)), reference, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(float(ssim(a, b)), reference.mean(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(ssim_per_image(a, b)), reference.mean(axis=(1, 2, 3)),
                             rtol=1e-5, atol=1e-6)


def test_ssim_properties():
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
  assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
  y = np.clip(x + 0.1 * rng.normal(size=x.shape), -1, 1).astype(np.float32)
  z = np.clip(x + 0.5 * rng.normal(size=x.shape), -1, 1).astype(np.float32)
  assert float(ssim(x, y)) == pytest.approx(float(ssim(y, x)), abs=1e-7)
  assert 1.0 > float(ssim(x, y)) > float(ssim(x, z)) > -1.0
  values = np.asarray(ssim_map(x, -x))
  assert values.min() >= -1.0 - 1e-6 and values.max() <= 1.0 + 1e-6
  assert ssim_per_image(x, y).shape == (3,)


def test_ssim_gradient_matches_central_differences():
  """The jitted gradient of 1 - SSIM against a float32 central difference (eps 1e-2: measured
  error ~1e-5 against entries of 3e-3..5e-2) on 8 coordinates, and zero where a == b (the max)."""
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (1, 12, 12, 2)).astype(np.float32)
  y = np.clip(x + 0.3 * rng.normal(size=x.shape), -1, 1).astype(np.float32)
  loss = jax.jit(lambda s: 1.0 - ssim(s, y))
  value, grad = jax.jit(jax.value_and_grad(lambda s: 1.0 - ssim(s, y)))(x)
  assert float(value) == pytest.approx(float(loss(x)), abs=1e-7)
  grad = np.asarray(grad)
  eps = 1e-2
  picked, numeric = [], []
  for flat in rng.choice(x.size, 8, replace=False):
    index = np.unravel_index(flat, x.shape)
    step = np.zeros_like(x)
    step[index] = eps
    picked.append(grad[index])
    numeric.append((float(loss(x + step)) - float(loss(x - step))) / (2 * eps))
  assert np.min(np.abs(picked)) > 1e-3  # entries well above the tolerance below
  np.testing.assert_allclose(picked, numeric, rtol=1e-2, atol=1e-4)
  at_max = jax.grad(lambda s: 1.0 - ssim(s, y))(jnp.asarray(y))
  np.testing.assert_allclose(np.asarray(at_max), 0.0, atol=1e-6)


def test_ssim_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="same shape"):
    ssim(jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 8, 1)))


def test_psnr_l1_by_hand():
  a, b = jnp.zeros((2, 4, 4, 3)), jnp.full((2, 4, 4, 3), 0.5)
  np.testing.assert_allclose(np.asarray(psnr(a, b)), [10 * math.log10(16.0)] * 2, rtol=1e-6)
  assert float(psnr(a, b, data_range=1.0)[0]) == pytest.approx(10 * math.log10(4.0), rel=1e-6)
  assert np.isinf(np.asarray(psnr(a, a))).all()
  assert float(l1(a, b)) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="same shape"):
    l1(a, b[:, :2])


def test_total_variation_by_hand():
  image = jnp.array([[[0.0], [1.0]], [[3.0], [5.0]]])[None]  # 1x2x2x1
  # horizontal |1-0| + |5-3| = 3, vertical |3-0| + |5-1| = 7
  assert float(total_variation(image)) == pytest.approx(10.0)
  batch = jnp.concatenate([image, 2 * image], axis=0)
  assert float(total_variation(batch)) == pytest.approx(30.0)
  two_channels = jnp.concatenate([image, -image], axis=-1)
  assert float(total_variation(two_channels)) == pytest.approx(20.0)


# ----------------------------------------------------------------------------- perceptual

def test_gram_matrix_by_hand():
  features = jnp.array([[[[1.0, 2.0], [3.0, 4.0]]]])  # N=1, H=1, W=2, C=2
  expected = np.array([[10.0, 14.0], [14.0, 20.0]]) / (2 * 1 * 2)
  np.testing.assert_allclose(np.asarray(gram_matrix(features))[0], expected, rtol=1e-6)


def test_style_and_feature_losses_by_hand():
  student = {name: jnp.full((2, 3, 3, 2), value) for name, value in
             zip(("relu1_2", "relu2_2", "relu3_3", "relu4_3"), (1.0, 2.0, 3.0, 4.0))}
  teacher = {name: jnp.zeros((2, 3, 3, 2)) for name in student}
  # Gram of a constant v map: every entry (H*W*v^2) / (C*H*W) = v^2 / 2; teacher 0.
  assert float(style_loss(student, teacher)) == pytest.approx((1 + 4 + 9 + 16) / 2)
  assert float(style_loss(student, teacher, layers=("relu2_2",))) == pytest.approx(2.0)
  assert float(feature_loss(student, teacher)) == pytest.approx(2.0)  # relu2_2 only
  with pytest.raises(ValueError, match="relu5_3"):
    feature_loss(student, teacher, layer="relu5_3")


def test_style_loss_is_a_gram_l1_by_hand():
  """Identical features: exactly 0. Different ones: the mean |Gram difference|, summed over layers.
  Gram ignores where a pixel is, so a spatial permutation has no style loss."""
  rng = np.random.default_rng(0)
  random = {"relu1_2": jnp.asarray(rng.normal(size=(2, 3, 3, 4)), jnp.float32)}
  assert float(style_loss(random, dict(random), layers=("relu1_2",))) == 0.0
  flipped = {"relu1_2": random["relu1_2"][:, ::-1, ::-1]}
  assert float(style_loss(random, flipped, layers=("relu1_2",))) == pytest.approx(0.0, abs=1e-6)
  # N=1, H=1, W=2, C=2; Gram = F^T F / (C*H*W) = F^T F / 4.
  student = {"relu1_2": jnp.array([[[[1.0, 2.0], [3.0, 4.0]]]]),   # [[10, 14], [14, 20]] / 4
             "relu2_2": jnp.array([[[[1.0, -1.0], [2.0, 0.0]]]])}  # [[5, -1], [-1, 1]] / 4
  teacher = {"relu1_2": jnp.array([[[[1.0, 0.0], [0.0, 1.0]]]]),   # [[1, 0], [0, 1]] / 4
             "relu2_2": jnp.zeros((1, 1, 2, 2))}
  # relu1_2: mean(|[[9, 14], [14, 19]]| / 4) = 56 / 16 = 3.5; relu2_2: mean([[5, 1], [1, 1]] / 4) = 0.5
  assert float(style_loss(student, teacher, layers=("relu1_2",))) == pytest.approx(3.5)
  assert float(style_loss(student, teacher, layers=("relu2_2",))) == pytest.approx(0.5)
  assert float(style_loss(student, teacher, layers=("relu1_2", "relu2_2"))) == pytest.approx(4.0)
  assert float(style_loss(teacher, student, layers=("relu1_2", "relu2_2"))) == pytest.approx(4.0)



def test_gram_gradient_is_the_einsums_and_two_teachers_share_one_student_gram():
  """gram_matrix's own VJP (one product with the symmetrised cotangent) equals autodiff of the
  plain einsum, for a cotangent that is not symmetric; the style loss of a student against two
  teachers through one `gram_matrices` equals the sum of two `style_loss`es, gradient included."""
  from gankd_jax.losses import perceptual
  rng = np.random.default_rng(1)
  features = jnp.asarray(rng.normal(size=(2, 3, 4, 5)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(2, 5, 5)), jnp.float32)

  def einsum_gram(f):
    flat = f.reshape(2, 12, 5)
    return jnp.einsum("npc,npd->ncd", flat, flat, precision="highest") / (5 * 12)
  for gram in (gram_matrix, einsum_gram):
    np.testing.assert_allclose(gram(features), einsum_gram(features), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(lambda f: jnp.sum(jnp.sin(gram_matrix(f)) * weights))(features),
                             jax.grad(lambda f: jnp.sum(jnp.sin(einsum_gram(f)) * weights))(features),
                             rtol=1e-5, atol=1e-6)
  student = {layer: jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
             for layer in perceptual.STYLE_LAYERS}
  teachers = [{layer: jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
               for layer in perceptual.STYLE_LAYERS} for _ in range(2)]

  def shared(s):
    grams = perceptual.gram_matrices(s)
    return sum(perceptual.gram_style_loss(grams, perceptual.gram_matrices(t, side="teacher"))
               for t in teachers)

  def separate(s):
    return sum(style_loss(s, t) for t in teachers)
  np.testing.assert_allclose(shared(student), separate(student), rtol=1e-6)
  for got, want in zip(jax.tree_util.tree_leaves(jax.grad(shared)(student)),
                       jax.tree_util.tree_leaves(jax.grad(separate)(student))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- channel distillation

def test_channel_connector_shapes_init_and_forward():
  connector = ChannelConnector(teacher_channels=64)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 5, 5, 16))
  variables = connector.init(jax.random.PRNGKey(1), x, train=False)
  kernel = variables["params"]["conv"]["kernel"]
  scale = variables["params"]["norm"]["scale"]
  assert kernel.shape == (1, 1, 16, 64) and "bias" not in variables["params"]["conv"]
  assert abs(float(jnp.std(kernel)) - 0.02) < 0.003
  assert abs(float(jnp.mean(scale)) - 1.0) < 0.01 and 0.01 < float(jnp.std(scale)) < 0.03
  np.testing.assert_array_equal(variables["params"]["norm"]["bias"], 0.0)
  out, updates = connector.apply(variables, x, train=True, mutable=["batch_stats"])
  mapped = np.einsum("nhwc,cd->nhwd", np.asarray(x, np.float64), np.asarray(kernel[0, 0], np.float64))
  mean, var = mapped.mean(axis=(0, 1, 2)), mapped.var(axis=(0, 1, 2))
  expected = np.maximum((mapped - mean) / np.sqrt(var + 1e-5) * np.asarray(scale), 0.0)
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["norm"]["mean"], 0.1 * mean, rtol=1e-4, atol=1e-6)


def test_channel_distillation_loss_by_hand():
  student_a = jnp.array([[[[1.0, 2.0], [3.0, 6.0]]]])  # N=1, H=1, W=2, C=2 -> GAP (2, 4)
  teacher_a = jnp.zeros((1, 4, 4, 2))  # different spatial size is allowed
  student_b = jnp.ones((2, 2, 2, 1))
  teacher_b = jnp.full((2, 3, 3, 1), 3.0)
  # layer a: mean((2-0)^2, (4-0)^2) = 10; layer b: mean((1-3)^2) = 4
  loss = channel_distillation_loss([student_a, student_b], [teacher_a, teacher_b])
  assert float(loss) == pytest.approx(14.0)
  teacher_grad = jax.grad(lambda t: channel_distillation_loss([student_b], [t]))(teacher_b)
  np.testing.assert_array_equal(teacher_grad, 0.0)


def test_channel_distillation_loss_rejects_mismatch():
  with pytest.raises(ValueError, match="layer 0"):
    channel_distillation_loss([jnp.zeros((1, 2, 2, 3))], [jnp.zeros((1, 2, 2, 4))])
  with pytest.raises(ValueError, match="2 student layers"):
    channel_distillation_loss([jnp.zeros((1, 2, 2, 3))] * 2, [jnp.zeros((1, 2, 2, 3))])
