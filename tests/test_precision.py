"""config.precision: bfloat16 products with float32 results (models/layers.py), through the
routes a convolution may take, the fused train steps of a paired and an unconditional method,
and the feature networks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gankd_jax import parallel, preflight, train
from gankd_jax.methods import build_method
from gankd_jax.models import layers, vgg

from conftest import tiny_aguinaldo_config, tiny_omgd_config

# bfloat16 keeps 8 significant bits: a product of N terms is off by ~2^-8 relative per operand,
# so sums of many such terms are within a few 1e-3 of float32 relative to the largest output.
BF16_RTOL = 2e-2


def relative_error(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def lax_conv(x, k, stride, pad, groups=1):
  return jax.lax.conv_general_dilated(x, k, (stride, stride), pad,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=groups)


def bf16_operands_in(fn, *args) -> set[str]:
  """The products in `fn`'s jaxpr (nested ones included) that take bfloat16 operands."""
  found = set()

  def visit(eqns):
    for eqn in eqns:
      if eqn.primitive.name in ("dot_general", "conv_general_dilated") and all(
          getattr(v.aval, "dtype", None) == jnp.bfloat16 for v in eqn.invars):
        found.add(eqn.primitive.name)
      for value in eqn.params.values():
        inner = getattr(value, "jaxpr", value)
        if hasattr(inner, "eqns"):
          visit(inner.eqns)
  visit(jax.make_jaxpr(fn)(*args).jaxpr.eqns)
  return found


@pytest.mark.parametrize("x_shape,kernel_shape,stride,pad,groups", [
    ((2, 16, 16, 6), (3, 3, 6, 5), 1, [(1, 1), (1, 1)], 1),   # XLA's convolution
    ((2, 6, 6, 8), (3, 3, 8, 7), 1, [(1, 1), (1, 1)], 1),     # im2col + matmul (small output)
    ((2, 12, 12, 6), (1, 1, 6, 9), 1, [(0, 0), (0, 0)], 1),   # 1x1 as a matmul
    ((2, 16, 16, 6), (4, 4, 6, 5), 2, [(1, 1), (1, 1)], 1),   # strided
    ((1, 20, 20, 6), (4, 4, 6, 5), 2, [(1, 1), (1, 1)], 1),   # strided, one image: tap products
    ((2, 9, 9, 6), (3, 3, 1, 6), 1, [(1, 1), (1, 1)], 6),     # depthwise (stays float32)
])
def test_bfloat16_routes_equal_lax_convolution_within_bfloat16_rounding(
    x_shape, kernel_shape, stride, pad, groups):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  k = jnp.asarray(rng.normal(size=kernel_shape) * 0.2, jnp.float32)
  ours = lambda x, k: layers.conv_general_dilated(x, k, (stride, stride), pad,
                                                  feature_group_count=groups)
  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))
  expected = lax_conv(x, k, stride, pad, groups)
  expected_grads = jax.grad(loss(lambda x, k: lax_conv(x, k, stride, pad, groups)), (0, 1))(x, k)
  with layers.compute_precision("bfloat16"):
    got = jax.jit(ours)(x, k)
    grads = jax.jit(jax.grad(loss(ours), (0, 1)))(x, k)
    low = bf16_operands_in(jax.grad(loss(ours), (0, 1)), x, k)
  assert got.dtype == jnp.float32 and all(g.dtype == jnp.float32 for g in grads)
  if groups > 1:  # Elementwise taps: exact float32 work, no product in bfloat16.
    assert not low
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    return
  assert low, "no convolution or matrix product took bfloat16 operands"
  assert 1e-5 < relative_error(got, expected) < BF16_RTOL
  for g, e in zip(grads, expected_grads):
    assert relative_error(g, e) < BF16_RTOL


def test_float32_traces_are_untouched_by_the_switch():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 16, 16, 4)), jnp.float32)
  k = jnp.asarray(np.random.default_rng(2).normal(size=(3, 3, 4, 4)), jnp.float32)
  with layers.compute_precision("float32"):
    got = layers.conv_general_dilated(x, k, (1, 1), [(1, 1), (1, 1)])
  np.testing.assert_array_equal(got, lax_conv(x, k, 1, [(1, 1), (1, 1)]))
  with layers.compute_precision("bfloat16"):
    pass
  assert layers.compute_dtype() is None


