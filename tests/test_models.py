"""Tests for the OMGD generator / discriminator families (gankd_jax.models).

Parameter counts are checked against formulas written layer by layer from the reference
PyTorch modules (bytedance/OMGD ``models/modules``), not from our code, and against literal
totals that were checked once against bytedance/OMGD's PyTorch modules (torch 2.13,
``sum(p.numel() for p in net.parameters())``).
"""
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gankd_jax.models import (GENERATORS, build_discriminator, build_generator,
                              check_discriminator_size, check_image_size, count_params)
from gankd_jax.models import layers
from gankd_jax.models.layers import (ExpansionBlock, conv_transpose_dilated, conv_transpose_phases,
                                     conv_transpose_subpixel)
from gankd_jax.models.patchgan import patch_output_size

# ---------------------------------------------------------------- reference formulas


def conv(c_in, c_out, k, bias):
  return c_in * c_out * k * k + (c_out if bias else 0)


def norm(c, kind):
  return 2 * c if kind == "batch" else 0


def expansion_block(d, kind):
  """OMGD ExpansionResnetBlock / deep U-Net ResnetBlock: 1x1 4d, 3x3 4d, 1x1 d, 3x3 d."""
  bias = kind == "instance"
  return (conv(d, 4 * d, 1, bias) + norm(4 * d, kind) + conv(4 * d, 4 * d, 3, bias)
          + norm(4 * d, kind) + conv(4 * d, d, 1, bias) + norm(d, kind)
          + conv(d, d, 3, bias) + norm(d, kind))


def ref_unet(g, num_downs=8, kind="batch", deep=False):
  """pix2pix UnetGenerator / OMGD UnetDeepestGenerator, level by level."""
  bias = kind == "instance"
  w = [g * min(2 ** i, 8) for i in range(num_downs)]
  last = num_downs - 1
  total = conv(3, g, 4, bias) + conv(2 * g, 3, 4, True)          # outermost down / up
  if deep:
    total += 2 * expansion_block(g, kind) + 2 * expansion_block(2 * g, kind)
  for i in range(1, num_downs):
    total += conv(w[i - 1], w[i], 4, bias)                       # down conv
    up_in = w[i] if i == last else 2 * w[i]
    total += conv(up_in, w[i - 1], 4, bias) + norm(w[i - 1], kind)   # up conv + norm
    if i != last:
      total += norm(w[i], kind)                                # down norm
      if deep:
        total += 2 * expansion_block(w[i], kind) + 2 * expansion_block(w[i - 1], kind)
  return total


def separable(d):
  """gan-compression SeparableConv2d (bias always, InstanceNorm inside)."""
  return conv(1, d, 3, True) + conv(d, d, 1, True)


def ref_resnet_ends(g, kind):
  """Stem, two downsamples, two ConvTranspose2d upsamples and the 7x7 head."""
  bias = kind == "instance"
  return (conv(3, g, 7, bias) + norm(g, kind)
          + conv(g, 2 * g, 3, bias) + norm(2 * g, kind)
          + conv(2 * g, 4 * g, 3, bias) + norm(4 * g, kind)
          + conv(4 * g, 2 * g, 3, bias) + norm(2 * g, kind)
          + conv(2 * g, g, 3, bias) + norm(g, kind)
          + conv(g, 3, 7, True))


def plain_block(d, kind):
  return 2 * (conv(d, d, 3, kind == "instance") + norm(d, kind))


def mobile_block(d, kind):
  return 2 * (separable(d) + norm(d, kind))


def ref_resnet(g, kind="instance"):
  return ref_resnet_ends(g, kind) + 9 * plain_block(4 * g, kind)


def ref_mobile_resnet(g, kind="instance"):
  return ref_resnet_ends(g, kind) + 9 * mobile_block(4 * g, kind)


def ref_mobile_resnet_deepest(g, kind="instance"):
  bias = kind == "instance"
  refine = sum(expansion_block(c, kind) + conv(c, c, 3, bias) + norm(c, kind)
               for c in (2 * g, 4 * g, 2 * g, g))
  return (ref_resnet_ends(g, kind) + refine + 9 * mobile_block(4 * g, kind)
          + 2 * expansion_block(4 * g, kind))


