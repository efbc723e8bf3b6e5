"""Read StyleGAN2-ADA (NVlabs/stylegan2-ada-pytorch) networks without torch and without running
the code a network pickle carries.

A network snapshot (`network-snapshot-*.pkl`, written by the reference's training_loop.py) is a
plain pickle of `dict(training_set_kwargs, G, D, G_ema, augment_pipe)`. Each network is a
`torch_utils.persistence` object, pickled as `_reconstruct_persistent_obj(meta)` where `meta`
holds the class name, the *source code of the class's whole module* and the module's `__dict__`
(`_init_args`, `_init_kwargs`, and nn.Module internals `_parameters`, `_buffers`, `_modules`).
The reference *executes that source* on load. Here a restricted unpickler (torch_pth's, with a
few more allowed names) turns each record into a `PersistentObject` that keeps the source as text,
never executed; tensors are rebuilt from their storages, each of which a plain pickle carries
as a legacy torch.save blob (`torch.storage._load_from_bytes`, read by torch_pth). Allowed besides
the tensor names: OrderedDict, `dnnlib.util.EasyDict` (a dict), builtins set, NumPy scalars (the
modules' gains are np.float64) and their dtypes, `_codecs.encode` (protocol-2 bytes) for latin-1
only. Any other global is refused with `refusing to load FILE: pickle calls module.name`
before anything is called.

`read_network_pickle` walks the records into flat state dicts ("mapping.fc0.weight" -> array,
in torch's state_dict order) per network with their class names and init kwargs.
`load_network(path, which="G_ema")` builds our Flax module (models/stylegan2.py,
`generator_from_kwargs` / `discriminator_from_kwargs`, whose variable paths are the reference's
state_dict names) and its variables, checking every tensor's shape against
`jax.eval_shape(module.init)`: the first missing, mis-shaped or unexpected tensor is named in a
one-line error. The reference's `resample_filter` buffers are checked to be the [1,3,3,1] filter
and skipped (a constant in our code).

A plain torch.save state dict of one G or D (zip or legacy format) is read too: its constructor
arguments are inferred from the keys and shapes (z/w/c dims, mapping depth, resolution, colour
channels, architecture, and a channel_base/channel_max pair that reproduces every width); what
shapes cannot tell (conv_clamp, mbstd_group_size, activation, lr multipliers) is the reference's
default unless given through `init_kwargs=`, which overrides inferred values key by key.
"""
from __future__ import annotations

import codecs
import dataclasses
import io
import os
import re
import zipfile
from typing import Any, Mapping

import numpy as np

from gankd_jax.weights import torch_pth

NETWORK_KEYS = ("G", "G_ema", "D")
CLASS_NAMES = {"G": "Generator", "G_ema": "Generator", "D": "Discriminator"}
# The reference's default resample_filter buffer: setup_filter([1, 3, 3, 1]), outer product / sum.
_FIR = np.array([1.0, 3.0, 3.0, 1.0], np.float32)
RESAMPLE_FILTER = np.outer(_FIR, _FIR) / np.sum(np.outer(_FIR, _FIR))


@dataclasses.dataclass
class PersistentObject:
  """A `torch_utils.persistence` record, not reconstructed: its module source is kept as text."""

  class_name: str
  module_src: str
  state: dict
  version: Any = None

  @property
  def init_args(self) -> tuple:
    return tuple(self.state.get("_init_args") or ())

  @property
  def init_kwargs(self) -> dict:
    return _plain(self.state.get("_init_kwargs") or {})


@dataclasses.dataclass
class Network:
  """One network of a pickle (or of a state dict): what is needed to rebuild it."""

  class_name: str
  init_kwargs: dict
  state_dict: dict[str, np.ndarray]
  init_args: tuple = ()
  module_src: str = ""


@dataclasses.dataclass
class NetworkPickle:
  path: str
  networks: dict[str, Network]  # "G", "G_ema", "D": those present.
  training_set_kwargs: dict | None
  augment_pipe: Network | None
  raw: dict  # The unpickled dict, records as PersistentObject.


