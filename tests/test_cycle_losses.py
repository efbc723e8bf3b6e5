"""CycleGAN teacher losses (gankd_jax/losses/cycle.py) against bytedance/OMGD's own PyTorch
computation (fixtures from tests/fixtures/make_cycle_fixtures.py: its define_G mobile_resnet_9blocks
/ resnet_9blocks, define_D n_layers 3, GANLoss, L1; weights seeded by the reference's init),
with the torch weights imported by our converters (generator_pth, discriminator_pth): generator
outputs, every loss term for lsgan / vanilla / hinge, and the weights' wiring (lambda_A vs
lambda_B in the cycle and identity terms)."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gankd_jax.losses import cycle
from gankd_jax.models.patchgan import NLayerDiscriminator
from gankd_jax.weights import discriminator_pth, generator_pth
from gankd_jax.weights.torch_pth import save_state_dict

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "cycle")
TERMS = ("gan_a", "gan_b", "cycle_a", "cycle_b", "idt_a", "idt_b")
# The fixture terms are float64 computations on the same (float16-exact) weights and inputs;
# ours run in float32.
RTOL = 1e-5


def _load(name: str) -> dict:
  with np.load(os.path.join(FIXTURES, f"{name}.npz")) as archive:
    return {k: archive[k] for k in archive.files}


def _state(arrays: dict, prefix: str) -> dict:
  return {k[len(prefix) + 1:]: v.astype(np.float32) for k, v in arrays.items()
          if k.startswith(prefix + "/")}


def _nhwc(array) -> jnp.ndarray:
  return jnp.asarray(np.asarray(array, np.float32).transpose(0, 2, 3, 1))


def _apply(module, variables):
  return jax.jit(lambda x: module.apply(variables, x, train=False))


@pytest.fixture(scope="module")
def discriminators():
  arrays = _load("discriminators")
  out = {}
  for name in ("D_A", "D_B"):
    state = _state(arrays, name)
    spec = discriminator_pth.detect_spec(state, name)
    assert spec == discriminator_pth.DiscriminatorSpec(ndf=8, n_layers=3, norm="instance")
    out[name] = _apply(spec.build(), discriminator_pth.variables_from_state_dict(state, spec, name))
  return out


@pytest.fixture(scope="module", params=["mobile_resnet", "resnet_9blocks"])
def case(request, discriminators):
  arrays = _load(request.param)
  nets = dict(discriminators)
  for name in ("G_A", "G_B"):
    state = _state(arrays, name)
    spec = generator_pth.detect_spec(state, name)
    assert spec.family == request.param and spec.norm == "instance"
    variables, _ = generator_pth.variables_from_state_dict(state, spec, name)
    nets[name] = _apply(spec.build(), variables)
  return request.param, arrays, nets


def _losses(nets, arrays, **kwargs):
  return cycle.generator_losses(nets["G_A"], nets["G_B"], nets["D_A"], nets["D_B"],
                                _nhwc(arrays["real_A"]), _nhwc(arrays["real_B"]), **kwargs)


def test_generator_outputs_equal_reference(case):
  name, arrays, nets = case
  _, _, images = _losses(nets, arrays)
  real_a, real_b = _nhwc(arrays["real_A"]), _nhwc(arrays["real_B"])
  outputs = dict(images, idt_a=nets["G_A"](real_b), idt_b=nets["G_B"](real_a))
  for ours, theirs in (("fake_b", "fake_B"), ("fake_a", "fake_A"), ("rec_a", "rec_A"),
                       ("rec_b", "rec_B"), ("idt_a", "idt_A"), ("idt_b", "idt_B")):
    ref = _nhwc(arrays[theirs])
    got = np.asarray(outputs[ours])[:, ::2, ::2]
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5, err_msg=f"{name} {ours}")
    assert float(np.std(ref)) > 0.1  # not saturated, not constant


def test_terms_equal_reference(case):
  name, arrays, nets = case
  real_a, real_b = _nhwc(arrays["real_A"]), _nhwc(arrays["real_B"])
  # The GAN modes differ only in the adversarial terms: all three on one generator family.
  for gan_mode in ("lsgan", "vanilla", "hinge") if name == "mobile_resnet" else ("lsgan",):
    total, terms, _ = _losses(nets, arrays, gan_mode=gan_mode)
    assert set(terms) == set(TERMS)
    expected = {k.rpartition("/")[2]: float(v) for k, v in arrays.items()
                if k.startswith(f"term/{gan_mode}/")}
    for term in TERMS:
      np.testing.assert_allclose(float(terms[term]), expected[term], rtol=RTOL,
                                 err_msg=f"{name} {gan_mode} {term}")
    np.testing.assert_allclose(float(total), expected["total"], rtol=RTOL)
    d_a = cycle.discriminator_loss(nets["D_A"], real_b, _nhwc(arrays["fake_pool_B"]),
                                   gan_mode=gan_mode)
    d_b = cycle.discriminator_loss(nets["D_B"], real_a, _nhwc(arrays["fake_pool_A"]),
                                   gan_mode=gan_mode)
    np.testing.assert_allclose(float(d_a), expected["d_a"], rtol=RTOL, err_msg=f"{gan_mode} D_A")
    np.testing.assert_allclose(float(d_b), expected["d_b"], rtol=RTOL, err_msg=f"{gan_mode} D_B")


def test_weights_wiring_and_identity_off(case):
  """idt_a (|G_A(B) - B|) scales with lambda_B, idt_b with lambda_A; lambda_identity 0 drops
  the identity terms and the two generator passes they need."""
  _, arrays, nets = case
  expected = {k.rpartition("/")[2]: float(v) for k, v in arrays.items()
              if k.startswith("term/lsgan/")}
  _, terms, _ = _losses(nets, arrays, lambda_a=3.0, lambda_b=10.0, lambda_identity=0.2)
  np.testing.assert_allclose(float(terms["cycle_a"]), expected["cycle_a"] * 0.3, rtol=RTOL)
  np.testing.assert_allclose(float(terms["cycle_b"]), expected["cycle_b"], rtol=RTOL)
  np.testing.assert_allclose(float(terms["idt_a"]), expected["idt_a"] * 0.4, rtol=RTOL)
  np.testing.assert_allclose(float(terms["idt_b"]), expected["idt_b"] * 0.3 * 0.4, rtol=RTOL)
  calls = {"a": 0, "b": 0}

  def counted(key, net):
    def run(x):
      calls[key] += 1
      return net(x)
    return run

  total, terms, _ = cycle.generator_losses(
      counted("a", nets["G_A"]), counted("b", nets["G_B"]), nets["D_A"], nets["D_B"],
      _nhwc(arrays["real_A"]), _nhwc(arrays["real_B"]), lambda_identity=0.0)
  assert calls == {"a": 2, "b": 2}
  assert float(terms["idt_a"]) == 0.0 and float(terms["idt_b"]) == 0.0
  np.testing.assert_allclose(float(total), expected["total"] - expected["idt_a"]
                             - expected["idt_b"], rtol=RTOL)


def test_discriminator_loss_stops_the_fake_gradient():
  def d(x):
    return jnp.mean(x, axis=(1, 2, 3), keepdims=True) * 3.0
  real, fake = jnp.ones((2, 4, 4, 3)), jnp.full((2, 4, 4, 3), 0.5)
  grad_real, grad_fake = jax.grad(lambda r, f: cycle.discriminator_loss(d, r, f),
                                  argnums=(0, 1))(real, fake)
  np.testing.assert_array_equal(np.asarray(grad_fake), 0.0)
  assert float(jnp.abs(grad_real).sum()) > 0


def test_nlayer_discriminator_shapes_and_parameter_count():
  arrays = _load("discriminators")
  torch_count = sum(v.size for k, v in arrays.items() if k.startswith("D_A/"))
  module = NLayerDiscriminator(ndf=8, n_layers=3, norm="instance")
  x = jnp.zeros((2, 32, 32, 3))
  variables = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x))
  assert sum(x.size for x in jax.tree_util.tree_leaves(variables["params"])) == torch_count
  # 32 -> 16 -> 8 -> 4 (stride 2), -> 3 -> 2 (stride 1): the reference's 70x70 PatchGAN map.
  assert jax.eval_shape(module.apply, variables, x).shape == (2, 2, 2, 1)
  batch = NLayerDiscriminator(ndf=4, n_layers=2, norm="batch")
  variables = jax.eval_shape(lambda: batch.init(jax.random.PRNGKey(0), x))
  assert "conv1" in variables["params"] and "bias" not in variables["params"]["conv1"]["conv"]
  assert set(variables["batch_stats"]) == {"norm1", "norm2"}
  assert variables["params"]["conv3"]["conv"]["kernel"].shape == (4, 4, 16, 1)


def test_batch_norm_discriminator_and_pth_file(tmp_path):
  """A BatchNorm PatchGAN (running statistics, eval mode) read from a `.pth` file with the
  `module.` prefix DataParallel adds: our logits equal the reference's."""
  arrays = _load("discriminators")
  state = {f"module.{k}": v for k, v in _state(arrays, "D_batch").items()}
  save_state_dict(tmp_path / "net_D.pth", state)
  module, variables, spec = discriminator_pth.load_discriminator(tmp_path / "net_D.pth")
  assert spec == discriminator_pth.DiscriminatorSpec(ndf=4, n_layers=2, norm="batch")
  real_a = _nhwc(_load("mobile_resnet")["real_A"])
  logits = module.apply(variables, real_a, train=False)
  ref = _nhwc(arrays["D_batch_logits"])
  assert float(np.std(ref)) > 0.05
  np.testing.assert_allclose(np.asarray(logits), ref, rtol=0, atol=1e-5)