def ref_disc_blocks(ndf, kind="batch", c_in=6):
  bias = kind == "instance"
  return [conv(c_in, ndf, 4, True),
          conv(ndf, 2 * ndf, 4, bias) + norm(2 * ndf, kind),
          conv(2 * ndf, 4 * ndf, 4, bias) + norm(4 * ndf, kind),
          conv(4 * ndf, 8 * ndf, 4, bias) + norm(8 * ndf, kind),
          conv(8 * ndf, 1, 4, True)]


def ref_disc_used(ndf, n_share, kind="batch"):
  """Parameters OMGD's MultiNLayerDiscriminator actually uses (shared blocks once)."""
  blocks = ref_disc_blocks(ndf, kind)
  return sum(blocks[:n_share]) + 2 * sum(blocks[n_share:])


REFERENCE = {
    "unet": ref_unet,
    "unet_deepest": lambda g: ref_unet(g, deep=True),
    "resnet_9blocks": ref_resnet,
    "mobile_resnet": ref_mobile_resnet,
    "mobile_resnet_deepest": ref_mobile_resnet_deepest,
}

# Checked against bytedance/OMGD's PyTorch modules (define_G defaults: unet_256 /
# unet_deepest_256 with --norm batch, resnets with instance norm, 9 blocks, 3 -> 3 channels).
TORCH_COUNTS = {
    ("unet", 64): 54413955, ("unet", 48): 30611427, ("unet", 16): 3404451,
    ("unet", 12): 1915899, ("unet", 8): 852307,
    ("unet_deepest", 16): 44171939, ("unet_deepest", 12): 24856251,
    ("unet_deepest", 24): 99348723,
    ("resnet_9blocks", 64): 11378179, ("resnet_9blocks", 48): 6404739,
    ("resnet_9blocks", 16): 715651, ("resnet_9blocks", 12): 403683, ("resnet_9blocks", 8): 180419,
    ("mobile_resnet", 64): 1987075, ("mobile_resnet", 48): 1130883,
    ("mobile_resnet", 16): 137347, ("mobile_resnet", 12): 80547, ("mobile_resnet", 8): 38723,
    ("mobile_resnet_deepest", 16): 2547123, ("mobile_resnet_deepest", 12): 1436583,
    ("mobile_resnet_deepest", 24): 5715723,
}
# MultiNLayerDiscriminator(6, n_share, ndf): (all PyTorch parameters, the ones it uses).
TORCH_DISC_COUNTS = {
    (128, 3, "batch"): (22084866, 19449474), (128, 5, "batch"): (22084866, 11042433),
    (128, 4, "instance"): (22081282, 11057026), (96, 3, "batch"): (12434882, 10949858),
    (96, 5, "batch"): (12434882, 6217441), (128, 0, "batch"): (22084866, 22084866),
}

# ---------------------------------------------------------------- helpers


def abstract_param_count(module, shape):
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(shape)))
  return count_params(variables["params"])


@pytest.mark.parametrize("key,expected", sorted(TORCH_COUNTS.items()))
def test_generator_param_count_matches_reference(key, expected):
  name, ngf = key
  assert REFERENCE[name](ngf) == expected  # hand formula == PyTorch
  module = build_generator(name, ngf=ngf)
  assert abstract_param_count(module, (1, 256, 256, 3)) == expected


def test_param_count_other_norms_match_formulas():
  cases = [("unet", dict(norm="instance"), ref_unet(16, kind="instance"), 3403363),
           ("unet_deepest", dict(norm="instance"), ref_unet(16, kind="instance", deep=True),
            44147811),
           ("resnet_9blocks", dict(norm="batch"), ref_resnet(16, "batch"), 716963),
           ("mobile_resnet", dict(norm="batch"), ref_mobile_resnet(16, "batch"), 139811),
           ("mobile_resnet_deepest", dict(norm="batch"),
            ref_mobile_resnet_deepest(16, "batch"), 2552451)]
  for name, kwargs, formula, torch_count in cases:
    assert formula == torch_count, name
    module = build_generator(name, ngf=16, **kwargs)
    assert abstract_param_count(module, (1, 256, 256, 3)) == torch_count, name


