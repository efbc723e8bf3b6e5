"""Generator / discriminator registry for the OMGD model families.

``build_generator(name, **fields)`` returns an (unbound) Flax linen module; every generator is
called as ``module.apply(variables, x, train=..., return_features=...)`` on NHWC images in
[-1, 1] and exposes ``feature_channels()`` (channels of the channel-distillation taps), so
1x1 connectors can be built without running it. ``check_image_size`` validates an image size
before any compute. Initialise the discriminator with its default ``branches=(0, 1)`` so both
branches get parameters.

Unconditional families (latent z -> image) are registered apart, in ``LATENT_GENERATORS`` and
``IMAGE_DISCRIMINATORS``: ``build_latent_generator(name, **fields)`` is called as
``module.apply(variables, z, train=...)`` and ``build_image_discriminator(name, **fields)`` as
``module.apply(variables, images, train=...)`` -> one logit per image; ``check_latent_image_size``
validates an image size before any compute.
"""
from __future__ import annotations

from typing import Union

from gankd_jax.models import dcgan
from gankd_jax.models.layers import count_params
from gankd_jax.models.patchgan import (MultiPatchDiscriminator, NLayerDiscriminator,
                                      patch_output_size)
from gankd_jax.models.resnet import (MobileResnetDeepestGenerator, MobileResnetGenerator,
                                     ResnetGenerator)
from gankd_jax.models.unet import UnetDeepestGenerator, UnetGenerator

GENERATORS = {
    "unet": UnetGenerator,
    "unet_deepest": UnetDeepestGenerator,
    "resnet_9blocks": ResnetGenerator,
    "mobile_resnet": MobileResnetGenerator,
    "mobile_resnet_deepest": MobileResnetDeepestGenerator,
}

# Unconditional (z -> image) families, and the discriminators that judge their images.
LATENT_GENERATORS = {
    "dcgan": dcgan.DCGANGenerator,
}
IMAGE_DISCRIMINATORS = {
    "dcgan": dcgan.DCGANDiscriminator,
}
_LATENT_SIZE_CHECKS = {
    "dcgan": dcgan.check_image_size,
}

ImageSize = Union[int, tuple]


def generator_class(name: str):
  """Look up a generator class by registry name."""
  if name not in GENERATORS:
    raise ValueError(f"unknown generator '{name}'; choose from {', '.join(GENERATORS)}")
  return GENERATORS[name]


def check_width(field: str, value) -> None:
  """Reject non-positive widths with a one-line message."""
  if not isinstance(value, int) or value <= 0:
    raise ValueError(f"{field} must be a positive integer, got {value!r}")


def _instantiate(cls, what: str, width_field: str, kwargs: dict):
  """`cls(**kwargs)` after checking the width and that every field exists (one-line errors)."""
  if width_field in kwargs:
    check_width(width_field, kwargs[width_field])
  fields = set(cls.__dataclass_fields__) - {"parent", "name"}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(f"{what} has no field {unknown[0]!r}; fields: {', '.join(sorted(fields))}")
  return cls(**kwargs)


def build_generator(name: str, **kwargs):
  """Instantiate generator ``name`` with dataclass fields (ngf, norm, dropout_rate, ...)."""
  return _instantiate(generator_class(name), f"generator '{name}'", "ngf", kwargs)


def build_discriminator(**kwargs) -> MultiPatchDiscriminator:
  """Instantiate OMGD's partially shared PatchGAN (ndf, n_share, norm)."""
  return _instantiate(MultiPatchDiscriminator, "discriminator", "ndf", kwargs)


def _lookup(registry: dict, kind: str, name: str):
  if name not in registry:
    raise ValueError(f"unknown {kind} '{name}'; choose from {', '.join(registry)}")
  return registry[name]


def build_latent_generator(name: str, **kwargs):
  """Instantiate unconditional generator ``name`` (e.g. 'dcgan': d, image_size, channels, nz)."""
  cls = _lookup(LATENT_GENERATORS, "latent generator", name)
  return _instantiate(cls, f"generator '{name}'", getattr(cls, "width_field", "ngf"), kwargs)


def build_image_discriminator(name: str, **kwargs):
  """Instantiate unconditional discriminator ``name`` (e.g. 'dcgan': d, image_size, norm)."""
  cls = _lookup(IMAGE_DISCRIMINATORS, "image discriminator", name)
  return _instantiate(cls, f"discriminator '{name}'", getattr(cls, "width_field", "ndf"), kwargs)


def check_latent_image_size(name: str, size: ImageSize) -> None:
  """Raise a one-line ValueError when the unconditional family ``name`` cannot take ``size``."""
  _lookup(_LATENT_SIZE_CHECKS, "latent generator", name)(size, what=f"the '{name}' family")


def as_height_width(size: ImageSize) -> tuple[int, int]:
  """An int means a square image; otherwise (height, width)."""
  if isinstance(size, int):
    return size, size
  height, width = size
  return int(height), int(width)


def required_multiple(name: str, **kwargs) -> int:
  """Factor both image sides must be divisible by for generator ``name``."""
  cls = generator_class(name)
  if issubclass(cls, UnetGenerator):
    return 2 ** kwargs.get("num_downs", cls.num_downs)
  return 4


def check_image_size(name: str, size: ImageSize, **kwargs) -> None:
  """Raise a one-line ValueError when generator ``name`` cannot take ``size`` images."""
  height, width = as_height_width(size)
  multiple = required_multiple(name, **kwargs)
  for side, value in (("height", height), ("width", width)):
    if value <= 0 or value % multiple:
      raise ValueError(f"generator '{name}' needs image {side} divisible by {multiple}, "
                       f"got {value}")


def check_discriminator_size(size: ImageSize) -> None:
  """Raise a one-line ValueError when the PatchGAN would output an empty logits map."""
  smallest = min(as_height_width(size))
  if patch_output_size(smallest) < 1:
    raise ValueError(f"image side {smallest} px is too small for the PatchGAN "
                     f"discriminator (needs at least 24 px)")


__all__ = [
    "IMAGE_DISCRIMINATORS", "LATENT_GENERATORS", "build_image_discriminator",
    "build_latent_generator", "check_latent_image_size",
    "GENERATORS", "build_generator", "build_discriminator", "check_image_size",
    "check_discriminator_size",
    "count_params", "MultiPatchDiscriminator", "NLayerDiscriminator", "UnetGenerator",
    "UnetDeepestGenerator",
    "ResnetGenerator", "MobileResnetGenerator", "MobileResnetDeepestGenerator",
]
