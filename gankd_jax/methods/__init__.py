"""Distillation methods by name. Adding one: a module here, an entry below, a config."""

from __future__ import annotations

import ml_collections

from gankd_jax.methods.base import Method

_METHOD_MODULES = {
    "omgd": ("gankd_jax.methods.omgd", "OMGD"),
    "omgd_cycle": ("gankd_jax.methods.omgd_cycle", "OMGDCycle"),
    "aguinaldo": ("gankd_jax.methods.aguinaldo", "Aguinaldo"),
    "stylegan2": ("gankd_jax.methods.stylegan2", "StyleGAN2"),
    "nickel_dime": ("gankd_jax.methods.nickel_dime", "NickelDiMe"),
}


def build_method(config: ml_collections.ConfigDict) -> Method:
  """Builds (and so validates) the method a config names."""
  import importlib
  if config.method not in _METHOD_MODULES:
    raise ValueError(f"unknown method '{config.method}'; choose from {', '.join(_METHOD_MODULES)}")
  module_name, class_name = _METHOD_MODULES[config.method]
  return getattr(importlib.import_module(module_name), class_name)(config)