@pytest.mark.parametrize("ndf,n_share,kind", sorted(TORCH_DISC_COUNTS))
def test_discriminator_param_count(ndf, n_share, kind):
  torch_total, torch_used = TORCH_DISC_COUNTS[(ndf, n_share, kind)]
  assert 2 * sum(ref_disc_blocks(ndf, kind)) == torch_total
  assert ref_disc_used(ndf, n_share, kind) == torch_used
  disc = build_discriminator(ndf=ndf, n_share=n_share, norm=kind)
  assert abstract_param_count(disc, (1, 256, 256, 6)) == torch_used


# ---------------------------------------------------------------- forward shapes

SMALL = {
    "unet": dict(ngf=4, num_downs=5),
    "unet_deepest": dict(ngf=2, num_downs=5),
    "resnet_9blocks": dict(ngf=4),
    "mobile_resnet": dict(ngf=4),
    "mobile_resnet_deepest": dict(ngf=2),
}
SIZES = {
    "unet": [(32, 32), (64, 32)],
    "unet_deepest": [(32, 32), (32, 64)],
    "resnet_9blocks": [(32, 32), (24, 40)],
    "mobile_resnet": [(32, 32), (64, 64), (20, 36)],
    "mobile_resnet_deepest": [(32, 32), (24, 40)],
}


def expected_feature_hw(name, h, w):
  if name.startswith("unet"):
    return [(h // 4, w // 4), (h // 16, w // 16), (h // 16, w // 16), (h // 4, w // 4)]
  return [(h // 4, w // 4)] * 4


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generator_shapes_and_features(name):
  """Real forward at the first size (eval and train mode), shape inference at the others."""
  module = build_generator(name, **SMALL[name])
  ngf = SMALL[name]["ngf"]
  if name.startswith("unet"):
    assert module.feature_channels() == [2 * ngf, 8 * ngf, 16 * ngf, 4 * ngf]
  else:
    assert module.feature_channels() == [4 * ngf] * 4
  h0, w0 = SIZES[name][0]
  if "deepest" in name:  # compiling the deep teachers is slow on 2 cores: shapes only here
    assert_shapes_at_sizes(module, name, jax.eval_shape(
        lambda: module.init(jax.random.key(0), jnp.zeros((2, h0, w0, 3)))))
    return
  x = jax.random.uniform(jax.random.key(1), (2, h0, w0, 3), minval=-1, maxval=1)

  @jax.jit  # one compilation for init + forward keeps the test fast
  def init_and_run(x):
    variables = module.init(jax.random.key(0), x)
    out = module.apply(variables, x, train=True, return_features=True,
                       mutable=["batch_stats"])
    return variables, out

  variables, ((y, feats), updates) = init_and_run(x)
  assert y.shape == x.shape
  assert float(jnp.max(jnp.abs(y))) <= 1.0 and bool(jnp.all(jnp.isfinite(y)))
  assert set(updates) == set(variables) - {"params"}
  assert [f.shape[1:3] for f in feats] == expected_feature_hw(name, h0, w0)
  assert [f.shape[-1] for f in feats] == module.feature_channels()
  assert_shapes_at_sizes(module, name, variables)


def assert_shapes_at_sizes(module, name, variables):
  for h, w in SIZES[name]:
    check_image_size(name, (h, w), **SMALL[name])
    x = jax.ShapeDtypeStruct((2, h, w, 3), jnp.float32)
    y, feats = jax.eval_shape(
        lambda v, x: module.apply(v, x, train=False, return_features=True), variables, x)
    assert y.shape == x.shape
    assert [f.shape[1:3] for f in feats] == expected_feature_hw(name, h, w)


def test_generator_default_shapes_at_256():
  for name in GENERATORS:
    module = build_generator(name, ngf=8)
    x = jnp.zeros((1, 256, 256, 3))
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), x))
    out = jax.eval_shape(
        lambda v: module.apply(v, x, train=False, return_features=True), variables)
    y, feats = out
    assert y.shape == x.shape
    assert [f.shape[-1] for f in feats] == module.feature_channels()


def test_norm_choice_sets_collections():
  x = jnp.zeros((1, 32, 32, 3))
  bn = build_generator("unet", ngf=2, num_downs=5, norm="batch")
  inn = build_generator("unet", ngf=2, num_downs=5, norm="instance")
  assert "batch_stats" in jax.eval_shape(lambda: bn.init(jax.random.key(0), x))
  assert "batch_stats" not in jax.eval_shape(lambda: inn.init(jax.random.key(0), x))


def test_unet_dropout_uses_rng_only_when_active():
  x = jax.random.normal(jax.random.key(0), (1, 64, 64, 3))
  module = build_generator("unet", ngf=2, num_downs=6, dropout_rate=0.5)
  variables = jax.jit(lambda x: module.init(jax.random.key(0), x, train=False))(x)
  with pytest.raises(flax.errors.InvalidRngError, match='needs PRNG for "dropout"'):
    jax.eval_shape(lambda v: module.apply(v, x, train=True, mutable=["batch_stats"]),
                   variables)  # train with dropout needs a 'dropout' rng
  jax.eval_shape(lambda v: module.apply(v, x, train=False), variables)  # eval does not
  no_dropout = build_generator("unet", ngf=2, num_downs=6)
  jax.eval_shape(lambda v: no_dropout.apply(v, x, train=True, mutable=["batch_stats"]),
                 variables)

  @jax.jit
  def train_out(v, key):
    return module.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})[0]

  a, b = train_out(variables, jax.random.key(1)), train_out(variables, jax.random.key(2))
  assert not np.allclose(a, b)


