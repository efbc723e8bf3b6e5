"""Channel distillation (OMGD's "CD" loss): a learned connector and the pooled-channel MSE.

Semantics follow bytedance/OMGD `distillers/base_multiteacher_distiller.py`
(`build_feature_connector`, then `networks.init_net`) and
`distillers/multiteacher_distiller.py::calc_CD_loss`:
- connector: 1x1 conv from student to teacher channels without bias, BatchNorm, ReLU.
  `build_feature_connector` first draws He-style N(0, sqrt(2 / C_teacher)) weights, but
  `init_net` right after re-initialises the module with pix2pix's `normal` init, so the
  effective init is conv N(0, 0.02), BatchNorm scale N(1, 0.02), bias 0. We use that.
  OMGD never switches the connectors to eval mode, so training uses batch statistics.
- loss: per layer, global-average-pool both activations over H and W (no softmax, no
  attention weighting), MSE over the (N, C) vectors (mean), teacher side detached;
  the layer losses are summed. The weight `lambda_CD` is applied by the caller.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gankd_jax.models.layers import BatchNorm, mixed_conv


def _normal_around_one(stddev: float):
  def init(key, shape, dtype=jnp.float32):
    return 1.0 + stddev * jax.random.normal(key, shape, dtype)
  return init


class ChannelConnector(nn.Module):
  """Maps a student activation (N, H, W, C_s) to the teacher's width (N, H, W, C_t)."""

  teacher_channels: int

  @nn.compact
  def __call__(self, x, *, train: bool = True):
    x = nn.Conv(self.teacher_channels, (1, 1), use_bias=False,
                kernel_init=nn.initializers.normal(0.02), conv_general_dilated=mixed_conv,
                name="conv")(x)
    x = BatchNorm(scale_init=_normal_around_one(0.02), name="norm")(
        x, use_running_average=not train)
    return nn.relu(x)


def channel_distillation_loss(student_feats_mapped: Sequence[jax.Array],
                              teacher_feats: Sequence[jax.Array]) -> jax.Array:
  """Sum over layers of MSE between global-average-pooled student and teacher channels.

  `student_feats_mapped[i]` is the connector output for layer i, `teacher_feats[i]` the
  wide teacher's activation there; both NHWC with equal N and C (H, W may differ).
  """
  if len(student_feats_mapped) != len(teacher_feats):
    raise ValueError(f"channel distillation got {len(student_feats_mapped)} student layers "
                     f"and {len(teacher_feats)} teacher layers")
  total = jnp.zeros((), jnp.float32)
  for index, (student, teacher) in enumerate(zip(student_feats_mapped, teacher_feats)):
    if student.ndim != 4 or teacher.ndim != 4 or (student.shape[0], student.shape[-1]) != (
            teacher.shape[0], teacher.shape[-1]):
      raise ValueError(f"channel distillation layer {index}: student shape {student.shape} "
                       f"does not match teacher shape {teacher.shape} in batch/channels")
    student_pooled = jnp.mean(jnp.asarray(student, jnp.float32), axis=(1, 2))
    teacher_pooled = jax.lax.stop_gradient(jnp.mean(jnp.asarray(teacher, jnp.float32), axis=(1, 2)))
    total = total + jnp.mean(jnp.square(student_pooled - teacher_pooled))
  return total
