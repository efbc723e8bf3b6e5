"""The inference path (gankd_jax/inference.py): every generator family compiled with constant
weights and forward-only layer forms gives the training graph's eval-mode outputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gankd_jax import models, xla_cpu
from gankd_jax.inference import compile_inference
from gankd_jax.models import dcgan, layers

# Measured differences: ~1e-7 (U-Nets) to ~1e-6 (ResNets: instance norms over larger sums), and
# 2.6e-5 for the deep ResNet teacher at ngf 4, whose many instance norms over 4 channels amplify
# rounding: against a float64 evaluation, its training graph is off by 1.7e-5, the inference
# path by 2.0e-5 (both float32; their forms only add in different orders).
ATOL = 5e-5


@pytest.mark.parametrize("fields", [
    dict(name="unet", ngf=8, norm="batch", num_downs=5),
    dict(name="unet", ngf=4, norm="instance", num_downs=5),
    dict(name="unet_deepest", ngf=4, norm="batch", num_downs=5),
    dict(name="mobile_resnet", ngf=4, norm="instance"),
    dict(name="resnet_9blocks", ngf=4, norm="instance"),
    dict(name="mobile_resnet_deepest", ngf=4, norm="instance"),
], ids=lambda f: f"{f['name']}_{f['norm']}")
def test_inference_path_equals_the_training_graph(fields):
  module = models.build_generator(**fields)
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1, maxval=1)
  variables = module.init(jax.random.key(0), x, train=False)
  if "batch_stats" in variables:  # Running statistics away from their init (0 mean, 1 var).
    variables = {**variables, "batch_stats": jax.tree_util.tree_map(
        lambda v: v + 0.3 * jax.random.uniform(jax.random.key(2), v.shape),
        variables["batch_stats"])}
  expected = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x)
  forward = compile_inference(lambda v, x: module.apply(v, x, train=False), variables)
  np.testing.assert_allclose(forward(x), expected, atol=ATOL)
  with layers.inference_graph():  # The inference forms traced with weights as arguments.
    traced = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x)
  np.testing.assert_allclose(traced, expected, atol=ATOL)


def test_latent_generator_inference_path_equals_the_training_graph():
  module = dcgan.DCGANGenerator(image_size=16, channels=1, d=4, nz=8)
  z = jax.random.normal(jax.random.key(0), (3, 8))
  variables = module.init(jax.random.key(1), z, train=False)
  expected = module.apply(variables, z, train=False)
  forward = compile_inference(lambda v, z: module.apply(v, z, train=False), variables)
  np.testing.assert_allclose(forward(z), expected, atol=ATOL)


@pytest.mark.parametrize("k,p,op", [(4, 1, 0), (3, 1, 1)])
@pytest.mark.parametrize("c_out", [5, 3])
def test_transposed_conv_forms_are_the_same_function(k, p, op, c_out):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 5, 6, 64)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 64, c_out)) * 0.1, jnp.float32)
  expected = layers.conv_transpose_dilated(x, w, p, op)
  np.testing.assert_allclose(layers.conv_transpose_phases(x, w, p, op), expected, atol=1e-4)
  np.testing.assert_allclose(layers.conv_transpose_subpixel(x, w, p, op), expected, atol=1e-4)
  chosen = layers.inference_conv_transpose(c_out)
  assert chosen is (layers.conv_transpose_dilated if c_out <= layers.INFERENCE_DILATED_MAX_OUT
                    else layers.conv_transpose_phases)
  np.testing.assert_allclose(chosen(x, w, p, op), expected, atol=1e-4)


def test_weights_are_compile_time_constants():
  """The compiled program takes only the input: the weights are in it (and their layout work
  folded), so calling it never re-reads a weights argument."""
  w = {"w": jnp.arange(6.0).reshape(2, 3)}
  forward = compile_inference(lambda v, x: x @ v["w"][:, ::-1], w)
  np.testing.assert_allclose(forward(jnp.ones((1, 2))), [[7.0, 5.0, 3.0]])
  assert len(jax.tree_util.tree_leaves(forward.jitted.lower(jnp.ones((1, 2))).args_info)) == 1


def test_inference_precision_is_checked_and_applied():
  with pytest.raises(ValueError, match="precision must be one of"):
    compile_inference(lambda v, x: x, {}, precision="half")
  k = np.random.default_rng(1).normal(size=(3, 3, 4, 4)).astype(np.float32)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 16, 16, 4)), jnp.float32)
  conv = lambda v, x: layers.conv_general_dilated(x, v, (1, 1), [(1, 1), (1, 1)])
  f32 = compile_inference(conv, k)(x)
  bf16 = compile_inference(conv, k, precision="bfloat16")(x)
  assert bf16.dtype == jnp.float32
  assert 0 < float(jnp.max(jnp.abs(bf16 - f32))) < 0.05 * float(jnp.max(jnp.abs(f32)))


def test_forward_only_commands_ask_for_the_ynn_dots_at_every_size(monkeypatch):
  from jax._src import xla_bridge
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  assert "forward passes" in xla_cpu.configure(inference=True)
  monkeypatch.delenv("XLA_FLAGS")
  assert xla_cpu.configure(32) is None  # Training on small images: not set.