def test_init_distributions():
  module = build_generator("unet", ngf=16, num_downs=5)
  params = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  kernels, scales, biases = [], [], []
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    last = jax.tree_util.keystr(path[-1:])
    (kernels if "kernel" in last else scales if "scale" in last else biases).append(
        np.ravel(leaf))
  kernels, scales = np.concatenate(kernels), np.concatenate(scales)
  assert abs(kernels.std() - 0.02) < 0.002 and abs(kernels.mean()) < 0.002
  assert abs(scales.mean() - 1.0) < 0.005 and abs(scales.std() - 0.02) < 0.005
  assert all(np.all(b == 0) for b in biases)


def test_expansion_block_runs_and_keeps_shape():
  """The deep teachers' residual block (pads before its first 1x1 conv, as the reference)."""
  block = ExpansionBlock("batch")
  x = jax.random.normal(jax.random.key(0), (2, 6, 5, 3))

  @jax.jit
  def init_and_run(x):
    variables = block.init(jax.random.key(1), x)
    return variables, block.apply(variables, x, train=True, mutable=["batch_stats"])[0]

  variables, y = init_and_run(x)
  assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))
  assert count_params(variables["params"]) == expansion_block(3, "batch")


# ---------------------------------------------------------------- discriminator


def test_discriminator_branches_and_shapes():
  disc = build_discriminator(ndf=4, n_share=3)
  x = jax.random.normal(jax.random.key(0), (2, 64, 48, 6))

  @jax.jit
  def init_and_run(x):
    variables = disc.init(jax.random.key(1), x)
    outs = disc.apply(variables, x, train=False)
    (only1,) = disc.apply(variables, x, train=False, branches=(1,))
    return variables, outs, only1

  variables, (out0, out1), only1 = init_and_run(x)
  assert set(variables["params"]) == {"shared0", "shared1", "shared2", "branch0_3",
                                      "branch0_4", "branch1_3", "branch1_4"}
  assert out0.shape == out1.shape == (2, patch_output_size(64), patch_output_size(48), 1)
  assert patch_output_size(256) == 30 and patch_output_size(32) == 2
  np.testing.assert_allclose(only1, out1, rtol=1e-6)
  assert not np.allclose(out0, out1)


def test_fully_shared_discriminator_branches_agree():
  disc = build_discriminator(ndf=4, n_share=5, norm="instance")
  x = jax.random.normal(jax.random.key(0), (1, 32, 32, 6))
  a, b = jax.jit(lambda x: disc.apply(disc.init(jax.random.key(1), x), x))(x)
  np.testing.assert_allclose(a, b)


# ---------------------------------------------------------------- transposed conv


def scatter_conv_transpose(x, w, padding, output_padding):
  """Naive PyTorch ConvTranspose2d(stride=2): out[2i - p + a] += x[i] @ w[a]."""
  n, h, wd, _ = x.shape
  k, c_out = w.shape[0], w.shape[3]
  oh = (h - 1) * 2 - 2 * padding + k + output_padding
  ow = (wd - 1) * 2 - 2 * padding + k + output_padding
  out = np.zeros((n, oh + 2 * k, ow + 2 * k, c_out))
  for i in range(h):
    for j in range(wd):
      for a in range(k):
        for b in range(k):
          out[:, 2 * i - padding + a + k, 2 * j - padding + b + k] += x[:, i, j] @ w[a, b]
  return out[:, k:k + oh, k:k + ow]


