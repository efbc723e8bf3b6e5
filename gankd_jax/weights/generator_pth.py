"""Import PyTorch image-to-image generator checkpoints (pix2pix / CycleGAN / gan-compression /
OMGD) into our `unet`, `unet_deepest`, `resnet_9blocks`, `mobile_resnet` and
`mobile_resnet_deepest` modules.

Users hold `latest_net_G.pth` files written by junyanz/pytorch-CycleGAN-and-pix2pix, and
gan-compression's or OMGD's checkpoints; this reads them without torch (weights/torch_pth.py,
both the zip and the legacy format) and maps each tensor onto our Flax variables.

Key layouts (a `module.` prefix from `DataParallel` is stripped first):
- `ResnetGenerator`: `model.1` stem conv, `model.4` / `model.7` down convs (norms at +1),
  blocks `model.10`.. `model.(9+n)` with `conv_block.1` and `conv_block.5` (junyanz without
  dropout) or `conv_block.6` (junyanz `--use_dropout`, and gan-compression / OMGD, which always
  insert a Dropout), transposed convs `model.(10+n)` and `model.(13+n)`, head `model.(17+n)`;
- `MobileResnetGenerator`: the same with separable convs `conv_block.1.conv.{0,2}` (depthwise,
  pointwise; the InstanceNorm between them has no tensors) and `conv_block.6.conv.{0,2}`;
- OMGD `MobileResnetDeepestGenerator`: an `ExpansionResnetBlock` (`conv_block.{1,4,7,12}`) and a
  3x3 conv after each resampling, `n // 2` mobile blocks, two expansion blocks, the rest;
- `UnetGenerator`: nested `model.model.1.model.3...`; the outermost level is `model.model.0`
  (down) / `model.model.3` (up), inner levels `.model.1` / `.model.2` (down conv, norm) and
  `.model.5` / `.model.6` (up), the innermost `.model.1` / `.model.3` / `.model.4`. Dropout
  layers come last in a level and hold no tensors, so they do not shift any key;
- OMGD `UnetDeepestGenerator` (`unet_deepest_256`): the same nesting through `.model.3` (from the
  outermost level) and `.model.5` (inner levels), with two `ResnetBlock`s (expansion blocks,
  `conv_block.{1,4,7,12}`) after each non-innermost down conv and in each non-innermost up path:
  outermost `model.model.0` (down), `.1`, `.2` (blocks), `.4`, `.5` (blocks), `.7` (up); inner
  levels `.1` / `.2` (down conv, norm), `.3`, `.4`, `.7` / `.8` (up), `.9`, `.10`; the innermost
  `.1` / `.3` / `.4`.

Norms: BatchNorm layers carry `weight`, `bias`, `running_mean`, `running_var` (used in eval, as
the reference's `--eval`); InstanceNorm(affine=False) carries nothing, except in files written by
torch <= 0.4-era code, whose InstanceNorm kept `running_mean` / `running_var`: the reference's
test path deletes them (junyanz `__patch_instance_norm_state_dict`), so they are ignored with a
note. `num_batches_tracked` counters are ignored.

The architecture (family, ngf, blocks, U-Net depth, norm, dropout layout, channels) is read from
the keys and shapes; `arch="NAME[,key=value...]"` forces any of it. A file that fits no layout
is refused by a one-line ValueError naming the first key or shape that does not fit.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from gankd_jax import models
from gankd_jax.weights.torch_pth import load_state_dict

FAMILIES = ("unet", "unet_deepest", "resnet_9blocks", "mobile_resnet", "mobile_resnet_deepest")
UNETS = ("unet", "unet_deepest")
# Reference `netG` names accepted by `arch`, and what they fix.
ARCH_ALIASES = {
    "unet_128": ("unet", {"num_downs": 7}),
    "unet_256": ("unet", {"num_downs": 8}),
    "unet_deepest_256": ("unet_deepest", {"num_downs": 8}),
    "resnet_6blocks": ("resnet_9blocks", {"n_blocks": 6}),
    "resnet_9blocks": ("resnet_9blocks", {}),
    "mobile_resnet_9blocks": ("mobile_resnet", {"n_blocks": 9}),
    "mobile_deepest_resnet": ("mobile_resnet_deepest", {}),
}
_INT_FIELDS = ("ngf", "n_blocks", "num_downs", "input_nc", "output_nc")
_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                  "var": "running_var"}
_RESNET_STEM = "model.1.weight"
_TORCH_ORDER = ("kernel", "scale", "bias", "mean", "var")  # a torch module's tensors, in order


@dataclasses.dataclass(frozen=True)
class GeneratorSpec:
  """A PyTorch generator's architecture, as detected from its state dict (or forced)."""

  family: str
  ngf: int
  norm: str
  input_nc: int = 3
  output_nc: int = 3
  n_blocks: int = 9
  num_downs: int = 8
  dropout_layout: bool = True  # ResNet blocks with the Dropout slot (`conv_block.6` conv)

  def describe(self) -> str:
    depth = (f"num_downs={self.num_downs}" if self.family in UNETS
             else f"n_blocks={self.n_blocks}")
    return (f"{self.family} ngf={self.ngf} {depth} norm={self.norm} "
            f"channels={self.input_nc}->{self.output_nc}")

  def generator_kwargs(self) -> dict:
    """Fields of our module (`models.build_generator(self.family, **kwargs)`)."""
    kwargs: dict[str, Any] = {"ngf": self.ngf, "norm": self.norm, "output_nc": self.output_nc}
    if self.family in UNETS:
      kwargs["num_downs"] = self.num_downs
    else:
      kwargs["n_blocks"] = self.n_blocks
    if self.family == "resnet_9blocks":
      # junyanz's ResnetGenerator does not clamp its input, gan-compression's / OMGD's do; the
      # layouts tell them apart only without dropout. Images in [-1, 1] are unaffected.
      kwargs["clamp_input"] = self.dropout_layout
    return kwargs

  def build(self, dropout_rate: float = 0.0):
    """Our Flax module for this architecture."""
    return models.build_generator(self.family, dropout_rate=dropout_rate, **self.generator_kwargs())


