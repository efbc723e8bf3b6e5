"""Read PyTorch `.pth` / `.pt` checkpoints into NumPy arrays without importing torch.

The modern torch format (torch >= 1.6, `torch.save` default) is a zip archive:
`<root>/data.pkl` is a pickle whose tensors refer, through persistent ids
`("storage", StorageClass, key, location, numel)`, to raw little-endian buffers stored in
`<root>/data/<key>`; `<root>/byteorder` says "little" or "big" when present.

Unpickling runs code, so we use a restricted unpickler: `find_class` only resolves the few
names a tensor checkpoint needs (tensor/parameter rebuild functions, storage classes, dtypes,
OrderedDict) to *our own* NumPy-based stand-ins, and refuses everything else with
`ValueError("refusing to load <path>: pickle calls <module.name>")` before any call happens.
The legacy (pre-1.6, non-zip) format is not supported; re-save such files with a recent torch.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from typing import Any, Callable, Mapping

import ml_dtypes
import numpy as np

# Storage class names (torch.<Name>Storage) and dtype names (torch.<name>) -> NumPy dtypes.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}
_TORCH_DTYPES = {
    "float32": np.float32, "float": np.float32,
    "float64": np.float64, "double": np.float64,
    "float16": np.float16, "half": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64, "long": np.int64,
    "int32": np.int32, "int": np.int32,
    "int16": np.int16, "short": np.int16,
    "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}


class _StorageType:
  """Stand-in for `torch.<X>Storage`: only carries the element dtype."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _TorchDtype:
  """Stand-in for a `torch.dtype` global such as `torch.float32`."""

  def __init__(self, name: str):
    self.dtype = np.dtype(_TORCH_DTYPES[name])


class _Storage:
  """A loaded storage: its flat bytes plus the dtype the checkpoint declared for it."""

  def __init__(self, raw: bytes, dtype: np.dtype, numel: int, where: str):
    self.raw = raw
    self.dtype = dtype
    self.numel = numel
    self.where = where


class _TensorClass:
  """Stand-in for the `torch.Tensor` / `torch.nn.Parameter` classes (only used as markers)."""