@pytest.mark.parametrize("k,p,op", [(4, 1, 0), (3, 1, 1)])
def test_conv_transpose_matches_pytorch_semantics(k, p, op):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
  w = rng.normal(size=(k, k, 3, 4)).astype(np.float32)
  expected = scatter_conv_transpose(x.astype(np.float64), w.astype(np.float64), p, op)
  got = np.asarray(conv_transpose_subpixel(jnp.asarray(x), jnp.asarray(w), p, op))
  assert got.shape == (2, 10, 12, 4)
  np.testing.assert_allclose(got, expected, atol=1e-4)
  np.testing.assert_allclose(conv_transpose_phases(jnp.asarray(x), jnp.asarray(w), p, op),
                             expected, atol=1e-4)
  np.testing.assert_allclose(conv_transpose_dilated(jnp.asarray(x), jnp.asarray(w), p, op),
                             expected, atol=1e-4)
  t = jax.lax.conv_transpose(jnp.asarray(x), jnp.asarray(w)[::-1, ::-1], (2, 2),
                             [(k - 1 - p, k - 1 - p + op)] * 2,
                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(t, expected, atol=1e-4)


@pytest.mark.parametrize("k,p,op", [(4, 1, 0), (3, 1, 1)])
def test_conv_transpose_gradients_match(k, p, op):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(1, 4, 4, 2)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 2, 3)), jnp.float32)
  expected, *others = [
      jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w, p, op))), argnums=(0, 1))(x, w)
      for f in (conv_transpose_dilated, conv_transpose_subpixel, conv_transpose_phases)]
  for grads in others:
    for a, b in zip(grads, expected):
      np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("c_out", [3, 16])
def test_training_graph_takes_the_measured_transposed_conv_form(c_out):
  module = layers.ConvTranspose(c_out, 4, padding=1)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 8, 16)), jnp.float32)
  variables = module.init(jax.random.key(0), x)
  expected = conv_transpose_dilated(x, variables["params"]["kernel"], 1, 0)
  np.testing.assert_allclose(module.apply(variables, x), expected + variables["params"]["bias"],
                             atol=1e-4)
  assert layers.training_conv_transpose(c_out) is (
      conv_transpose_subpixel if c_out <= layers.TRAINING_SUBPIXEL_MAX_OUT
      else conv_transpose_phases)


# ---------------------------------------------------------------- registry