@dataclasses.dataclass
class ImportedGenerator:
  """A converted checkpoint: module, Flax variables (params, batch_stats), spec and notes."""

  module: Any
  variables: dict
  spec: GeneratorSpec
  notes: list[str]
  _forward: Any = dataclasses.field(default=None, repr=False, compare=False)

  def apply(self, images):
    """Eval-mode output for NHWC images in [-1, 1] (compiled once per input shape)."""
    if self._forward is None:
      self._forward = jax.jit(lambda variables, x: self.module.apply(variables, x, train=False))
    return self._forward(self.variables, images)


def strip_module_prefix(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drop the `module.` prefix `torch.nn.DataParallel` adds to every key."""
  if state and all(key.startswith("module.") for key in state):
    return {key[len("module."):]: value for key, value in state.items()}
  return state


def unet_prefix(level: int, deep: bool = False) -> str:
  """Torch path of the `UnetSkipConnectionBlock` of level `level` (0 = outermost), whose layers
  are `<path>.model.<i>` (`deep`: OMGD's UnetDeepestGenerator)."""
  if level == 0:
    return "model"
  return "model.model.3" + ".model.5" * (level - 1) if deep else (
      "model.model.1" + ".model.3" * (level - 1))


def _shape(state, key) -> tuple:
  return tuple(np.shape(state[key])) if key in state else ()


def _fail(source: str, message: str) -> ValueError:
  return ValueError(f"{source} is not a known generator checkpoint: {message}")


def _first_key(state) -> str:
  key = next(iter(state), None)
  return f"{key} {_shape(state, key)}" if key is not None else "no tensors"


def _detect_family(state, source: str) -> str:
  if "model.model.0.weight" in state:
    return "unet_deepest" if "model.model.1.conv_block.1.weight" in state else "unet"
  if _RESNET_STEM in state:
    if len(_shape(state, _RESNET_STEM)) != 4 or _shape(state, _RESNET_STEM)[2:] != (7, 7):
      raise _fail(source, f"tensor {_RESNET_STEM} has shape {_shape(state, _RESNET_STEM)}, "
                  "a ResNet generator's stem is a 7x7 conv")
    if "model.7.conv_block.1.weight" in state:
      return "mobile_resnet_deepest"
    if "model.10.conv_block.1.conv.0.weight" in state:
      return "mobile_resnet"
    return "resnet_9blocks"
  raise _fail(source, f"its first key {_first_key(state)} is neither a U-Net "
              "(model.model.0.weight) nor a ResNet generator (model.1.weight) key")


def _count(predicate, start: int) -> int:
  count = start
  while predicate(count):
    count += 1
  return count - start


def detect_spec(state: dict[str, np.ndarray], source: str = "checkpoint",
                forced: dict | None = None) -> GeneratorSpec:
  """The architecture of a (prefix-stripped) generator state dict; `forced` fields win."""
  forced = dict(forced or {})
  family = forced.pop("family", None) or _detect_family(state, source)
  fields: dict[str, Any] = {}
  if family in UNETS:
    deep = family == "unet_deepest"
    first = _shape(state, "model.model.0.weight")
    if len(first) == 4:
      fields.update(ngf=first[0], input_nc=first[1])
    fields["num_downs"] = 1 + _count(
        lambda lv: f"{unet_prefix(lv, deep)}.model.1.weight" in state, 1)
    up = _shape(state, f"model.model.{7 if deep else 3}.weight")
    if len(up) == 4:
      fields["output_nc"] = up[1]
    fields["norm"] = ("batch" if f"{unet_prefix(1, deep)}.model.2.weight" in state
                      else "instance")
  else:
    stem = _shape(state, _RESNET_STEM)
    if len(stem) == 4:
      fields.update(ngf=stem[0], input_nc=stem[1])
    fields["norm"] = "batch" if "model.2.weight" in state else "instance"
    if family == "mobile_resnet_deepest":
      mobile = _count(lambda i: f"model.{i}.conv_block.1.conv.0.weight" in state, 18)
      rest = _count(lambda i: f"model.{i}.conv_block.1.conv.0.weight" in state, 18 + mobile + 2)
      fields["n_blocks"] = mobile + rest
    else:
      fields["n_blocks"] = _count(lambda i: f"model.{i}.conv_block.1.weight" in state
                                  or f"model.{i}.conv_block.1.conv.0.weight" in state, 10)
      plain_no_dropout = len(_shape(state, "model.10.conv_block.5.weight")) == 4
      fields["dropout_layout"] = family != "resnet_9blocks" or not plain_no_dropout
  fields.update(forced)
  head = None
  if family not in UNETS:
    n = fields.get("n_blocks", 9)
    head = f"model.{35 + n if family == 'mobile_resnet_deepest' else 17 + n}.weight"
    if len(_shape(state, head)) == 4 and "output_nc" not in forced:
      fields["output_nc"] = _shape(state, head)[0]
  if "ngf" not in fields:
    raise _fail(source, f"its first key {_first_key(state)} gives no generator width")
  return GeneratorSpec(family=family, **fields)


def parse_arch(text: str) -> dict:
  """`NAME[,key=value...]` (NAME a family or a reference netG name such as `unet_256`) ->
  forced spec fields; one-line ValueError otherwise."""
  name, *options = [part.strip() for part in text.split(",") if part.strip()] or [""]
  if name in ARCH_ALIASES:
    family, fixed = ARCH_ALIASES[name]
  elif name in FAMILIES:
    family, fixed = name, {}
  else:
    raise ValueError(f"--arch: unknown generator '{name}'; choose from "
                     f"{', '.join(FAMILIES + tuple(ARCH_ALIASES))}")
  forced: dict[str, Any] = {"family": family, **fixed}
  for option in options:
    key, _, value = option.partition("=")
    if key in _INT_FIELDS and re.fullmatch(r"[1-9][0-9]*", value):
      forced[key] = int(value)
    elif key == "norm" and value in ("batch", "instance"):
      forced[key] = value
    elif key == "dropout_layout" and value in ("true", "false"):
      forced[key] = value == "true"
    else:
      raise ValueError(f"--arch: bad option '{option}' (use ngf=, n_blocks=, num_downs=, "
                       "input_nc=, output_nc= with positive integers, norm=batch|instance, "
                       "dropout_layout=true|false)")
  return forced


# ------------------------------------------------------------------ Flax module -> torch prefix
def _conv_norm(flax: str, torch: str, norm: str = "Norm_0", conv: str = "Conv_0") -> dict:
  first, _, rest = torch.rpartition(".")
  return {f"{flax}/{conv}/conv": torch, f"{flax}/{norm}/bn": f"{first}.{int(rest) + 1}"}


def _plain_block(flax: str, torch: str, second_conv: int) -> dict:
  return {f"{flax}/Conv_0/conv": f"{torch}.conv_block.1", f"{flax}/Norm_0/bn": f"{torch}.conv_block.2",
          f"{flax}/Conv_1/conv": f"{torch}.conv_block.{second_conv}",
          f"{flax}/Norm_1/bn": f"{torch}.conv_block.{second_conv + 1}"}


def _mobile_block(flax: str, torch: str) -> dict:
  out = {}
  for index, slot in ((0, 1), (1, 6)):
    out[f"{flax}/SeparableConv_{index}/depthwise/conv"] = f"{torch}.conv_block.{slot}.conv.0"
    out[f"{flax}/SeparableConv_{index}/pointwise/conv"] = f"{torch}.conv_block.{slot}.conv.2"
    out[f"{flax}/Norm_{index}/bn"] = f"{torch}.conv_block.{slot + 1}"
  return out


def _expansion_block(flax: str, torch: str) -> dict:
  out = {}
  for index, slot in enumerate((1, 4, 7, 12)):
    out[f"{flax}/Conv_{index}/conv"] = f"{torch}.conv_block.{slot}"
    out[f"{flax}/Norm_{index}/bn"] = f"{torch}.conv_block.{slot + 1}"
  return out


def _deep_unet_map(spec: GeneratorSpec) -> dict[str, str]:
  """`module_map` of OMGD's UnetDeepestGenerator (layout in the module docstring)."""
  out: dict[str, str] = {}
  last = spec.num_downs - 1
  for level in range(spec.num_downs):
    p = unet_prefix(level, deep=True)
    out[f"down{level}/Conv_0/conv"] = f"{p}.model.{0 if level == 0 else 1}"
    if level not in (0, last):
      out[f"down{level}/Norm_0/bn"] = f"{p}.model.2"
    if level != last:
      for j in range(2):
        out.update(_expansion_block(f"down{level}/ExpansionBlock_{j}",
                                    f"{p}.model.{(1 if level == 0 else 3) + j}"))
  for level in reversed(range(spec.num_downs)):
    p = unet_prefix(level, deep=True)
    if level == 0:
      for j in range(2):
        out.update(_expansion_block(f"up0/ExpansionBlock_{j}", f"{p}.model.{4 + j}"))
      out["up0/ConvTranspose_0"] = f"{p}.model.7"
    elif level == last:
      out[f"up{level}/ConvTranspose_0"] = f"{p}.model.3"
      out[f"up{level}/Norm_0/bn"] = f"{p}.model.4"
    else:
      out[f"up{level}/ConvTranspose_0"] = f"{p}.model.7"
      out[f"up{level}/Norm_0/bn"] = f"{p}.model.8"
      for j in range(2):
        out.update(_expansion_block(f"up{level}/ExpansionBlock_{j}", f"{p}.model.{9 + j}"))
  return out


def module_map(spec: GeneratorSpec) -> dict[str, str]:
  """Flax module path ('a/b/conv') -> torch module prefix, in the network's order."""
  out: dict[str, str] = {}
  if spec.family == "unet_deepest":
    return _deep_unet_map(spec)
  if spec.family == "unet":
    last = spec.num_downs - 1
    for level in range(spec.num_downs):
      p = unet_prefix(level)
      if level == 0:
        out["down0/Conv_0/conv"] = f"{p}.model.0"
      else:
        out[f"down{level}/Conv_0/conv"] = f"{p}.model.1"
        if level != last:
          out[f"down{level}/Norm_0/bn"] = f"{p}.model.2"
    for level in reversed(range(spec.num_downs)):
      p = unet_prefix(level)
      up = 3 if level in (0, last) else 5
      out[f"up{level}/ConvTranspose_0"] = f"{p}.model.{up}"
      if level:
        out[f"up{level}/Norm_0/bn"] = f"{p}.model.{up + 1}"
    return out
  n = spec.n_blocks
  out.update(_conv_norm("Stem_0/ConvNormReLU_0", "model.1"))
  if spec.family == "mobile_resnet_deepest":
    for i in range(2):
      base = 4 + 7 * i
      out.update(_conv_norm(f"down{i}", f"model.{base}"))
      out.update(_expansion_block(f"down{i}_expand", f"model.{base + 3}"))
      out.update(_conv_norm(f"down{i}_refine", f"model.{base + 4}"))
    first = n // 2
    for b in range(1, n + 1):
      if b == first + 1:
        for j in range(2):
          out.update(_expansion_block(f"middle_expand{j}", f"model.{18 + first + j}"))
      out.update(_mobile_block(f"block{b}", f"model.{17 + b if b <= first else 19 + b}"))
    for i in range(2):
      base = 20 + n + 7 * i
      out[f"up{i}/ConvTranspose_0"] = f"model.{base}"
      out[f"up{i}/Norm_0/bn"] = f"model.{base + 1}"
      out.update(_expansion_block(f"up{i}_expand", f"model.{base + 3}"))
      out.update(_conv_norm(f"up{i}_refine", f"model.{base + 4}"))
    out["Head_0/Conv_0/conv"] = f"model.{35 + n}"
    return out
  for i in range(2):
    out.update(_conv_norm(f"down{i}", f"model.{4 + 3 * i}"))
  for b in range(1, n + 1):
    if spec.family == "mobile_resnet":
      out.update(_mobile_block(f"block{b}", f"model.{9 + b}"))
    else:
      out.update(_plain_block(f"block{b}", f"model.{9 + b}", 6 if spec.dropout_layout else 5))
  for i in range(2):
    out[f"up{i}/ConvTranspose_0"] = f"model.{10 + n + 3 * i}"
    out[f"up{i}/Norm_0/bn"] = f"model.{11 + n + 3 * i}"
  out["Head_0/Conv_0/conv"] = f"model.{17 + n}"
  return out


def _leaves(tree, path=()) -> Iterator[tuple[tuple[str, ...], Any]]:
  if hasattr(tree, "items"):
    for key, value in tree.items():
      yield from _leaves(value, path + (str(key),))
  else:
    yield path, tree


def _to_torch_shape(shape: tuple, leaf: str, transposed: bool) -> tuple:
  if leaf != "kernel":
    return tuple(shape)
  kh, kw, c_in, c_out = shape
  return (c_in, c_out, kh, kw) if transposed else (c_out, c_in, kh, kw)


def _to_flax(value: np.ndarray, leaf: str, transposed: bool) -> np.ndarray:
  if leaf != "kernel":
    return value
  return value.transpose(2, 3, 0, 1) if transposed else value.transpose(2, 3, 1, 0)


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def expected_tensors(spec: GeneratorSpec, module=None):
  """[(torch key, torch shape, collection, flax path, transposed)] in the network's order."""
  module = module if module is not None else spec.build()
  size = 2 ** spec.num_downs if spec.family in UNETS else 4
  abstract = jax.eval_shape(lambda: module.init(
      jax.random.PRNGKey(0), jnp.zeros((1, size, size, spec.input_nc)), train=False))
  by_module: dict[str, list] = {}
  for collection in ("params", "batch_stats"):
    for path, leaf in _leaves(abstract.get(collection, {})):
      by_module.setdefault("/".join(path[:-1]), []).append((collection, path, leaf))
  mapping = module_map(spec)
  unmapped = sorted(set(by_module) - set(mapping))
  if unmapped:  # A bug in module_map, not in the user's file.
    raise AssertionError(f"no torch name for Flax module {unmapped[0]} of {spec.describe()}")
  out = []
  for flax_module, prefix in mapping.items():
    transposed = flax_module.endswith("ConvTranspose_0")
    leaves = sorted(by_module.get(flax_module, []), key=lambda e: _TORCH_ORDER.index(e[1][-1]))
    for collection, path, leaf in leaves:
      out.append((f"{prefix}.{_LEAF_TO_TORCH[path[-1]]}",
                  _to_torch_shape(tuple(leaf.shape), path[-1], transposed), collection, path,
                  transposed))
  return out


def _instance_norm_slots(spec: GeneratorSpec) -> set[str]:
  """Torch prefixes of the norm layers (InstanceNorm when `spec.norm == 'instance'`)."""
  return {prefix for flax, prefix in module_map(spec).items() if flax.endswith("/bn")}


def _ignored(key: str, spec: GeneratorSpec, norm_slots: set[str]) -> str | None:
  """Why an unused file tensor is harmless ('' for silent), or None when it does not fit."""
  prefix, _, leaf = key.rpartition(".")
  if leaf == "num_batches_tracked":
    return ""
  # Separable convs hold an InstanceNorm (`conv.1`) whatever the generator's norm.
  separable = re.search(r"conv_block\.[0-9]+\.conv\.1$", prefix) is not None
  if (leaf in ("running_mean", "running_var")
      and (separable or (spec.norm == "instance" and prefix in norm_slots))):
    return "instance"
  return None


def variables_from_state_dict(state: dict[str, np.ndarray], spec: GeneratorSpec,
                              source: str = "checkpoint", module=None) -> tuple[dict, list[str]]:
  """Flax variables of `spec.build()` from a prefix-stripped torch state dict, and notes."""
  variables: dict = {}
  used = set()
  for key, shape, collection, path, transposed in expected_tensors(spec, module):
    if key not in state:
      raise _fail(source, f"{spec.describe()} needs tensor {key} {shape}, which it lacks")
    value = np.asarray(state[key])
    if tuple(value.shape) != shape:
      raise _fail(source, f"tensor {key} has shape {tuple(value.shape)}, {spec.describe()} "
                  f"expects {shape}")
    if not np.issubdtype(value.dtype, np.floating):
      raise _fail(source, f"tensor {key} has dtype {value.dtype}, expected floating point")
    used.add(key)
    _set(variables.setdefault(collection, {}), path,
         np.ascontiguousarray(_to_flax(value.astype(np.float32), path[-1], transposed)))
  notes, slots, stale = [], _instance_norm_slots(spec), 0
  for key in state:
    if key in used:
      continue
    why = _ignored(key, spec, slots)
    if why is None:
      raise _fail(source, f"tensor {key} {_shape(state, key)} has no place in {spec.describe()}")
    stale += why == "instance"
  if stale:
    notes.append(f"{source}: ignored {stale} InstanceNorm running-statistics tensors (written by "
                 "old torch; InstanceNorm normalises by each image's own statistics, as the "
                 "reference's test path does after deleting them)")
  return variables, notes


def load_generator(path: str | os.PathLike, arch: str | None = None) -> ImportedGenerator:
  """Read a PyTorch generator checkpoint into one of our modules (architecture detected, or
  forced by `arch`, see `parse_arch`)."""
  source = os.fspath(path)
  forced = parse_arch(arch) if arch else None
  state = strip_module_prefix(load_state_dict(source))
  spec = detect_spec(state, source, forced)
  module = spec.build()
  variables, notes = variables_from_state_dict(state, spec, source, module)
  return ImportedGenerator(module, variables, spec, notes)
