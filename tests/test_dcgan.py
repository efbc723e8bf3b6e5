"""The DCGAN family (gankd_jax.models.dcgan): shapes, and parameter counts as closed-form functions
of the depth scale factor d, derived layer by layer below (not from our code)."""
import jax
import jax.numpy as jnp
import pytest

from gankd_jax.models import (build_image_discriminator, build_latent_generator,
                              check_latent_image_size, count_params)
from gankd_jax.models.init import init_variables


def generator_params(size, d, nz, c):
  """32: z -> 4x4x4d -> 8x8x2d -> 16x16xd -> 32x32xc; 64 has one more level (8d first).

  Linear nz -> 16 w0 (no bias); per level w: BatchNorm 2w; transposed 4x4 convs w -> w/2 (no
  bias); last 4x4 transposed conv d -> c with bias.
  32: 64 nz d + 16 (4d*2d + 2d*d) + 2 (4d + 2d + d) + 16 d c + c = 160 d^2 + (64 nz + 16 c + 14) d + c
  64: 128 nz d + 16 (8d*4d + 4d*2d + 2d*d) + 2 (15 d) + 16 d c + c
      = 672 d^2 + (128 nz + 16 c + 30) d + c
  """
  if size == 32:
    return 160 * d * d + (64 * nz + 16 * c + 14) * d + c
  assert size == 64
  return 672 * d * d + (128 * nz + 16 * c + 30) * d + c


def discriminator_params(size, d, c, norm):
  """convs 4x4/2: c -> d (bias), d -> 2d -> 4d (-> 8d at 64), each with a norm (2 per channel
  for batch/layer, 0 for instance) or, without norm, a bias; then 4x4 valid conv w -> 1 (bias).
  32: 16 c d + d + 16 (2d^2 + 8d^2) + extra(2d + 4d) + 16*4d + 1
  64: 16 c d + d + 16 (2d^2 + 8d^2 + 32d^2) + extra(2d + 4d + 8d) + 16*8d + 1
  """
  per_channel = {"none": 1, "batch": 2, "layer": 2, "instance": 0}[norm]
  if size == 32:
    return 160 * d * d + (16 * c + 1 + 6 * per_channel + 64) * d + 1
  return 672 * d * d + (16 * c + 1 + 14 * per_channel + 128) * d + 1


def abstract_variables(module, x):
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)


@pytest.mark.parametrize("size,c", [(32, 1), (32, 3), (64, 3), (64, 1)])
@pytest.mark.parametrize("d", [1, 2, 5, 16, 64])
def test_parameter_counts_are_closed_form_in_d(size, c, d):
  nz = 100
  g = build_latent_generator("dcgan", d=d, image_size=size, channels=c, nz=nz)
  variables = abstract_variables(g, jax.ShapeDtypeStruct((2, nz), jnp.float32))
  assert count_params(variables["params"]) == generator_params(size, d, nz, c)
  for norm in ("none", "batch", "layer", "instance"):
    disc = build_image_discriminator("dcgan", d=d, image_size=size, norm=norm)
    dv = abstract_variables(disc, jax.ShapeDtypeStruct((2, size, size, c), jnp.float32))
    assert count_params(dv["params"]) == discriminator_params(size, d, c, norm), norm


def test_paper_scale_teacher_count():
  # DCGAN's usual ngf = 64 at 64x64 RGB: 3,576,704 (the PyTorch DCGAN tutorial generator).
  g = build_latent_generator("dcgan", d=64, image_size=64, channels=3, nz=100)
  v = abstract_variables(g, jax.ShapeDtypeStruct((1, 100), jnp.float32))
  assert count_params(v["params"]) == 3_576_704 + 3  # + the output conv's bias


@pytest.mark.parametrize("size,c", [(32, 1), (64, 3)])
def test_forward_shapes_range_and_batch_stats(size, c):
  g = build_latent_generator("dcgan", d=4, image_size=size, channels=c, nz=16)
  disc = build_image_discriminator("dcgan", d=4, image_size=size, norm="layer")

  @jax.jit
  def run(z):
    gv = init_variables(g, jax.random.key(0), z, train=False)
    x, updates = g.apply(gv, z, train=True, mutable=["batch_stats"])
    dv = init_variables(disc, jax.random.key(1), x, train=False)
    return x, updates, disc.apply(dv, x, train=True), g.apply(gv, z, train=False)

  z = jax.random.normal(jax.random.key(2), (3, 16))
  x, updates, logits, x_eval = run(z)
  assert x.shape == (3, size, size, c) and x_eval.shape == x.shape
  assert float(jnp.max(jnp.abs(x))) <= 1.0 and bool(jnp.all(jnp.isfinite(x)))
  assert logits.shape == (3,)
  assert set(updates) == {"batch_stats"}
  # Different latents give different images (the generator is not constant).
  assert float(jnp.std(x, axis=0).mean()) > 1e-4


def test_bad_sizes_and_widths_are_one_line_errors():
  for size in (28, 8, 48, (32, 64)):
    with pytest.raises(ValueError, match="power of two|square"):
      check_latent_image_size("dcgan", size)
  check_latent_image_size("dcgan", 32)
  check_latent_image_size("dcgan", (64, 64))
  for d in (0, -3):
    with pytest.raises(ValueError, match="d must be a positive integer"):
      build_latent_generator("dcgan", d=d)
  with pytest.raises(ValueError, match="power of two"):
    build_latent_generator("dcgan", d=2, image_size=28)
  with pytest.raises(ValueError, match="norm 'spectral' is unknown"):
    build_image_discriminator("dcgan", d=2, norm="spectral")
  with pytest.raises(ValueError, match="no field 'ngf'"):
    build_latent_generator("dcgan", ngf=2)
  with pytest.raises(ValueError, match="unknown latent generator 'stylegan'"):
    build_latent_generator("stylegan", d=2)