def test_registry_errors():
  with pytest.raises(ValueError, match="unknown generator 'nope'; choose from unet"):
    build_generator("nope")
  with pytest.raises(ValueError, match="ngf must be a positive integer"):
    build_generator("unet", ngf=0)
  with pytest.raises(ValueError, match="ndf must be a positive integer"):
    build_discriminator(ndf=-1)
  with pytest.raises(ValueError, match="no field 'bogus'"):
    build_generator("mobile_resnet", bogus=1)
  with pytest.raises(ValueError, match="divisible by 256"):
    check_image_size("unet", 128)
  with pytest.raises(ValueError, match="width divisible by 32"):
    check_image_size("unet_deepest", (64, 48), num_downs=5)
  with pytest.raises(ValueError, match="divisible by 4"):
    check_image_size("mobile_resnet", 30)
  with pytest.raises(ValueError, match="too small for the PatchGAN"):
    check_discriminator_size(16)
  check_image_size("unet", 256)
  check_image_size("resnet_9blocks", (36, 20))
  check_discriminator_size(24)
  with pytest.raises(ValueError, match="unknown norm 'group'"):
    build_generator("unet", norm="group", num_downs=5).init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize("x_shape, kernel_shape, stride, pad, as_matmul", [
    ((1, 80, 80, 3), (1, 1, 3, 8), 1, 0, True),       # 1x1: a matmul at any size
    ((2, 10, 10, 8), (4, 4, 8, 16), 2, 1, True),      # output 5x5: im2col
    ((2, 11, 11, 8), (3, 3, 8, 16), 1, 0, False),     # output 9x9: XLA's convolution
    ((1, 70, 70, 32), (3, 3, 32, 32), 1, 1, False),   # large output: XLA's convolution
])
def test_conv_routing_matches_xla_convolution(x_shape, kernel_shape, stride, pad, as_matmul):
  from gankd_jax.models import layers
  out = (x_shape[1] + 2 * pad - kernel_shape[0]) // stride + 1
  assert layers.use_matmul_conv(kernel_shape, (out, out)) == as_matmul
  kx, kk = jax.random.split(jax.random.key(0))
  x, kernel = jax.random.normal(kx, x_shape), jax.random.normal(kk, kernel_shape)
  padding = [(pad, pad)] * 2
  ours = layers.conv_general_dilated(x, kernel, (stride, stride), padding)
  reference = jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("x_shape, kernel_shape, stride, pad, lhs_dilation", [
    ((1, 14, 12, 8), (7, 7, 8, 3), 1, [(3, 3), (3, 3)], 1),   # the ResNets' output layer
    ((2, 9, 10, 5), (3, 3, 5, 8), 2, [(1, 0), (0, 2)], 1),    # strided, uneven padding
    ((1, 6, 7, 8), (4, 4, 8, 2), 1, [(2, 3), (2, 3)], 2),     # a transposed conv, lhs-dilated
    ((1, 8, 8, 4), (5, 3, 4, 4), 1, [(-1, 2), (1, 1)], 1),    # kh != kw, negative padding
])
def test_row_taps_equal_xla_convolution_and_its_gradients(x_shape, kernel_shape, stride, pad,
                                                          lhs_dilation):
  """The row-taps form (a 1 x kw conv to kh * c_out channels, then shifted row sums) for convs to
  a few channels, against lax's convolution: values and both gradients (the training graph
  takes it for 7x7 kernels)."""
  from gankd_jax.models import layers
  kx, kk = jax.random.split(jax.random.key(2))
  x, kernel = jax.random.normal(kx, x_shape), jax.random.normal(kk, kernel_shape)
  dilation = (lhs_dilation, lhs_dilation)

  def loss(conv):
    return lambda x, k: jnp.sum(jnp.sin(conv(x, k, (stride, stride), pad, dilation)))
  reference = functools.partial(jax.lax.conv_general_dilated,
                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
  with layers.inference_graph():
    assert layers.use_row_taps(kernel_shape, 1, None)
  np.testing.assert_allclose(loss(layers._conv_as_row_taps)(x, kernel),
                             loss(reference)(x, kernel), rtol=1e-4, atol=1e-4)
  for got, want in zip(jax.grad(loss(layers._conv_as_row_taps), (0, 1))(x, kernel),
                       jax.grad(loss(reference), (0, 1))(x, kernel)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  with layers.inference_graph():
    ours = layers.conv_general_dilated(x, kernel, (stride, stride), pad, dilation)
  np.testing.assert_allclose(ours, reference(x, kernel, (stride, stride), pad, dilation),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("c_out, kernel, inference, training", [
    (1, 7, False, False), (3, 7, True, True), (8, 7, True, True), (8, 3, True, False),
    (4, 4, True, False), (16, 7, False, False), (3, 1, False, False)])
def test_row_taps_for_2_to_8_output_channels_as_measured(c_out, kernel, inference, training):
  from gankd_jax.models import layers
  shape = (kernel, kernel, 16, c_out)
  assert layers.use_row_taps(shape, 1, None) == training
  with layers.inference_graph():
    assert layers.use_row_taps(shape, 1, None) == inference
    assert not layers.use_row_taps(shape, 1, (2, 2))  # rhs-dilated
    assert not layers.use_row_taps(shape, 2, None)    # grouped
    with layers.export_graph():  # One CONV_2D node per conv in an exported graph.
      assert not layers.use_row_taps(shape, 1, None)


@pytest.mark.parametrize("x_shape, kernel, stride, pad", [
    ((2, 9, 9, 6), 3, 1, 1), ((1, 10, 11, 4), 3, 2, 0), ((1, 8, 8, 3), 5, 1, 2),
    ((2, 8, 12, 5), 3, 1, 1)])  # The last two: pixel counts the kernel gradient sums in slices.
def test_depthwise_taps_equal_xla_grouped_convolution_and_its_gradients(x_shape, kernel, stride, pad):
  """The depthwise route (shifted multiply-adds) against lax's grouped convolution: values and
  both gradients (it runs in training too)."""
  from gankd_jax.models import layers
  c = x_shape[-1]
  kx, kk = jax.random.split(jax.random.key(1))
  x, w = jax.random.normal(kx, x_shape), jax.random.normal(kk, (kernel, kernel, 1, c))
  padding = [(pad, pad)] * 2
  assert layers.is_depthwise(x, w, c) and not layers.is_depthwise(x, w, 1)

  def ours(x, w):
    return jnp.sum(jnp.sin(layers.conv_general_dilated(x, w, (stride, stride), padding,
                                                       feature_group_count=c)))

  def reference(x, w):
    return jnp.sum(jnp.sin(jax.lax.conv_general_dilated(
        x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c)))
  np.testing.assert_allclose(ours(x, w), reference(x, w), rtol=1e-5, atol=1e-4)
  for got, want in zip(jax.grad(ours, (0, 1))(x, w), jax.grad(reference, (0, 1))(x, w)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("x_shape, kernel_shape, stride, pad, taps, phases", [
    ((1, 19, 19, 3), (3, 3, 3, 5), 2, [(1, 1), (1, 1)], True, False),   # the ResNets' downsampling
    ((1, 20, 18, 4), (4, 4, 4, 6), 2, [(1, 1), (1, 1)], True, False),   # the U-Nets' / PatchGAN's
    ((1, 29, 27, 2), (3, 3, 2, 3), 3, [(0, 2), (2, 1)], True, False),   # uneven padding, spare rows
    ((1, 12, 11, 5), (2, 2, 5, 4), 1, [(0, 1), (0, 1)], True, False),   # a transposed conv's phase
    ((1, 12, 12, 5), (1, 2, 5, 4), 1, [(0, 0), (0, 1)], True, False),
    ((1, 20, 18, 10), (3, 3, 10, 4), 2, [(1, 1), (1, 1)], True, True),  # both, output padding 1
    ((2, 20, 18, 12), (4, 4, 12, 6), 2, [(1, 1), (1, 1)], False, True),  # batch 2: phases only
    ((2, 18, 20, 9), (3, 3, 9, 5), 2, [(1, 1), (1, 1)], False, True),
])
def test_routed_gradients_equal_xla_convolution_and_its_gradients(x_shape, kernel_shape, stride,
                                                                  pad, taps, phases):
  """Strided and <= 4-tap convolutions of one image take their kernel gradient as one product
  per tap, stride-2 ones from 9 input channels their input gradient as the per-phase transposed
  convolution: values and both gradients against lax's convolution."""
  from gankd_jax.models import layers
  strides = (stride, stride)
  assert layers.use_tap_weight_gradient(kernel_shape, x_shape, strides) == taps
  assert not layers.use_tap_weight_gradient(kernel_shape, (2,) + x_shape[1:], strides)
  assert layers.use_phase_input_gradient(kernel_shape, x_shape, strides, pad) == phases
  kx, kk = jax.random.split(jax.random.key(3))
  x, kernel = jax.random.normal(kx, x_shape), jax.random.normal(kk, kernel_shape)

  def loss(conv):
    return lambda x, k: jnp.sum(jnp.sin(conv(x, k, strides, pad)))
  reference = functools.partial(jax.lax.conv_general_dilated,
                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
  jaxpr = str(jax.make_jaxpr(loss(layers.conv_general_dilated))(x, kernel))
  assert "_conv_routed_gradients" in jaxpr
  np.testing.assert_allclose(loss(layers.conv_general_dilated)(x, kernel),
                             loss(reference)(x, kernel), rtol=1e-5, atol=1e-4)
  for got, want in zip(jax.grad(loss(layers.conv_general_dilated), (0, 1))(x, kernel),
                       jax.grad(loss(reference), (0, 1))(x, kernel)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_tap_weight_gradient_only_where_measured_faster():
  from gankd_jax.models import layers
  one, four = (1, 64, 64, 8), (4, 64, 64, 8)
  assert layers.use_tap_weight_gradient((3, 3, 8, 8), one, (2, 2))
  assert layers.use_tap_weight_gradient((2, 2, 8, 8), one, (1, 1))
  assert not layers.use_tap_weight_gradient((3, 3, 8, 8), one, (1, 1))   # 9 taps, stride 1
  assert not layers.use_tap_weight_gradient((7, 7, 3, 8), one, (1, 1))
  assert not layers.use_tap_weight_gradient((3, 3, 8, 8), four, (2, 2))  # batch 4


def test_phase_input_gradient_only_where_measured_faster():
  from gankd_jax.models import layers
  same = [(1, 1), (1, 1)]
  assert layers.use_phase_input_gradient((4, 4, 64, 128), (4, 128, 128, 64), (2, 2), same)
  assert layers.use_phase_input_gradient((3, 3, 64, 128), (1, 256, 256, 64), (2, 2), same)
  assert not layers.use_phase_input_gradient((4, 4, 6, 128), (4, 256, 256, 6), (2, 2), same)
  assert not layers.use_phase_input_gradient((4, 4, 64, 128), (4, 64, 64, 64), (1, 1), same)
  assert not layers.use_phase_input_gradient((4, 4, 64, 128), (4, 65, 64, 64), (2, 2), same)
  assert not layers.use_phase_input_gradient((4, 4, 64, 128), (4, 64, 64, 64), (2, 2),
                                             [(1, 2), (1, 2)])
  assert not layers.use_phase_input_gradient((3, 4, 64, 128), (4, 64, 64, 64), (2, 2), same)


@pytest.mark.parametrize("shape", [(3, 9, 7, 5), (2, 33, 32, 3)])  # plain sums; >= 1024 rows: products
def test_matmul_norms_match_flax_batchnorm_and_plain_instance_norm(shape):
  """layers.BatchNorm / instance_norm sum by matrix products in a custom VJP; values, running
  statistics and gradients must equal flax's nn.BatchNorm and the textbook instance norm."""
  import flax.linen as nn
  from gankd_jax.models import layers
  assert (shape[1] * shape[2] >= layers.MATMUL_SUM_MIN_ROWS) == (shape[0] == 2)
  x = jax.random.normal(jax.random.key(0), shape) * 2 + 1
  weights = jax.random.normal(jax.random.key(3), x.shape)
  scale_init = lambda key, shape, dtype=jnp.float32: 1 + 0.1 * jax.random.normal(key, shape, dtype)
  reference, ours = nn.BatchNorm(momentum=0.9, epsilon=1e-5, scale_init=scale_init), layers.BatchNorm(
      scale_init=scale_init)
  ref_vars = reference.init(jax.random.key(1), x, use_running_average=False)
  our_vars = ours.init(jax.random.key(1), x, use_running_average=False)
  assert jax.tree_util.tree_map(jnp.shape, ref_vars) == jax.tree_util.tree_map(jnp.shape, our_vars)

  def train_apply(module, params, stats, x):
    return module.apply({"params": params, "batch_stats": stats}, x, use_running_average=False,
                        mutable=["batch_stats"])

  (ref_y, ref_stats), (our_y, our_stats) = (
      train_apply(m, v["params"], v["batch_stats"], x)
      for m, v in ((reference, ref_vars), (ours, our_vars)))
  np.testing.assert_allclose(our_y, ref_y, atol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(our_stats), jax.tree_util.tree_leaves(ref_stats)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  ref_grads, our_grads = (
      jax.grad(lambda p, x: jnp.sum(weights * train_apply(m, p, v["batch_stats"], x)[0]),
               argnums=(0, 1))(v["params"], x)
      for m, v in ((reference, ref_vars), (ours, our_vars)))
  for a, b in zip(jax.tree_util.tree_leaves(our_grads), jax.tree_util.tree_leaves(ref_grads)):
    np.testing.assert_allclose(a, b, atol=1e-4)
  np.testing.assert_allclose(
      ours.apply({"params": our_vars["params"], **our_stats}, x, use_running_average=True),
      reference.apply({"params": ref_vars["params"], **ref_stats}, x, use_running_average=True),
      atol=1e-5)

  def textbook_instance_norm(x):
    mean = x.mean((1, 2), keepdims=True)
    return (x - mean) / jnp.sqrt(((x - mean) ** 2).mean((1, 2), keepdims=True) + 1e-5)
  np.testing.assert_allclose(layers.instance_norm(x), textbook_instance_norm(x), atol=1e-5)
  np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(weights * layers.instance_norm(x)))(x),
                             jax.grad(lambda x: jnp.sum(weights * textbook_instance_norm(x)))(x),
                             atol=1e-4)