def test_dense_products_and_feature_networks_follow_the_switch():
  x = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
  net = vgg.VGG16Features()
  variables = net.init(jax.random.key(0), x)
  f32 = net.apply(variables, x)
  with layers.compute_precision("bfloat16"):
    low = jax.jit(net.apply)(variables, x)
    assert "conv_general_dilated" in bf16_operands_in(net.apply, variables, x)
    dense = jnp.ones((3, 5)) @ jnp.ones((5, 2))
    assert layers.dot_general(jnp.ones((3, 5)), jnp.ones((5, 2)), (((1,), (0,)), ((), ()))
                              ).dtype == jnp.float32
  np.testing.assert_allclose(layers.dot_general(jnp.ones((3, 5)), jnp.ones((5, 2)),
                                                (((1,), (0,)), ((), ()))), dense)
  for name in f32:
    assert relative_error(low[name], f32[name]) < 5 * BF16_RTOL, name  # 13 layers deep


def omgd_step(config, steps: int):
  mesh = parallel.make_mesh(1)
  method = build_method(config)
  rng = np.random.default_rng(0)
  size = config.data.crop_size
  batch = parallel.global_batch({k: rng.uniform(-1, 1, (config.batch_size, size, size, 3))
                                 .astype(np.float32) for k in ("A", "B")}, mesh)
  state = jax.jit(method.init_state)(jax.random.key(0), batch, {})
  fns, history = {}, []
  for step in range(steps):
    phase = method.phase(step)
    fns.setdefault(phase, train.make_train_step(method, mesh, phase))
    state, metrics = fns[phase](state, batch, {})
    history.append(jax.device_get(metrics))
  return jax.device_get(state), history


def test_float32_and_bfloat16_omgd_steps_agree_within_bfloat16_rounding():
  state_32, (metrics_32,) = omgd_step(tiny_omgd_config(), 1)
  state_16, (metrics_16,) = omgd_step(tiny_omgd_config(precision="bfloat16"), 1)
  differ = 0
  for name, value in metrics_32.items():
    assert abs(metrics_16[name] - value) <= BF16_RTOL * max(abs(value), 1e-2), name
    differ += metrics_16[name] != value
  assert differ, "bfloat16 changed no loss: the switch did nothing"
  # Adam's first step moves every parameter by ~lr * sign(grad): the same move unless rounding
  # flipped a near-zero gradient's sign (measured: ~7 % of one layer's entries at most).
  lr = tiny_omgd_config().optimizer.lr
  for role in ("student", "teacher_wide"):
    for a, b in zip(jax.tree_util.tree_leaves(getattr(state_32, role).params),
                    jax.tree_util.tree_leaves(getattr(state_16, role).params)):
      assert a.dtype == b.dtype == np.float32
      assert np.mean(np.abs(a - b)) <= 0.3 * lr


def test_bfloat16_omgd_step_lowers_the_student_loss_on_a_fixed_batch():
  config = tiny_omgd_config(n_dis=1000, num_train_steps=1000, precision="bfloat16",
                            **{"optimizer.lr": 2e-3})
  _, history = omgd_step(config, 30)
  first, last = history[1]["student/total"], history[-1]["student/total"]
  assert last < 0.8 * first, (first, last)


def test_bfloat16_unconditional_distillation_lowers_its_loss():
  """Aguinaldo et al.'s MSE distillation of a DCGAN, in bfloat16, on a fixed real batch."""
  config = tiny_aguinaldo_config("mse", precision="bfloat16", **{"optimizer.lr": 3e-3})
  method = build_method(config)
  mesh = parallel.make_mesh(1)
  size = config.data.image_size
  batch = {"image": jnp.asarray(np.random.default_rng(0).uniform(
      -1, 1, (config.batch_size, size, size, 1)), jnp.float32),
           "index": jnp.arange(config.batch_size, dtype=jnp.int32)}
  state = jax.jit(method.init_state)(jax.random.key(0), batch, {})
  step = train.make_train_step(method, mesh, method.phase(config.teacher.num_train_steps))
  losses = []
  for _ in range(20):
    state, metrics = step(state, batch, {})
    losses.append(float(metrics["student/mse"]))
  assert losses[-1] < 0.2 * losses[0], losses


def test_precision_is_checked_before_compute():
  assert tuple(layers.PRECISIONS) == preflight.PRECISIONS
  config = tiny_omgd_config(precision="float16")
  with pytest.raises(ValueError, match="precision must be one of float32, bfloat16, got 'float16'"):
    preflight.check(config)
  with pytest.raises(ValueError, match="precision must be one of"):
    layers.check_precision("fp8")