def test_discriminator_converter_refuses_other_files():
  state = _state(_load("discriminators"), "D_A")
  spec = discriminator_pth.detect_spec(state)
  with pytest.raises(ValueError, match="model.11.weight"):
    discriminator_pth.variables_from_state_dict(
        {k: v for k, v in state.items() if k != "model.11.weight"}, spec, "d.pth")
  with pytest.raises(ValueError, match="has no place"):
    discriminator_pth.variables_from_state_dict(dict(state, **{"extra.weight": np.ones(2)}),
                                                spec, "d.pth")
  with pytest.raises(ValueError, match="not a PatchGAN"):
    discriminator_pth.detect_spec({"model.1.weight": np.ones((8, 3, 7, 7))}, "g.pth")


def test_bad_input():
  def net(x):
    return x
  x = jnp.zeros((1, 8, 8, 3))
  with pytest.raises(ValueError, match="gan_mode"):
    cycle.generator_losses(net, net, net, net, x, x, gan_mode="wgan")
  with pytest.raises(ValueError, match="lambda_identity"):
    cycle.generator_losses(net, net, net, net, x, x, lambda_identity=-1.0)
  with pytest.raises(ValueError, match="gan_mode"):
    cycle.discriminator_loss(net, x, x, gan_mode="bce")
