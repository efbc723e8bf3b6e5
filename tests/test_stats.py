"""Parameter counts, MACs and fingerprints on hand-computed cases."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gankd_jax import stats


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Conv(8, (3, 3), padding="SAME")(x)                       # 3 -> 8 channels
    x = nn.Conv(8, (3, 3), feature_group_count=8, padding="SAME")(x)  # depthwise
    x = nn.Conv(4, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)))(x)
    return nn.Dense(5)(x.reshape((x.shape[0], -1)))


def test_params_and_macs_by_hand():
  net = _Net()
  x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  variables = jax.eval_shape(net.init, jax.random.key(0), x)
  expected_params = (3 * 3 * 3 * 8 + 8) + (3 * 3 * 1 * 8 + 8) + (4 * 4 * 8 * 4 + 4) + (8 * 8 * 4 * 5 + 5)
  assert stats.count_params(variables["params"]) == expected_params
  expected_macs = (16 * 16 * 8 * 9 * 3) + (16 * 16 * 8 * 9 * 1) + (8 * 8 * 4 * 16 * 8) + (5 * 256)
  assert stats.count_macs(net.apply, variables, x) == expected_macs


def test_macs_scale_with_batch_and_see_through_scan():
  def looped(w, x):
    def body(h, _):
      return h @ w, None
    return jax.lax.scan(body, x, None, length=3)[0]
  w = jax.ShapeDtypeStruct((6, 6), jnp.float32)
  x = jax.ShapeDtypeStruct((2, 6), jnp.float32)
  assert stats.count_macs(looped, w, x) == 3 * 2 * 6 * 6


def test_fingerprint_is_float64_sums():
  params = {"a": np.array([1.0, 2.0], np.float32), "b": {"c": np.array([[3.0]], np.float32)}}
  assert stats.param_fingerprint(params) == [6.0, 14.0]


def test_fir_filter_macs_are_counted_apart_and_every_time():
  """StyleGAN2's separable 4-tap FIR filters (sums of slices, not convolutions): each output
  sample of each 1-D pass costs its nonzero taps (2 per polyphase output when upsampling by 2,
  4 when downsampling), reported apart from the papers' count, on every trace."""
  from gankd_jax.models import stylegan2
  x = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
  up = stylegan2.upsample2d
  assert stats.mac_parts(up, x) == (0, 2 * 16 * 8 * 3 + 2 * 16 * 16 * 3)
  assert stats.mac_parts(up, x) == (0, 2 * 16 * 8 * 3 + 2 * 16 * 16 * 3)  # Same function again.
  assert stats.mac_parts(stylegan2.downsample2d, x) == (0, 4 * 4 * 8 * 3 + 4 * 4 * 4 * 3)
  assert stats.count_macs(up, x) == 0 and stats.count_macs(up, x, with_filters=True) == 2304
