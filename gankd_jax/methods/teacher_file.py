"""A teacher from the user: a PyTorch generator file, a variables file, or a Flax module of theirs.

Users arrive with a trained generator (junyanz's `latest_net_G.pth`, gan-compression's or OMGD's
checkpoints, or their own Flax model) and want a smaller one. A teacher's config (OMGD's
`teacher_wide` and `teacher_deep`, OMGD-CycleGAN's `teacher`, whose `init_from` is G_A and
`init_from_b` G_B) says where it comes from (`module` and `frozen`: `teacher_wide` only):

  init_from  a PyTorch generator checkpoint (.pth, imported by weights/generator_pth.py into our
             module of the config's `name`, `ngf`, `norm`, `num_downs` / `n_blocks`: they must
             match the file, else a one-line error gives the flags that make them match), or a
             variables .npz (`runs.save_variables`' format: '/'-joined paths of `params` and
             `batch_stats`) for any module, ours or the user's;
  module     "pkg.module:Attr": the user's Flax generator instead of a registered `name`. Attr is
             a `flax.linen.Module` subclass (constructed with no arguments), an instance, or a
             function of no arguments returning one. It must follow the teacher protocol:

               module.apply(variables, x, train=False) -> y
               module.apply(variables, x, train=False, return_features=True) -> (y, [f_1..f_k])
               module.feature_channels() -> [c_1..c_k]   (only when loss.lambda_cd > 0)

             x and y: float32 NHWC images in [-1, 1], 3 channels, the same height and width
             (the data's `crop_size`); variables: {"params": ..., "batch_stats": ...}
             (`batch_stats` may be empty; with train=True it is a mutable collection). The
             features f_i (NHWC, any resolution, c_i channels) are the channel-distillation taps:
             the student's connectors map its own k taps to these channels, and the loss compares
             their spatial means, so k must equal the student's tap count (4 for our families).
             With train=True the module may use a "dropout" rng (only when it trains online).
  frozen     the teacher stays fixed (offline distillation; the method decides what else is off).

Everything here is checked before compute, each error one line naming the field and the file.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from gankd_jax import runs
from gankd_jax.weights import generator_pth
from gankd_jax.weights.torch_pth import load_state_dict

PyTree = Any
PTH_SUFFIXES = (".pth", ".pt", ".ckpt")


def import_module(spec: str, field: str) -> nn.Module:
  """The Flax module "pkg.module:Attr" names (see the module docstring)."""
  module_name, _, attr = spec.partition(":")
  if not module_name or not attr:
    raise ValueError(f"{field}='{spec}': expected 'package.module:Attribute'")
  try:
    found = getattr(importlib.import_module(module_name), attr)
  except ImportError as error:
    raise ValueError(f"{field}='{spec}': cannot import {module_name} ({error})") from None
  except AttributeError:
    raise ValueError(f"{field}='{spec}': {module_name} has no attribute {attr}") from None
  if isinstance(found, type) and issubclass(found, nn.Module):
    found = found()
  elif not isinstance(found, nn.Module) and callable(found):
    found = found()
  if not isinstance(found, nn.Module):
    raise ValueError(f"{field}='{spec}': {attr} is not a flax.linen Module (nor a function "
                     f"returning one), got {type(found).__name__}")
  return found


def feature_channels(module: nn.Module, field: str) -> list[int]:
  """A teacher's channel-distillation tap channels (the protocol's `feature_channels()`)."""
  if not callable(getattr(module, "feature_channels", None)):
    raise ValueError(f"{field}: {type(module).__name__} has no feature_channels() for channel "
                     "distillation; define it or set --config.loss.lambda_cd=0")
  return [int(c) for c in module.feature_channels()]


def is_pth(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in PTH_SUFFIXES


def _flags(role: str, fields: dict) -> str:
  return " ".join(f"--config.{role}.{key}={value}" for key, value in fields.items())


def check_pth_architecture(path: str, fields: dict, role: str, crop_size: int,
                           explicit: tuple[str, ...] = (), *, field: str | None = None,
                           fixed: dict[str, tuple[Any, str]] | None = None) -> None:
  """The config's resolved generator `fields` (name, ngf, norm, num_downs / n_blocks) against the
  architecture of the PyTorch file at `path`; a one-line ValueError with the flags that fix it.
  `explicit`: the depth fields the config sets (not left to their defaults); `field`: the config
  field naming the file (default `<role>.init_from`); `fixed`: {key: (value, why)}, fields the
  method cannot change (a file that needs another value is refused without suggesting it)."""
  field = field or f"{role}.init_from"
  if not os.path.isfile(path):
    raise ValueError(f"{field}: no such file: {path}")
  state = generator_pth.strip_module_prefix(load_state_dict(path))
  spec = generator_pth.detect_spec(state, path)
  if (spec.input_nc, spec.output_nc) != (3, 3):
    raise ValueError(f"{field}: {path} is a {spec.input_nc}->{spec.output_nc} channel generator; "
                     "the data are RGB (3->3)")
  wanted = {"name": spec.family, "ngf": spec.ngf, "norm": spec.norm}
  if spec.family in generator_pth.UNETS:
    wanted["num_downs"] = spec.num_downs
  else:
    wanted["n_blocks"] = spec.n_blocks
  for key, (value, why) in (fixed or {}).items():
    if wanted.get(key) != value:
      raise ValueError(f"{field}: {path} holds a {spec.describe()} generator; {role}.{key} must "
                       f"be {value} here ({why})")
  have = {"n_blocks": 9, **fields}
  fix = {key: value for key, value in wanted.items() if have.get(key) != value}
  if not fix:
    return
  extra = ""
  if spec.family in generator_pth.UNETS and crop_size % 2 ** spec.num_downs:
    extra = f" --config.data.crop_size={2 ** spec.num_downs}"
  unset = [key for key in explicit if key not in wanted]
  if unset:
    extra += f" and leave {', '.join(f'{role}.{key}' for key in unset)} unset"
  differences = ", ".join(f"{key} {have.get(key)} here, {value} in the file"
                          for key, value in fix.items())
  raise ValueError(f"{field}: {path} holds a {spec.describe()} generator, which {role} does not "
                   f"match ({differences}); set {_flags(role, fix)}{extra}")


def check_init_file(path: str, fields: dict, role: str, crop_size: int,
                    explicit: tuple[str, ...] = (), *, field: str | None = None,
                    fixed: dict[str, tuple[Any, str]] | None = None) -> None:
  """A teacher's start file, before compute: it exists, and a .pth fits the config's generator
  (`check_pth_architecture`; a variables .npz is checked leaf by leaf when loaded)."""
  if is_pth(path):
    check_pth_architecture(path, fields, role, crop_size, explicit, field=field, fixed=fixed)
  elif not os.path.isfile(path):
    raise ValueError(f"{field or f'{role}.init_from'}: no such file: {path}")


def _check_tree(variables: PyTree, expected: PyTree, what: str) -> PyTree:
  """`variables` leaf by leaf against `expected` shapes (first mismatch named), as float32."""
  have = traverse_util.flatten_dict(variables, sep="/")
  for key, shape in traverse_util.flatten_dict(expected, sep="/").items():
    if key not in have:
      raise ValueError(f"{what} has no '{key}' (expected shape {tuple(shape.shape)})")
    if tuple(np.shape(have[key])) != tuple(shape.shape):
      raise ValueError(f"{what}: '{key}' has shape {tuple(np.shape(have[key]))}, expected "
                       f"{tuple(shape.shape)}")
  return traverse_util.unflatten_dict(
      {key: jnp.asarray(have[key], shape.dtype)
       for key, shape in traverse_util.flatten_dict(expected, sep="/").items()}, sep="/")


def expected_variables(module: nn.Module, image_size: int) -> PyTree:
  """The shapes of `module`'s params and batch_stats on one RGB image of `image_size`."""
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)
  return {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}


def load_teacher(path: str, module: nn.Module, image_size: int, role: str,
                 field: str | None = None) -> tuple[PyTree, list[str]]:
  """The variables of `module` from `path` (.pth: through the PyTorch import; otherwise a
  variables .npz), checked against the module's shapes; and the import's notes. `field`: the
  config field naming the file (default `<role>.init_from`)."""
  field = field or f"{role}.init_from"
  expected = expected_variables(module, image_size)
  if not is_pth(path):
    return runs.load_variables(path, expected, field), []
  imported = generator_pth.load_generator(path)
  return _check_tree(imported.variables, expected, f"{field}: {path}"), list(imported.notes)
