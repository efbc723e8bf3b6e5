"""StyleGAN2 (gankd_jax.models.stylegan2) on tiny shapes: parameter counts against closed-form
counts derived from the architecture, FIR resampling and the modulated conv against direct
NumPy / SciPy computations of the reference's definitions, minibatch std against the
reference's NCHW reshape order, truncation, w_avg tracking, noise modes and bad inputs.

Numerical agreement with the PyTorch reference itself (same weights through the state_dict name
mapping) was checked when the module was written: G (psi 1, psi 0.7, psi 0.7 with cutoff 2,
noise const / none) and D at 16 and 32 px, c_dim 0 and 5, G skip / orig / resnet, D resnet /
orig / skip, conv_clamp 256 and 0.5 / 1.0 (clamping active), mbstd_num_channels 1, 2, 4:
max |error| / max |output| <= 5.9e-6 in all 40 comparisons.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from gankd_jax.models import stylegan2 as sg

# ---------------------------------------------------------------------------------------------
# Parameter counts, layer by layer from the architecture (not from our code).


def fc(n_in, n_out, bias=True):
  return n_out * n_in + (n_out if bias else 0)


def conv(n_in, n_out, k, bias=True):
  return n_out * n_in * k * k + (n_out if bias else 0)


def mapping_params(z_dim, c_dim, w_dim, num_layers):
  """embed c -> w (c > 0); fc0: z + embed -> w; fc1..: w -> w."""
  embed = w_dim if c_dim else 0
  feats = [z_dim + embed] + [w_dim] * num_layers
  return (fc(c_dim, embed) if c_dim else 0) + sum(fc(feats[i], feats[i + 1])
                                                    for i in range(num_layers))


def chans(res, base, cmax):
  return min(base // res, cmax)


def generator_params(z_dim, c_dim, w_dim, res, img_ch, num_layers, base, cmax, arch):
  """Per block: const (4x4) or conv0 (up); conv1; torgb (skip or last); resnet skip 1x1.
  A synthesis layer in -> out: affine w -> in (+bias), 3x3 weight, bias, noise strength."""
  def layer(n_in, n_out):
    return fc(w_dim, n_in) + conv(n_in, n_out, 3) + 1

  total = mapping_params(z_dim, c_dim, w_dim, num_layers)
  r = 4
  while r <= res:
    out = chans(r, base, cmax)
    if r == 4:
      total += out * 16 + layer(out, out)
    else:
      n_in = chans(r // 2, base, cmax)
      total += layer(n_in, out) + layer(out, out) + (out * n_in if arch == "resnet" else 0)
    if arch == "skip" or r == res:
      total += fc(w_dim, out) + conv(out, img_ch, 1)
    r *= 2
  return total


def discriminator_params(c_dim, res, img_ch, num_layers, base, cmax, arch, mbstd_ch=1):
  """Blocks res .. 8: fromrgb 1x1 (first or skip), conv0 3x3, conv1 3x3 down, resnet skip 1x1
  (no bias); mapping c -> cmap (= channels at 4); epilogue fromrgb (skip), conv 3x3 from
  C + mbstd channels, fc 16 C -> C, out C -> cmap (or 1)."""
  total, r = 0, res
  while r >= 8:
    tmp, out = chans(r, base, cmax), chans(r // 2, base, cmax)
    if r == res or arch == "skip":
      total += conv(img_ch, tmp, 1)
    total += conv(tmp, tmp, 3) + conv(tmp, out, 3)
    total += conv(tmp, out, 1, bias=False) if arch == "resnet" else 0
    r //= 2
  c4 = chans(4, base, cmax)
  cmap = c4 if c_dim else 0
  if c_dim:
    total += mapping_params(0, c_dim, cmap, num_layers)
  total += conv(img_ch, c4, 1) if arch == "skip" else 0
  return total + conv(c4 + mbstd_ch, c4, 3) + fc(16 * c4, c4) + fc(c4, cmap or 1)


def _g_kwargs(res, c_dim, arch, base=256, cmax=32):
  return dict(z_dim=12, c_dim=c_dim, w_dim=10, img_resolution=res, img_channels=3,
              mapping_kwargs=dict(num_layers=3),
              synthesis_kwargs=dict(channel_base=base, channel_max=cmax, conv_clamp=256,
                                    architecture=arch, num_fp16_res=0))


def _d_kwargs(res, c_dim, arch, base=256, cmax=32, mbstd_ch=1):
  return dict(c_dim=c_dim, img_resolution=res, img_channels=3, architecture=arch,
              channel_base=base, channel_max=cmax, conv_clamp=256, num_fp16_res=2,
              mapping_kwargs=dict(num_layers=2),
              epilogue_kwargs=dict(mbstd_group_size=2, mbstd_num_channels=mbstd_ch))


def _shapes_g(module, res, c_dim):
  """Variable shapes without computing anything (init traced by eval_shape)."""
  keys = {"params": jax.random.PRNGKey(0), "noise": jax.random.PRNGKey(1)}
  return jax.eval_shape(module.init, keys, jnp.zeros((2, 12)), jnp.zeros((2, c_dim)))


def _shapes_d(module, res, c_dim):
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((2, res, res, 3)),
                        jnp.zeros((2, c_dim)))


# sum(p.numel() for p in module.parameters()) of the PyTorch reference built with the same
# arguments (/work/torchenv, training/networks.py), checked when this file was written.
REFERENCE_G = {(16, 0, "skip"): 38268, (16, 0, "orig"): 37366, (16, 0, "resnet"): 38902,
               (16, 5, "skip"): 38428, (16, 5, "orig"): 37526, (16, 5, "resnet"): 39062,
               (32, 0, "skip"): 40393, (32, 5, "skip"): 40553, (32, 0, "resnet"): 40928}
REFERENCE_D = {(16, 0, "resnet", 1): 53041, (16, 0, "orig", 1): 51505, (16, 0, "skip", 1): 51761,
               (16, 5, "resnet", 1): 56368, (16, 5, "orig", 1): 54832, (16, 5, "skip", 1): 55088,
               (32, 0, "resnet", 1): 54889, (32, 5, "resnet", 1): 58216,
               (16, 5, "resnet", 2): 56656, (32, 0, "skip", 4): 54409}


@pytest.mark.parametrize("key", sorted(REFERENCE_G))
def test_generator_param_count_matches_formula_and_reference(key):
  res, c_dim, arch = key
  shapes = _shapes_g(sg.generator_from_kwargs(_g_kwargs(res, c_dim, arch)), res, c_dim)
  expected = generator_params(12, c_dim, 10, res, 3, 3, 256, 32, arch)
  assert sg.count_params(shapes) == expected == REFERENCE_G[key]


@pytest.mark.parametrize("key", sorted(REFERENCE_D))
def test_discriminator_param_count_matches_formula_and_reference(key):
  res, c_dim, arch, mbstd_ch = key
  module = sg.discriminator_from_kwargs(_d_kwargs(res, c_dim, arch, mbstd_ch=mbstd_ch))
  expected = discriminator_params(c_dim, res, 3, 2, 256, 32, arch, mbstd_ch)
  assert sg.count_params(_shapes_d(module, res, c_dim)) == expected == REFERENCE_D[key]


@pytest.mark.parametrize("res,base,cmax,c_dim", [(4, 64, 8, 0), (8, 512, 16, 3),
                                                 (64, 1024, 64, 2), (128, 2048, 24, 0)])
def test_param_counts_other_widths(res, base, cmax, c_dim):
  g = sg.generator_from_kwargs(_g_kwargs(res, c_dim, "skip", base, cmax))
  assert sg.count_params(_shapes_g(g, res, c_dim)) == generator_params(
      12, c_dim, 10, res, 3, 3, base, cmax, "skip")
  if res >= 8:
    d = sg.discriminator_from_kwargs(_d_kwargs(res, c_dim, "resnet", base, cmax))
    assert sg.count_params(_shapes_d(d, res, c_dim)) == discriminator_params(
        c_dim, res, 3, 2, base, cmax, "resnet")


def test_variable_names_follow_the_reference_state_dict():
  shapes = _shapes_g(sg.generator_from_kwargs(_g_kwargs(8, 2, "resnet")), 8, 2)
  params, buffers = shapes["params"], shapes["buffers"]
  assert params["synthesis"]["b4"]["const"].shape == (32, 4, 4)
  assert params["synthesis"]["b8"]["conv0"]["weight"].shape == (32, 32, 3, 3)
  assert params["synthesis"]["b8"]["skip"]["weight"].shape == (32, 32, 1, 1)
  assert params["synthesis"]["b8"]["torgb"]["affine"]["weight"].shape == (32, 10)
  assert "torgb" not in params["synthesis"]["b4"]  # resnet: torgb only in the last block
  assert params["mapping"]["embed"]["weight"].shape == (10, 2)
  assert buffers["mapping"]["w_avg"].shape == (10,)
  assert buffers["synthesis"]["b8"]["conv1"]["noise_const"].shape == (8, 8)
  d_shapes = _shapes_d(sg.discriminator_from_kwargs(_d_kwargs(8, 2, "resnet")), 8, 2)
  assert set(d_shapes) == {"params"}  # the discriminator's mapping tracks no w_avg
  assert set(d_shapes["params"]) == {"b8", "b4", "mapping"}
  assert d_shapes["params"]["b4"]["out"]["weight"].shape == (32, 32)  # cmap_dim = channels at 4


# ---------------------------------------------------------------------------------------------
# FIR resampling against the reference's definition computed directly.


def upfirdn_numpy(x, taps, up=1, down=1, pad=(0, 0, 0, 0), flip=False, gain=1.0):
  """NHWC; the reference's `_upfirdn2d_ref`: zero-stuff, pad / crop, 2-D convolution with
  the normalised outer(taps, taps) (correlation when flip), keep every down-th pixel."""
  px0, px1, py0, py1 = pad
  f = np.outer(taps, taps) / np.sum(taps) ** 2 * gain
  n, h, w, c = x.shape
  out = []
  for i in range(n):
    chans_out = []
    for ch in range(c):
      z = np.zeros((h * up, w * up))
      z[::up, ::up] = x[i, :, :, ch]
      z = np.pad(z, ((max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))))
      z = z[max(-py0, 0):z.shape[0] - max(-py1, 0), max(-px0, 0):z.shape[1] - max(-px1, 0)]
      y = (signal.correlate2d if flip else signal.convolve2d)(z, f, mode="valid")
      chans_out.append(y[::down, ::down])
    out.append(np.stack(chans_out, -1))
  return np.stack(out)


@pytest.mark.parametrize("taps", [sg.FIR_TAPS, (1.0, 2.0, 5.0, 1.0), (1.0, 4.0, 2.0)])
@pytest.mark.parametrize("up,down,pad,flip,gain", [
    (1, 1, (1, 2, 2, 1), False, 1.0), (2, 1, (2, 1, 2, 1), False, 4.0),
    (2, 1, (0, 3, 1, -1), True, 2.0), (1, 2, (1, 1, 1, 1), False, 1.0),
    (1, 2, (2, 0, -1, 3), True, 1.0), (3, 1, (1, 2, 3, 0), False, 9.0),
    (2, 2, (1, 1, 2, 2), False, 1.0)])
def test_upfirdn2d_matches_direct_computation(taps, up, down, pad, flip, gain):
  x = np.random.default_rng(0).normal(size=(2, 7, 6, 3)).astype(np.float32)
  got = sg.upfirdn2d(jnp.asarray(x), up=up, down=down, padding=pad, flip_filter=flip,
                     gain=gain, taps=taps)
  np.testing.assert_allclose(got, upfirdn_numpy(x, taps, up, down, pad, flip, gain),
                             atol=1e-5, rtol=1e-5)


def test_resampling_wrappers_use_the_reference_padding():
  """upsample2d: pad ((k + 1) // 2, (k - 2) // 2), gain 4; downsample2d: (k - 1) // 2,
  (k - 2) // 2; filter2d: k // 2, (k - 1) // 2 (k = 4 taps) -> the shapes double / halve / stay."""
  x = np.random.default_rng(1).normal(size=(1, 6, 6, 2)).astype(np.float32)
  taps = sg.FIR_TAPS
  up = sg.upsample2d(jnp.asarray(x))
  np.testing.assert_allclose(up, upfirdn_numpy(x, taps, 2, 1, (2, 1, 2, 1), gain=4.0),
                             atol=1e-5)
  assert up.shape == (1, 12, 12, 2)
  down = sg.downsample2d(jnp.asarray(x))
  np.testing.assert_allclose(down, upfirdn_numpy(x, taps, 1, 2, (1, 1, 1, 1)), atol=1e-5)
  assert down.shape == (1, 3, 3, 2)
  filt = sg.filter2d(jnp.asarray(x), padding=1)
  np.testing.assert_allclose(filt, upfirdn_numpy(x, taps, 1, 1, (3, 2, 3, 2)), atol=1e-5)
  assert filt.shape == (1, 8, 8, 2)


# ---------------------------------------------------------------------------------------------
# Modulated convolution against the per-sample fused form.


def _styles(affine, w, w_dim):
  return w @ (affine["weight"] / math.sqrt(w_dim)).T + affine["bias"]


def modulated_conv_numpy(x, weight, styles, up):
  """Per sample n: w_n = weight * styles[n] over input channels, demodulated per output channel;
  up = 1: correlation, padding 1; up = 2: the reference's transposed conv (stride 2) of length
  2H + 1, then the [1,3,3,1] filter with gain 4 and padding 1."""
  n, _, _, _ = x.shape
  c_out = weight.shape[0]
  f = np.outer(sg.FIR_TAPS, sg.FIR_TAPS) / 64.0 * 4.0
  out = []
  for i in range(n):
    wn = weight * styles[i][None, :, None, None]
    wn = wn / np.sqrt(np.sum(wn ** 2, axis=(1, 2, 3), keepdims=True) + 1e-8)
    maps = []
    for o in range(c_out):
      acc = 0.0
      for ci in range(weight.shape[1]):
        xc = x[i, :, :, ci]
        if up == 1:
          acc = acc + signal.correlate2d(np.pad(xc, 1), wn[o, ci], mode="valid")
        else:
          acc = acc + signal.convolve2d(
              np.pad(signal.convolve2d(_stuff(xc), wn[o, ci], mode="full"), 1), f, mode="valid")
      maps.append(acc)
    out.append(np.stack(maps, -1))
  return np.stack(out)


def _stuff(x):
  z = np.zeros((2 * x.shape[0] - 1, 2 * x.shape[1] - 1))
  z[::2, ::2] = x
  return z


@pytest.mark.parametrize("up", [1, 2])
def test_synthesis_layer_matches_fused_per_sample_form(up):
  layer = sg.SynthesisLayer(3, 4, w_dim=5, resolution=4 * up, up=up, conv_clamp=0.8)
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
  w = rng.normal(size=(2, 5)).astype(np.float32)
  variables = layer.init(jax.random.PRNGKey(0), x, w, "none")
  params = jax.tree_util.tree_map(np.asarray, variables["params"])
  params["bias"] = rng.normal(size=4).astype(np.float32)
  params["affine"]["bias"] = rng.normal(size=3).astype(np.float32)
  got = layer.apply({**variables, "params": params}, x, w, "none")
  y = modulated_conv_numpy(x, params["weight"], _styles(params["affine"], w, 5), up)
  y = y + params["bias"]
  expected = np.clip(np.where(y >= 0, y, 0.2 * y) * math.sqrt(2.0), -0.8, 0.8)
  assert got.shape == (2, 4 * up, 4 * up, 4)
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
  assert np.any(np.abs(expected) == 0.8) and np.any(np.abs(expected) < 0.8)


def test_torgb_is_modulated_without_demodulation():
  layer = sg.ToRGBLayer(4, 3, w_dim=5)
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
  w = rng.normal(size=(2, 5)).astype(np.float32)
  params = jax.tree_util.tree_map(np.asarray, layer.init(jax.random.PRNGKey(0), x, w)["params"])
  styles = _styles(params["affine"], w, 5) / math.sqrt(4)
  expected = np.einsum("nhwi,oi,ni->nhwo", x, params["weight"][:, :, 0, 0], styles)
  np.testing.assert_allclose(layer.apply({"params": params}, x, w), expected + params["bias"],
                             atol=1e-5, rtol=1e-5)


def test_minibatch_std_follows_the_reference_reshape_order():
  """NCHW reference: reshape (G, N / G, F, C / F, H, W), stats over G, mean over (c, H, W),
  tiled G times over the batch."""
  rng = np.random.default_rng(4)
  x = rng.normal(size=(6, 3, 2, 4)).astype(np.float32) * np.arange(1, 7)[:, None, None, None]
  g, f = 2, 2
  nchw = np.transpose(x, (0, 3, 1, 2))
  y = nchw.reshape(g, -1, f, 2, 3, 2)
  y = np.sqrt(np.mean((y - y.mean(0)) ** 2, axis=0) + 1e-8).mean(axis=(2, 3, 4))  # [n, F]
  y = np.tile(y, (g, 1))
  got = np.asarray(sg.minibatch_std(jnp.asarray(x), group_size=g, num_channels=f))
  assert got.shape == (6, 3, 2, 6)
  np.testing.assert_allclose(got[..., :4], x)
  np.testing.assert_allclose(got[..., 4:], np.broadcast_to(y[:, None, None, :], (6, 3, 2, 2)),
                             rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Mapping: truncation and w_avg.


def _tiny_generator(**synthesis):
  return sg.Generator(z_dim=6, c_dim=2, w_dim=4, img_resolution=8, img_channels=1,
                      mapping_kwargs={"num_layers": 2},
                      synthesis_kwargs={"channel_base": 32, "channel_max": 4, **synthesis})


def _init_tiny(module, z, c):
  keys = {"params": jax.random.PRNGKey(0), "noise": jax.random.PRNGKey(1)}
  variables = module.init(keys, z, c, noise_mode="const")
  buffers = jax.tree_util.tree_map(np.asarray, variables["buffers"])
  buffers["mapping"]["w_avg"] = np.linspace(-1.0, 1.0, 4).astype(np.float32)
  return {"params": variables["params"], "buffers": buffers}


def _mapping(module, variables, z, c, **kwargs):
  return module.apply(variables, z, c, method=lambda m, z, c: m.mapping(z, c, **kwargs))


def test_truncation_and_cutoff():
  g = _tiny_generator()
  z, c = jnp.ones((3, 6)) * jnp.arange(1, 4)[:, None], jnp.eye(3, 2)
  variables = _init_tiny(g, z, c)
  w_avg = variables["buffers"]["mapping"]["w_avg"]
  ws = np.asarray(_mapping(g, variables, z, c))
  assert ws.shape == (3, g.num_ws, 4) == (3, 4, 4)
  assert np.all(ws == ws[:, :1])  # broadcast
  np.testing.assert_allclose(_mapping(g, variables, z, c, truncation_psi=0.7),
                             w_avg + 0.7 * (ws - w_avg), atol=1e-6)
  cut = np.asarray(_mapping(g, variables, z, c, truncation_psi=0.5, truncation_cutoff=2))
  np.testing.assert_allclose(cut[:, :2], w_avg + 0.5 * (ws[:, :2] - w_avg), atol=1e-6)
  np.testing.assert_array_equal(cut[:, 2:], ws[:, 2:])
  img = g.apply(variables, z, c, truncation_psi=0.0, noise_mode="const")
  img_avg = g.apply(variables, z, c, method=lambda m, z, c: m.synthesis(
      jnp.broadcast_to(jnp.asarray(w_avg), (3, 4, 4)), noise_mode="const"))
  np.testing.assert_allclose(img, img_avg, atol=1e-6)


def test_w_avg_tracks_the_mean_only_with_update_emas():
  g = _tiny_generator()
  z, c = jax.random.normal(jax.random.PRNGKey(5), (3, 6)), jnp.eye(3, 2)
  variables = _init_tiny(g, z, c)
  w_avg = variables["buffers"]["mapping"]["w_avg"]
  ws, state = g.apply(variables, z, c, method=lambda m, z, c: m.mapping(z, c, update_emas=True),
                      mutable=["buffers"])
  mean = np.asarray(ws[:, 0]).mean(0)
  np.testing.assert_allclose(state["buffers"]["mapping"]["w_avg"],
                             mean + 0.995 * (w_avg - mean), atol=1e-6)
  _, state = g.apply(variables, z, c, method=lambda m, z, c: m.mapping(z, c),
                     mutable=["buffers"])
  np.testing.assert_array_equal(state["buffers"]["mapping"]["w_avg"], w_avg)


# ---------------------------------------------------------------------------------------------
# Noise modes.


def test_noise_modes():
  g = _tiny_generator()
  z, c = jax.random.normal(jax.random.PRNGKey(6), (2, 6)), jnp.eye(2, 2)
  variables = _init_tiny(g, z, c)
  params = jax.tree_util.tree_map(lambda p: p, variables["params"])
  strengths = jax.tree_util.tree_map_with_path(
      lambda path, p: p + 0.5 if path[-1].key == "noise_strength" else p, params)
  noisy = {"params": strengths, "buffers": variables["buffers"]}

  def run(v, mode, seed=0):
    return np.asarray(g.apply(v, z, c, noise_mode=mode, rngs={"noise": jax.random.PRNGKey(seed)}))

  # Zero strength (the init): every mode gives the same image.
  np.testing.assert_allclose(run(variables, "random"), run(variables, "none"), atol=1e-6)
  np.testing.assert_allclose(run(variables, "const"), run(variables, "none"), atol=1e-6)
  const, none = run(noisy, "const"), run(noisy, "none")
  assert np.max(np.abs(const - none)) > 1e-3
  np.testing.assert_array_equal(const, run(noisy, "const", seed=1))
  r0, r1 = run(noisy, "random", 0), run(noisy, "random", 1)
  np.testing.assert_array_equal(r0, run(noisy, "random", 0))
  assert np.max(np.abs(r0 - r1)) > 1e-3 and np.max(np.abs(r0 - const)) > 1e-3


# ---------------------------------------------------------------------------------------------
# Bad inputs: one-line ValueErrors before compute.


@pytest.mark.parametrize("res", [2, 12, 2048])
def test_bad_resolution(res):
  with pytest.raises(ValueError, match="img_resolution must be a power of two"):
    sg.generator_from_kwargs(_g_kwargs(res, 0, "skip"))
  with pytest.raises(ValueError, match="img_resolution must be a power of two"):
    sg.discriminator_from_kwargs(_d_kwargs(res, 0, "resnet"))


@pytest.mark.parametrize("field", ["channel_base", "channel_max"])
def test_bad_channels(field):
  g_kwargs = _g_kwargs(16, 0, "skip")
  g_kwargs["synthesis_kwargs"][field] = 0
  with pytest.raises(ValueError, match=f"{field} must be > 0"):
    sg.generator_from_kwargs(g_kwargs)
  with pytest.raises(ValueError, match=f"{field} must be > 0"):
    sg.discriminator_from_kwargs({**_d_kwargs(16, 0, "resnet"), field: -1})


def test_bad_architecture_noise_mode_and_keys():
  with pytest.raises(ValueError, match="architecture 'dense' is unknown"):
    sg.generator_from_kwargs(_g_kwargs(16, 0, "dense"))
  with pytest.raises(ValueError, match="architecture 'dense' is unknown"):
    sg.discriminator_from_kwargs(_d_kwargs(16, 0, "dense"))
  with pytest.raises(ValueError, match="unknown key 'bogus'"):
    sg.generator_from_kwargs({**_g_kwargs(16, 0, "skip"), "bogus": 1})
  with pytest.raises(ValueError, match="synthesis_kwargs has unknown key 'kernel'"):
    sg.generator_from_kwargs(_g_kwargs(16, 0, "skip") | {
        "synthesis_kwargs": {"channel_base": 64, "kernel": 3}})
  with pytest.raises(ValueError, match="unknown key 'bogus'"):
    sg.discriminator_from_kwargs({**_d_kwargs(16, 0, "resnet"), "bogus": 1})
  g = _tiny_generator()
  z, c = jnp.zeros((1, 6)), jnp.zeros((1, 2))
  variables = _init_tiny(g, z, c)
  with pytest.raises(ValueError, match="noise_mode 'fixed' is unknown"):
    g.apply(variables, z, c, noise_mode="fixed")