def _tensor_from_storage(storage: _Storage, dtype: np.dtype, offset: int, size, stride) -> np.ndarray:
  """Materialise a (possibly strided, offset) view of a storage as a contiguous array."""
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
    raise ValueError(f"{storage.where}: bad tensor geometry size={size} stride={stride} offset={offset}")
  flat = np.frombuffer(storage.raw, dtype=dtype, count=len(storage.raw) // dtype.itemsize)
  if 0 in size:
    return np.zeros(size, dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= flat.size:
    raise ValueError(f"{storage.where}: tensor of size {size} stride {stride} offset {offset} "
                     f"reads past its storage of {flat.size} elements")
  view = np.lib.stride_tricks.as_strided(
      flat[offset:], shape=size, strides=tuple(s * dtype.itemsize for s in stride), writeable=False)
  return np.array(view, copy=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
  return _tensor_from_storage(storage, storage.dtype, int(storage_offset), size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
  return _tensor_from_storage(storage, dtype.dtype, int(storage_offset), size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _tensor_from_storage(storage, storage.dtype, int(storage_offset), size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
  return data


def _rebuild_from_type_v2(func, new_type, args, state):
  if not isinstance(new_type, _TensorClass):
    raise ValueError("tensor subclass rebuild with a non-tensor type")
  return func(*args)


_ALLOWED_FUNCTIONS: dict[tuple[str, str], Callable] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
}


def _fresh_allowed_globals() -> dict[tuple[str, str], Any]:
  """The allow-list, built anew per load so a pickle's BUILD opcodes cannot poison later loads."""
  allowed: dict[tuple[str, str], Any] = {
      key: (function if isinstance(function, type) else (lambda *args, _f=function: _f(*args)))
      for key, function in _ALLOWED_FUNCTIONS.items()}
  allowed[("torch", "Tensor")] = _TensorClass()
  allowed[("torch.nn.parameter", "Parameter")] = _TensorClass()
  allowed.update({("torch", name): _StorageType(name) for name in _STORAGE_DTYPES})
  allowed.update({("torch", name): _TorchDtype(name) for name in _TORCH_DTYPES})
  return allowed


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only allow-listed globals and reads storages from the zip."""

  def __init__(self, file, path: str, read_storage: Callable[[str], bytes]):
    super().__init__(file)
    self._path = path
    self._read_storage = read_storage
    self._storages: dict[str, _Storage] = {}
    self._allowed = _fresh_allowed_globals()

  def find_class(self, module: str, name: str):
    try:
      return self._allowed[(module, name)]
    except KeyError:
      raise ValueError(f"refusing to load {self._path}: pickle calls {module}.{name}") from None

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise ValueError(f"refusing to load {self._path}: unexpected persistent id {pid!r:.80}")
    _, storage_type, key, _location, numel = pid
    key = str(key)
    if key not in self._storages:
      raw = self._read_storage(key)
      dtype = storage_type.dtype
      if len(raw) < int(numel) * dtype.itemsize:
        raise ValueError(f"{self._path}: storage {key} has {len(raw)} bytes, "
                         f"expected {int(numel) * dtype.itemsize}")
      self._storages[key] = _Storage(raw, dtype, int(numel), f"{self._path} storage {key}")
    return self._storages[key]


def _archive_root(names: list[str], path: str) -> str:
  pickles = sorted((n for n in names if n == "data.pkl" or n.endswith("/data.pkl")), key=len)
  if not pickles:
    raise ValueError(f"{path} is a zip file without data.pkl, not a torch checkpoint")
  return pickles[0][: -len("data.pkl")]


def _swap_to_little_endian(obj):
  """Big-endian checkpoints: reinterpret every array's bytes in the other order."""
  if isinstance(obj, np.ndarray):
    return obj.byteswap() if obj.dtype.itemsize > 1 else obj
  if isinstance(obj, dict):
    for key in list(obj):
      obj[key] = _swap_to_little_endian(obj[key])
    return obj
  if isinstance(obj, list):
    return [_swap_to_little_endian(v) for v in obj]
  if isinstance(obj, tuple):
    return tuple(_swap_to_little_endian(v) for v in obj)
  return obj


def load_pth(path: str | os.PathLike) -> Any:
  """Load a torch zip checkpoint; tensors come back as NumPy arrays, containers as they were."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"checkpoint {path} does not exist")
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path} is not a torch zip checkpoint (legacy pre-1.6 torch format or "
                     "another file type); re-save it with torch.save from torch >= 1.6")
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    root = _archive_root(names, path)

    def read_storage(key: str) -> bytes:
      member = f"{root}data/{key}"
      if member not in names:
        raise ValueError(f"{path}: storage {member} is missing from the archive")
      return archive.read(member)

    byteorder = archive.read(f"{root}byteorder").decode().strip() if f"{root}byteorder" in names else "little"
    unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(f"{root}data.pkl")), path, read_storage)
    try:
      obj = unpickler.load()
    except ValueError:
      raise
    except Exception as error:  # corrupt pickles raise many types; report one line.
      raise ValueError(f"{path}: cannot unpickle checkpoint ({type(error).__name__}: {error})") from None
  return _swap_to_little_endian(obj) if byteorder == "big" else obj


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Load a state dict `{name: array}` from a `.pth`.

  Accepts a bare state dict or a checkpoint dict holding one under "state_dict" or "model".
  Non-tensor entries (e.g. epoch counters) of a bare state dict are dropped.
  """
  obj = load_pth(path)
  if isinstance(obj, dict):
    for wrapper in ("state_dict", "model"):
      if isinstance(obj.get(wrapper), dict):
        obj = obj[wrapper]
        break
  if not isinstance(obj, dict):
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
  state = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
  if not state:
    raise ValueError(f"{path} holds no tensors")
  return state


# ---------------------------------------------------------------------------------------------
# Writing: a minimal `torch.save`-compatible writer for flat state dicts (export without torch).

_NUMPY_TO_STORAGE = {np.dtype(dtype): name for name, dtype in _STORAGE_DTYPES.items() if name != "UntypedStorage"}


def _op_string(text: str) -> bytes:
  data = text.encode("utf-8")
  return b"X" + len(data).to_bytes(4, "little") + data


def _op_int(value: int) -> bytes:
  if -(2**31) <= value < 2**31:
    return b"J" + int(value).to_bytes(4, "little", signed=True)
  data = int(value).to_bytes(8, "little", signed=True)
  return b"\x8a" + bytes([len(data)]) + data  # LONG1


def _op_int_tuple(values) -> bytes:
  return b"(" + b"".join(_op_int(v) for v in values) + b"t"


def _op_global(module: str, name: str) -> bytes:
  return b"c" + f"{module}\n{name}\n".encode("ascii")


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
  strides, step = [], 1
  for size in reversed(shape):
    strides.append(step)
    step *= max(size, 1)
  return tuple(reversed(strides))


def _tensor_opcodes(array: np.ndarray, key: str) -> bytes:
  storage = _NUMPY_TO_STORAGE[array.dtype]
  persistent_id = (b"(" + _op_string("storage") + _op_global("torch", storage) + _op_string(key)
                   + _op_string("cpu") + _op_int(array.size) + b"tQ")
  empty_hooks = _op_global("collections", "OrderedDict") + b")R"
  return (_op_global("torch._utils", "_rebuild_tensor_v2") + b"(" + persistent_id + _op_int(0)
          + _op_int_tuple(array.shape) + _op_int_tuple(_contiguous_strides(array.shape))
          + b"\x89" + empty_hooks + b"tR")


def save_state_dict(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray]) -> None:
  """Write `{name: array}` in torch's zip format, loadable by `torch.load(weights_only=True)`."""
  arrays = {}
  for name, value in state_dict.items():
    array = np.array(value, order="C", copy=True)
    if array.dtype not in _NUMPY_TO_STORAGE:
      raise ValueError(f"cannot save tensor {name}: dtype {array.dtype} has no torch storage type")
    arrays[str(name)] = array.astype(array.dtype.newbyteorder("<"), copy=False)
  body = b"".join(_op_string(name) + _tensor_opcodes(array, str(index))
                  for index, (name, array) in enumerate(arrays.items()))
  data_pkl = (b"\x80\x02" + _op_global("collections", "OrderedDict") + b")R"
              + (b"(" + body + b"u" if arrays else b"") + b".")
  with zipfile.ZipFile(os.fspath(path), "w", compression=zipfile.ZIP_STORED) as archive:
    archive.writestr("archive/data.pkl", data_pkl)
    archive.writestr("archive/byteorder", "little")
    for index, array in enumerate(arrays.values()):
      archive.writestr(f"archive/data/{index}", array.tobytes())
    archive.writestr("archive/version", "3\n")


def load_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """`{name: array}` from a torch `.pth`/`.pt` state dict or a NumPy `.npz` with the same keys.

  `.npz` files are read with `allow_pickle=False`: an object array inside is refused.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"weights file {path} does not exist")
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as archive:
        state = {key: np.asarray(archive[key]) for key in archive.files}
    except ValueError as error:  # object arrays need pickle: refused.
      raise ValueError(f"refusing to load {path}: {error}") from None
    except (OSError, zipfile.BadZipFile) as error:
      raise ValueError(f"{path} is not a readable .npz file ({error})") from None
    if not state:
      raise ValueError(f"{path} holds no tensors")
    return state
  return load_state_dict(path)
