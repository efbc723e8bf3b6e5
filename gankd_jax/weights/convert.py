"""PyTorch state dict <-> Flax variables, by explicit per-leaf rules, with a cache.

Our converted networks (InceptionV3, VGG16) name their Flax modules exactly as the torch modules
are named, so a Flax leaf `(collection, *module_path, leaf)` corresponds to the torch tensor
`".".join(module_path) + "." + TORCH_LEAF[collection, leaf]`, with the layout change of
`TORCH_LAYOUT`:

  params/kernel (4-D)   <- <module>.weight        OIHW -> HWIO
  params/kernel (2-D)   <- <module>.weight        (out, in) -> (in, out)
  params/bias           <- <module>.bias
  params/scale          <- <module>.weight        (BatchNorm gamma)
  batch_stats/mean      <- <module>.running_mean
  batch_stats/var       <- <module>.running_var
  params/positional_embedding <- <module>.positional_embedding   (as is)

Expected tensors are listed in the network's definition order, so a file of another architecture
is reported by the *first* tensor that is missing or has the wrong shape. Extra tensors in the file
(e.g. `num_batches_tracked`, an aux classifier) are ignored.

Converted variables are cached as `.npz` under `<cache>/converted/`, keyed by the SHA-256 of the
source file and a converter version, so a large `.pth` is unpickled and transposed once.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterator

import jax
import numpy as np

from gankd_jax.weights import download
from gankd_jax.weights.torch_pth import load_tensors

CONVERTER_VERSION = 1

TORCH_LEAF = {
    ("params", "kernel"): "weight",
    ("params", "bias"): "bias",
    ("params", "scale"): "weight",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
    ("params", "positional_embedding"): "positional_embedding",  # CLIP's AttentionPool2d
}


def _to_flax_layout(array: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == "kernel" and array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if leaf == "kernel" and array.ndim == 2:
    return array.T
  return array


def _to_torch_shape(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
  if leaf == "kernel" and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if leaf == "kernel" and len(shape) == 2:
    return (shape[1], shape[0])
  return tuple(shape)


def _walk(tree: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
  """Leaves of nested dicts in insertion (= Flax definition) order."""
  if isinstance(tree, dict) or hasattr(tree, "items"):
    for key, value in tree.items():
      yield from _walk(value, path + (str(key),))
  else:
    yield path, tree


def torch_name(collection: str, path: tuple[str, ...]) -> str:
  """The torch state-dict key of the Flax leaf `variables[collection][path...]`."""
  leaf = path[-1]
  if (collection, leaf) not in TORCH_LEAF:
    raise ValueError(f"no torch name rule for Flax leaf {collection}/{'/'.join(path)}")
  return ".".join(path[:-1] + (TORCH_LEAF[collection, leaf],))


def expected_tensors(abstract_variables: Any) -> list[tuple[str, tuple[int, ...], str, tuple[str, ...]]]:
  """[(torch name, torch shape, collection, flax path)] in definition order: params first by
  module, with each module's running statistics right after its own parameters."""
  entries: dict[tuple[str, ...], list] = {}
  order: list[tuple[str, ...]] = []
  for collection in ("params", "batch_stats"):
    for path, leaf in _walk(abstract_variables.get(collection, {})):
      module = path[:-1]
      if module not in entries:
        entries[module] = []
        order.append(module)
      entries[module].append((torch_name(collection, path),
                              _to_torch_shape(tuple(leaf.shape), path[-1]), collection, path))
  return [entry for module in order for entry in entries[module]]


def expected_shapes(abstract_variables: Any) -> list[tuple[str, tuple[int, ...]]]:
  """[(torch name, torch shape)]: what a state dict for this network must hold."""
  return [(name, shape) for name, shape, _, _ in expected_tensors(abstract_variables)]


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def variables_from_state_dict(state_dict: dict[str, np.ndarray], abstract_variables: Any, *,
                              architecture: str, source: str = "state dict") -> dict:
  """Flax variables of a network from a torch state dict; ValueError naming the first tensor
  that does not fit (missing, or of another shape)."""
  variables: dict = {}
  for name, shape, collection, path in expected_tensors(abstract_variables):
    if name not in state_dict:
      held = ", ".join(list(state_dict)[:3])
      raise ValueError(f"{source} is not a {architecture} weights file: it has no tensor {name} "
                       f"(it holds {held}, ...)")
    value = np.asarray(state_dict[name])
    if tuple(value.shape) != shape:
      raise ValueError(f"{source} is not a {architecture} weights file: tensor {name} has shape "
                       f"{tuple(value.shape)}, {architecture} expects {shape}")
    if not np.issubdtype(value.dtype, np.floating):
      raise ValueError(f"{source}: tensor {name} has dtype {value.dtype}, expected floating point")
    _set(variables.setdefault(collection, {}), path,
         np.ascontiguousarray(_to_flax_layout(value.astype(np.float32), path[-1])))
  return variables


def state_dict_from_variables(variables: Any) -> dict[str, np.ndarray]:
  """The inverse: a torch-layout state dict of Flax variables, in torch's order (export, tests)."""
  state = {}
  for name, _, collection, path in expected_tensors(variables):
    leaf = variables[collection]
    for key in path:
      leaf = leaf[key]
    array = np.asarray(jax.device_get(leaf))
    if path[-1] == "kernel" and array.ndim == 4:
      array = array.transpose(3, 2, 0, 1)
    elif path[-1] == "kernel" and array.ndim == 2:
      array = array.T
    state[name] = np.ascontiguousarray(array)
  return state


# ------------------------------------------------------------------------------------ cache
def _flatten(variables: dict) -> dict[str, np.ndarray]:
  return {"/".join((collection,) + path): np.asarray(leaf)
          for collection in variables for path, leaf in _walk(variables[collection])}


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for key, value in flat.items():
    _set(tree, tuple(key.split("/")), value)
  return tree


def cached_conversion(path: str, architecture: str,
                      convert: Callable[[dict[str, np.ndarray], str], dict],
                      cache_dir: str | None = None) -> dict:
  """`convert(load_tensors(path), path)`, cached under `<cache>/converted/` by file content.

  A cache entry that cannot be read is rebuilt; a cache that cannot be written is skipped.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"{architecture} weights file {path} does not exist")
  directory = os.path.join(cache_dir or download.cache_dir(), "converted")
  slug = re.sub(r"[^a-z0-9]+", "_", architecture.lower())
  key = f"{slug}-v{CONVERTER_VERSION}-{download.sha256_of(path)[:24]}.npz"
  cached = os.path.join(directory, key)
  if os.path.isfile(cached):
    try:
      with np.load(cached, allow_pickle=False) as archive:
        return _unflatten({k: archive[k] for k in archive.files})
    except (OSError, ValueError):
      pass  # Corrupt entry: convert again below.
  variables = convert(load_tensors(path), path)
  try:
    os.makedirs(directory, exist_ok=True)
    tmp = f"{cached}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **_flatten(variables))
    os.replace(tmp, cached)
  except OSError:
    pass  # A read-only cache costs a conversion per load, nothing else.
  return variables