# ------------------------------------------------------------------- stand-ins for allowed globals
class _EasyDict(dict):
  """Stand-in for dnnlib.util.EasyDict: a dict (pickled as NEWOBJ + SETITEMS)."""

  def __setstate__(self, state):
    if state:
      if not isinstance(state, dict):
        raise ValueError(f"EasyDict state is a {type(state).__name__}")
      self.update(state)


class _NumpyDtype:
  """Stand-in for `numpy.dtype(name, align, copy)` + its BUILD state: numeric dtypes only."""

  def __init__(self, name, align=False, copy=False):
    del align, copy
    self.dtype = np.dtype(str(name))
    if self.dtype.kind not in "biufc":
      raise ValueError(f"numpy dtype {name!r} is not numeric")

  def __setstate__(self, state):
    if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">"):
      self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_scalar(dtype, raw=None):
  if not isinstance(dtype, _NumpyDtype) or not isinstance(raw, bytes) or len(raw) != dtype.dtype.itemsize:
    raise ValueError("malformed numpy scalar")
  return np.frombuffer(raw, dtype.dtype, count=1)[0]


def _latin1_bytes(text, encoding="latin1"):
  """Protocol-2 pickles write bytes as `_codecs.encode(str, "latin1")`."""
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise ValueError("_codecs.encode other than str -> latin1 bytes")
  return codecs.encode(text, "latin1")


def _reconstruct_persistent_obj(meta) -> PersistentObject:
  """Our `torch_utils.persistence._reconstruct_persistent_obj`: records meta, executes nothing."""
  if not (isinstance(meta, dict) and meta.get("type") == "class" and isinstance(meta.get("class_name"), str)
          and isinstance(meta.get("module_src"), str) and isinstance(meta.get("state"), dict)):
    raise ValueError("malformed torch_utils.persistence record")
  return PersistentObject(class_name=meta["class_name"], module_src=meta["module_src"],
                          state=meta["state"], version=meta.get("version"))


def _extra_globals(path: str) -> dict[tuple[str, str], Any]:
  def load_from_bytes(data):
    if not isinstance(data, bytes):
      raise ValueError(f"{path}: torch storage blob is a {type(data).__name__}, not bytes")
    return torch_pth.load_storage_blob(data, f"{path} (a storage blob)")

  allowed: dict[tuple[str, str], Any] = {
      ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
      ("torch.storage", "_load_from_bytes"): load_from_bytes,
      ("dnnlib.util", "EasyDict"): _EasyDict,
      ("dnnlib", "EasyDict"): _EasyDict,
      ("builtins", "set"): set,
      ("numpy", "dtype"): _NumpyDtype,
      ("_codecs", "encode"): _latin1_bytes,
  }
  for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # NumPy 1 / NumPy 2 pickles
    allowed[(module, "scalar")] = _numpy_scalar
  return allowed


class _NetworkUnpickler(torch_pth.RestrictedUnpickler):
  def find_class(self, module: str, name: str):
    if module.startswith("dnnlib.tflib"):
      raise ValueError(f"refusing to load {self._path}: pickle calls {module}.{name} (a TensorFlow "
                       "StyleGAN2 pickle: convert it with the reference's legacy.py first)")
    return super().find_class(module, name)


def _plain(value):
  """EasyDicts (and nested ones) as plain dicts, tuples/lists kept."""
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_plain(v) for v in value]
  if isinstance(value, tuple):
    return tuple(_plain(v) for v in value)
  return value


def unpickle(path: str | os.PathLike) -> Any:
  """The restricted unpickling of a network pickle (records as PersistentObject)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"network pickle {path} does not exist")
  with open(path, "rb") as f:
    data = f.read()
  unpickler = _NetworkUnpickler(io.BytesIO(data), path, extra_globals=_extra_globals(path))
  try:
    return unpickler.load()
  except ValueError as error:  # Our stand-ins' complaints name no file: add it.
    message = str(error)
    raise ValueError(message if path in message else f"{path}: {message}") from None
  except Exception as error:  # pylint: disable=broad-except
    raise ValueError(f"{path}: cannot unpickle (truncated or corrupt: {type(error).__name__}: "
                     f"{str(error)[:80]})") from None


def flat_state_dict(record: PersistentObject, where: str) -> dict[str, np.ndarray]:
  """torch's `module.state_dict()` of a record: own parameters, persistent buffers, then each
  submodule's, depth first, with dotted names."""
  out: dict[str, np.ndarray] = {}

  def walk(node: PersistentObject, prefix: str):
    state = node.state
    skip = set(state.get("_non_persistent_buffers_set") or ())
    tensors = list((state.get("_parameters") or {}).items())
    tensors += [(k, v) for k, v in (state.get("_buffers") or {}).items() if k not in skip]
    for name, value in tensors:
      if value is None:
        continue
      if not isinstance(value, np.ndarray):
        raise ValueError(f"{where}: {prefix}{name} is a {type(value).__name__}, not a tensor")
      out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
      if child is None:
        continue
      if not isinstance(child, PersistentObject):
        raise ValueError(f"{where}: submodule {prefix}{name} is a {type(child).__name__}, "
                         "not a persistent StyleGAN2 module")
      walk(child, f"{prefix}{name}.")

  walk(record, "")
  return out


def _network(record: Any, where: str) -> Network:
  if not isinstance(record, PersistentObject):
    raise ValueError(f"{where} is a {type(record).__name__}, not a torch_utils.persistence network")
  return Network(class_name=record.class_name, init_kwargs=record.init_kwargs,
                 state_dict=flat_state_dict(record, where), init_args=record.init_args,
                 module_src=record.module_src)


def read_network_pickle(path: str | os.PathLike) -> NetworkPickle:
  """G / G_ema / D (those present) of a StyleGAN2-ADA network pickle, as flat state dicts."""
  path = os.fspath(path)
  data = unpickle(path)
  if data == torch_pth.LEGACY_MAGIC:
    raise ValueError(f"{path} is a legacy torch.save file, not a network pickle")
  if not isinstance(data, dict):
    raise ValueError(f"{path} holds a {type(data).__name__}, not a StyleGAN2-ADA network pickle "
                     "(a dict with G, D, G_ema)")
  present = [key for key in NETWORK_KEYS if data.get(key) is not None]
  if not present:
    raise ValueError(f"{path} has no G, G_ema or D (keys: {', '.join(map(str, data))[:100]}); "
                     "not a StyleGAN2-ADA network pickle")
  networks = {key: _network(data[key], f"{path}:{key}") for key in present}
  augment = data.get("augment_pipe")
  training_set_kwargs = data.get("training_set_kwargs")
  return NetworkPickle(
      path=path, networks=networks,
      training_set_kwargs=_plain(training_set_kwargs) if isinstance(training_set_kwargs, dict) else None,
      augment_pipe=_network(augment, f"{path}:augment_pipe") if augment is not None else None, raw=data)


# ------------------------------------------------------------------ state dicts: inferring kwargs
def _indices(state: Mapping[str, Any], pattern: str) -> list[int]:
  return sorted(int(m.group(1)) for key in state if (m := re.fullmatch(pattern, key)))


def solve_channels(widths: Mapping[int, int], where: str) -> tuple[int, int]:
  """(channel_base, channel_max) with min(channel_base // res, channel_max) == widths[res] for
  every resolution; the reference's defaults (32768, 512) when they fit, else the smallest base."""
  channel_max = max(widths.values())
  low, high = 1, None
  for res, width in widths.items():
    if width < channel_max:  # base // res == width: base in [width * res, width * res + res - 1].
      low = max(low, width * res)
      high = width * res + res - 1 if high is None else min(high, width * res + res - 1)
    else:
      low = max(low, channel_max * res)
  base = 32768 if channel_max == 512 and low <= 32768 and (high is None or 32768 <= high) else low
  if any(min(base // res, channel_max) != width for res, width in widths.items()):
    shown = ", ".join(f"{res}px: {width}" for res, width in sorted(widths.items()))
    raise ValueError(f"{where}: no channel_base/channel_max gives the channel widths {shown}")
  return base, channel_max


def _mapping_kwargs(state, prefix: str, w_dim: int, where: str) -> tuple[dict, int, int]:
  """(mapping kwargs, c_dim, embed_features) of the MappingNetwork under `prefix`."""
  layers = _indices(state, re.escape(prefix) + r"fc(\d+)\.weight")
  if layers != list(range(len(layers))) or not layers:
    raise ValueError(f"{where}: mapping layers {prefix}fc* are {layers}, not 0..n-1")
  kwargs: dict[str, Any] = {"num_layers": len(layers)}
  embed = state.get(prefix + "embed.weight")
  c_dim, embed_features = (int(embed.shape[1]), int(embed.shape[0])) if embed is not None else (0, 0)
  if c_dim and embed_features != w_dim:
    kwargs["embed_features"] = embed_features
  if len(layers) > 1 and state[prefix + "fc0.weight"].shape[0] != w_dim:
    kwargs["layer_features"] = int(state[prefix + "fc0.weight"].shape[0])
  return kwargs, c_dim, embed_features


def _resolutions(state, pattern: str, first: int, where: str) -> list[int]:
  found = _indices(state, pattern)
  expected = [2 ** i for i in range(first.bit_length() - 1, max(found, default=first).bit_length())]
  if found != expected:
    raise ValueError(f"{where}: blocks at resolutions {found}, expected {expected}")
  return found


def infer_generator_kwargs(state: Mapping[str, np.ndarray], where: str) -> dict:
  """A Generator's init kwargs from its state dict's keys and shapes."""
  for key in ("mapping.fc0.weight", "synthesis.b4.const"):
    if key not in state:
      raise ValueError(f"{where}: no {key}; not a StyleGAN2 generator state dict")
  layers = _indices(state, r"mapping\.fc(\d+)\.weight")
  w_dim = int(state[f"mapping.fc{layers[-1]}.weight"].shape[0])
  mapping, c_dim, embed_features = _mapping_kwargs(state, "mapping.", w_dim, where)
  if "mapping.w_avg" not in state:
    mapping["w_avg_beta"] = None
  resolutions = _resolutions(state, r"synthesis\.b(\d+)\.conv1\.weight", 4, where)
  res = resolutions[-1]
  widths = {r: int(state[f"synthesis.b{r}.conv1.weight"].shape[0]) for r in resolutions}
  base, channel_max = solve_channels(widths, where)
  if f"synthesis.b{res}.torgb.weight" not in state:
    raise ValueError(f"{where}: no synthesis.b{res}.torgb.weight")
  architecture = ("resnet" if "synthesis.b8.skip.weight" in state
                  else "skip" if res == 4 or f"synthesis.b{res // 2}.torgb.weight" in state else "orig")
  synthesis: dict[str, Any] = {"channel_base": base, "channel_max": channel_max, "architecture": architecture}
  if "synthesis.b4.conv1.noise_strength" not in state:
    synthesis["use_noise"] = False
  return {"z_dim": int(state["mapping.fc0.weight"].shape[1]) - embed_features, "c_dim": c_dim,
          "w_dim": w_dim, "img_resolution": res,
          "img_channels": int(state[f"synthesis.b{res}.torgb.weight"].shape[0]),
          "mapping_kwargs": mapping, "synthesis_kwargs": synthesis}


def infer_discriminator_kwargs(state: Mapping[str, np.ndarray], where: str) -> dict:
  """A Discriminator's init kwargs from its state dict's keys and shapes."""
  for key in ("b4.conv.weight", "b4.fc.weight", "b4.out.weight"):
    if key not in state:
      raise ValueError(f"{where}: no {key}; not a StyleGAN2 discriminator state dict")
  blocks = _resolutions(state, r"b(\d+)\.conv0\.weight", 8, where) if any(
      re.fullmatch(r"b\d+\.conv0\.weight", k) for k in state) else []
  res = blocks[-1] if blocks else 4
  widths = {r: int(state[f"b{r}.conv0.weight"].shape[0]) for r in blocks}
  widths[4] = int(state["b4.conv.weight"].shape[0])
  base, channel_max = solve_channels(widths, where)
  if f"b{res}.fromrgb.weight" not in state:
    raise ValueError(f"{where}: no b{res}.fromrgb.weight")
  architecture = ("resnet" if blocks and f"b{res}.skip.weight" in state
                  else "skip" if "b4.fromrgb.weight" in state else "orig")
  kwargs: dict[str, Any] = {"c_dim": 0, "img_resolution": res,
                            "img_channels": int(state[f"b{res}.fromrgb.weight"].shape[1]),
                            "architecture": architecture, "channel_base": base, "channel_max": channel_max}
  if "mapping.fc0.weight" in state:
    cmap_dim = int(state["b4.out.weight"].shape[0])
    mapping, kwargs["c_dim"], _ = _mapping_kwargs(state, "mapping.", cmap_dim, where)
    kwargs["mapping_kwargs"] = mapping
    if cmap_dim != widths[4]:
      kwargs["cmap_dim"] = cmap_dim
  mbstd = int(state["b4.conv.weight"].shape[1]) - widths[4]
  if mbstd != 1:
    kwargs["epilogue_kwargs"] = {"mbstd_num_channels": mbstd}
  return kwargs


def _override(inferred: dict, override: Mapping[str, Any] | None) -> dict:
  """`override`'s keys replace inferred ones; nested *_kwargs dicts are merged key by key."""
  merged = dict(inferred)
  for key, value in (override or {}).items():
    if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
      merged[key] = {**merged[key], **value}
    else:
      merged[key] = value
  return merged


def read_state_dict_network(path: str, which: str) -> Network:
  """A torch.save state dict of one G or D, with inferred init kwargs."""
  state = torch_pth.load_state_dict(path)
  kind = "Discriminator" if "b4.out.weight" in state else "Generator" if "mapping.fc0.weight" in state else None
  if kind is None:
    raise ValueError(f"{path} is not a StyleGAN2 generator or discriminator state dict "
                     f"(first keys: {', '.join(list(state)[:3])})")
  if kind != CLASS_NAMES[which]:
    raise ValueError(f"{path} holds a {kind} state dict; asked for {which} ({CLASS_NAMES[which]})")
  infer = infer_generator_kwargs if kind == "Generator" else infer_discriminator_kwargs
  return Network(class_name=kind, init_kwargs=infer(state, path), state_dict=state)


def read_network(path: str | os.PathLike, which: str = "G_ema") -> Network:
  """Network `which` of a network pickle, or the one network of a torch.save state dict."""
  path = os.fspath(path)
  if which not in NETWORK_KEYS:
    raise ValueError(f"network {which!r} is not one of {', '.join(NETWORK_KEYS)}")
  if not os.path.isfile(path):
    raise ValueError(f"network file {path} does not exist")
  if zipfile.is_zipfile(path):
    return read_state_dict_network(path, which)
  with open(path, "rb") as f:
    head = f.read(16)
  if head.startswith(b"\x80\x02\x8a\x0a") and head[4:14] == torch_pth.LEGACY_MAGIC.to_bytes(10, "little"):
    return read_state_dict_network(path, which)
  networks = read_network_pickle(path).networks
  if which not in networks:
    raise ValueError(f"{path} has no {which} (it holds {', '.join(networks)})")
  network = networks[which]
  if network.class_name != CLASS_NAMES[which]:
    raise ValueError(f"{path}:{which} is a {network.class_name}, not a StyleGAN2 {CLASS_NAMES[which]}")
  if network.init_args:
    raise ValueError(f"{path}:{which} was built with positional arguments; expected keyword arguments")
  return network


# ------------------------------------------------------------------------ Flax module + variables
def abstract_variables(module, kind: str):
  """The variables `module` (a StyleGAN2 'Generator' or 'Discriminator') has, as shapes."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  key = jax.random.PRNGKey(0)
  rngs = {"params": key, "noise": key}
  if kind == "Generator":
    inputs = (jax.ShapeDtypeStruct((1, module.z_dim), jnp.float32),
              jax.ShapeDtypeStruct((1, module.c_dim), jnp.float32))
  else:
    inputs = (jax.ShapeDtypeStruct((1, module.img_resolution, module.img_resolution, module.img_channels),
                                   jnp.float32),
              jax.ShapeDtypeStruct((1, module.c_dim), jnp.float32))
  return jax.eval_shape(lambda *args: module.init(rngs, *args), *inputs)


def _leaves(tree, path=()):
  if hasattr(tree, "items"):
    for key, value in tree.items():
      yield from _leaves(value, path + (str(key),))
  else:
    yield path, tree


def variables_from_state_dict(state: Mapping[str, np.ndarray], abstract, where: str) -> dict:
  """Our variables (`{collection: nested dict}`) from a reference state dict, shapes checked
  against `abstract` (jax.eval_shape of module.init) in definition order."""
  variables: dict[str, dict] = {}
  used = set()
  for (collection, *path), leaf in _leaves(abstract):
    name = ".".join(path)
    if name not in state:
      raise ValueError(f"{where}: missing tensor {name} {tuple(leaf.shape)}")
    value = np.asarray(state[name])
    if value.shape != tuple(leaf.shape):
      raise ValueError(f"{where}: tensor {name} has shape {value.shape}, expected {tuple(leaf.shape)}")
    node = variables.setdefault(collection, {})
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value.astype(leaf.dtype)
    used.add(name)
  for name, value in state.items():
    if name in used:
      continue
    if name == "resample_filter" or name.endswith(".resample_filter"):
      if value.shape != RESAMPLE_FILTER.shape or not np.allclose(value, RESAMPLE_FILTER, atol=1e-7):
        raise ValueError(f"{where}: {name} is not the [1,3,3,1] filter (others are not supported)")
      continue
    raise ValueError(f"{where}: unexpected tensor {name} {tuple(np.shape(value))}")
  return variables


def build_module(network: Network, init_kwargs: Mapping[str, Any] | None = None):
  """Our Flax module for a network record (init kwargs overridden by `init_kwargs`)."""
  from gankd_jax.models import stylegan2  # pylint: disable=import-outside-toplevel
  kwargs = _override(network.init_kwargs, init_kwargs)
  build = {"Generator": stylegan2.generator_from_kwargs,
           "Discriminator": stylegan2.discriminator_from_kwargs}.get(network.class_name)
  if build is None:
    raise ValueError(f"a {network.class_name} is not a StyleGAN2 Generator or Discriminator")
  try:
    return build(kwargs)
  except TypeError as error:  # e.g. a required argument missing from the pickled kwargs.
    raise ValueError(f"{network.class_name} init kwargs {sorted(kwargs)}: {error}") from None


def load_network(path: str | os.PathLike, which: str = "G_ema", *,
                 init_kwargs: Mapping[str, Any] | None = None):
  """(Flax module, variables) of network `which` ("G_ema", "G" or "D") of a StyleGAN2-ADA network
  pickle, or of a torch.save state dict of one G / D (`which` then only says which kind)."""
  path = os.fspath(path)
  network = read_network(path, which)
  module = build_module(network, init_kwargs)
  where = f"{path}:{which}"
  return module, variables_from_state_dict(network.state_dict, abstract_variables(module, network.class_name),
                                           where)


def load_into(path: str | os.PathLike, which: str, module) -> dict:
  """Variables of network `which` of a pickle for *our* `module` (e.g. the architecture a training
  config describes, to fine-tune from the pickle): a tensor the module lacks, or of another shape,
  is a one-line error naming it."""
  path = os.fspath(path)
  network = read_network(path, which)  # Checks that `which` is the kind it names.
  where = f"{path}:{which} (for this config's {network.class_name.lower()})"
  return variables_from_state_dict(network.state_dict,
                                   abstract_variables(module, network.class_name), where)
