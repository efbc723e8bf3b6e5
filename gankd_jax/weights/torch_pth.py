"""Read PyTorch `.pth` / `.pt` checkpoints into NumPy arrays without importing torch.

Two on-disk formats exist, and both are read:

- zip (torch >= 1.6, `torch.save` default): `<root>/data.pkl` is a pickle whose tensors refer,
  through persistent ids `("storage", StorageClass, key, location, numel)`, to raw little-endian
  buffers stored in `<root>/data/<key>`; `<root>/byteorder` says "little" or "big" when present.
- legacy (torch 0.4 - 1.5, and `_use_new_zipfile_serialization=False` since): one stream of five
  parts, namely a pickled magic number, a pickled protocol version (1001), a pickled sys-info dict
  (`little_endian`, type sizes), the object pickle, whose persistent ids are
  `("storage", StorageClass, key, location, numel, view_metadata)`, a pickled list of storage
  keys, then the raw storages in that order, each an int64 element count and its bytes. Besides
  2017-2019 `.pth` files (pix2pix, CycleGAN), every storage inside a plain pickle of torch
  tensors (e.g. a StyleGAN2-ADA network pickle) is such a blob: `torch.storage._load_from_bytes`.
  The storage bytes follow the pickle that describes them, so the object pickle is read twice:
  once to learn each storage's element type (tensors not built), then, after the raw storages are
  read, for real. (The torch <= 0.3 tar format is refused.)

Unpickling runs code, so we use a restricted unpickler: `find_class` only resolves the few
names a tensor checkpoint needs (tensor/parameter rebuild functions, storage classes, dtypes,
OrderedDict) to *our own* NumPy-based stand-ins, and refuses everything else with
`ValueError("refusing to load <path>: pickle calls <module.name>")` before any call happens.
`RestrictedUnpickler` takes extra allowed globals, for readers of richer pickles
(weights/network_pickle.py), and module prefixes whose classes become inert `PickledObject`
records (e.g. `__torch__` for a TorchScript archive's modules, whose state dicts hold the tensors).
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import tarfile
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
  """A loaded storage: its flat little-endian bytes plus the dtype the checkpoint declared for it.

  `raw` is None on the first pass over a legacy pickle (geometry only: tensors are not built)."""

  def __init__(self, raw: bytes | None, dtype: np.dtype, numel: int, where: str):
    self.raw = raw
    self.dtype = dtype
    self.numel = numel
    self.where = where


class _TensorClass:
  """Stand-in for the `torch.Tensor` / `torch.nn.Parameter` classes (only used as markers)."""


def _tensor_from_storage(storage: _Storage, dtype: np.dtype, offset: int, size, stride) -> np.ndarray | None:
  """Materialise a (possibly strided, offset) view of a storage as a contiguous array."""
  if not isinstance(storage, _Storage):
    raise ValueError(f"tensor rebuilt from a {type(storage).__name__}, not a storage")
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
    raise ValueError(f"{storage.where}: bad tensor geometry size={size} stride={stride} offset={offset}")
  if storage.raw is None:
    return None
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


class PickledObject:
  """Inert record of an instance of a class we do not import (`stub_prefixes`): NEWOBJ/REDUCE
  arguments and the BUILD state are stored, nothing of the original class runs."""

  pickled_class = "?"

  def __new__(cls, *args, **kwargs):
    del kwargs
    instance = super().__new__(cls)
    instance.args = args
    instance.state = None
    return instance

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __setstate__(self, state):
    self.state = state


def _stub_class(module: str, name: str) -> type:
  return type(name, (PickledObject,), {"pickled_class": f"{module}.{name}"})


StorageLoader = Callable[[_StorageType, str, int, Any], _Storage]


def _as_str(value) -> str:
  return value.decode("ascii") if isinstance(value, bytes) else str(value)


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only allow-listed globals (the tensor ones plus `extra_globals`,
  `(module, name) -> object`; classes of modules under `stub_prefixes` become `PickledObject`
  records) and gets storages from `load_storage(type, key, numel, view)`; without it, any
  persistent id is refused."""

  def __init__(self, file, path: str, load_storage: StorageLoader | None = None,
               extra_globals: Mapping[tuple[str, str], Any] | None = None,
               stub_prefixes: tuple[str, ...] = ()):
    super().__init__(file, encoding="utf-8")  # Python 2 `str` (e.g. 2017 .pth keys) as text.
    self._path = path
    self._load_storage = load_storage
    self._allowed = _fresh_allowed_globals()
    self._allowed.update(extra_globals or {})
    self._stub_prefixes = tuple(stub_prefixes)

  def find_class(self, module: str, name: str):
    try:
      return self._allowed[(module, name)]
    except KeyError:
      if any(module == prefix or module.startswith(prefix + ".") for prefix in self._stub_prefixes):
        self._allowed[(module, name)] = _stub_class(module, name)
        return self._allowed[(module, name)]
      raise ValueError(f"refusing to load {self._path}: pickle calls {module}.{name}") from None

  def persistent_load(self, pid):
    if not (self._load_storage is not None and isinstance(pid, tuple) and len(pid) in (5, 6)
            and _as_str(pid[0]) == "storage" and isinstance(pid[1], _StorageType)):
      raise ValueError(f"refusing to load {self._path}: unexpected persistent id {pid!r:.80}")
    view = pid[5] if len(pid) == 6 else None
    return self._load_storage(pid[1], _as_str(pid[2]), int(pid[4]), view)


def _zip_storage_loader(path: str, read_storage: Callable[[str], bytes]) -> StorageLoader:
  storages: dict[str, _Storage] = {}

  def load(storage_type: _StorageType, key: str, numel: int, _view) -> _Storage:
    if key not in storages:
      raw = read_storage(key)
      dtype = storage_type.dtype
      if len(raw) < numel * dtype.itemsize:
        raise ValueError(f"{path}: storage {key} has {len(raw)} bytes, expected {numel * dtype.itemsize}")
      storages[key] = _Storage(raw, dtype, numel, f"{path} storage {key}")
    return storages[key]
  return load


# torch.serialization's MAGIC_NUMBER and PROTOCOL_VERSION of the legacy (non-zip) format.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


def _load_plain(stream, path: str):
  """One pickle of plain data (no globals, no persistent ids) from the stream."""
  return RestrictedUnpickler(stream, path).load()


def _load_legacy(stream: io.BufferedIOBase, path: str,
                 extra_globals: Mapping[tuple[str, str], Any] | None = None) -> Any:
  """The legacy torch.save stream: header pickles, object pickle, storage keys, raw storages."""
  try:
    magic = _load_plain(stream, path)
  except ValueError:
    raise
  except Exception:  # Not even a pickle: say what the file is not.
    raise ValueError(f"{path} is not a torch checkpoint (neither a zip archive nor a legacy "
                     "torch.save stream)") from None
  if magic != LEGACY_MAGIC:
    raise ValueError(f"{path} is not a torch checkpoint (a pickle without torch's magic number; "
                     "a network pickle is read by gankd_jax.weights.network_pickle)")
  protocol = _load_plain(stream, path)
  if protocol != LEGACY_PROTOCOL:
    raise ValueError(f"{path}: unsupported legacy torch protocol version {protocol!r}")
  sys_info = _load_plain(stream, path)
  byteorder = "little" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else "big"

  # Pass 1: the storages' element types (tensors are not built: no bytes yet).
  start = stream.tell()
  declared: dict[str, np.dtype] = {}

  def declare(storage_type: _StorageType, key: str, numel: int, _view) -> _Storage:
    declared.setdefault(key, storage_type.dtype)
    return _Storage(None, storage_type.dtype, numel, f"{path} storage {key}")
  RestrictedUnpickler(stream, path, declare, extra_globals).load()

  raws: dict[str, bytes] = {}
  for key in _load_plain(stream, path):
    key = _as_str(key)
    if key not in declared:
      raise ValueError(f"{path}: storage {key} is listed but no tensor refers to it")
    itemsize = declared[key].itemsize
    count = stream.read(8)
    numel = int.from_bytes(count, byteorder) if len(count) == 8 else -1
    raw = stream.read(max(numel, 0) * itemsize)
    if numel < 0 or len(raw) < numel * itemsize:
      raise ValueError(f"{path} is truncated: storage {key} ends early")
    if byteorder == "big" and itemsize > 1:
      raw = np.frombuffer(raw, declared[key].newbyteorder(">")).astype(declared[key].newbyteorder("<")).tobytes()
    raws[key] = raw
  end = stream.tell()

  # Pass 2: the objects, with their storages' bytes.
  storages: dict[str, _Storage] = {}

  def load(storage_type: _StorageType, key: str, numel: int, view) -> _Storage:
    if key not in raws:
      raise ValueError(f"{path}: storage {key} is missing from the file")
    dtype, name, raw = storage_type.dtype, key, raws[key]
    if view is not None:  # (view key, offset, numel): a slice of the root storage.
      name, offset, numel = _as_str(view[0]), int(view[1]), int(view[2])
      raw = raw[offset * dtype.itemsize:(offset + numel) * dtype.itemsize]
    if name not in storages:
      if len(raw) < numel * dtype.itemsize:
        raise ValueError(f"{path}: storage {name} has {len(raw)} bytes, expected {numel * dtype.itemsize}")
      storages[name] = _Storage(raw, dtype, numel, f"{path} storage {name}")
    return storages[name]
  stream.seek(start)
  obj = RestrictedUnpickler(stream, path, load, extra_globals).load()
  stream.seek(end)
  return obj


def _unpickling(path: str, read: Callable[[], Any]) -> Any:
  """Runs a load; a corrupt or truncated pickle (many exception types) is one ValueError line."""
  try:
    return read()
  except ValueError:
    raise
  except Exception as error:  # pylint: disable=broad-except
    raise ValueError(f"{path}: cannot unpickle checkpoint ({type(error).__name__}: {error})") from None


def load_storage_blob(data: bytes, where: str) -> _Storage:
  """A storage from the legacy torch.save bytes a plain pickle carries for each torch storage
  (`torch.storage._load_from_bytes`); the blob is read by the same restricted unpickler."""
  storage = _unpickling(where, lambda: _load_legacy(io.BytesIO(bytes(data)), where))
  if not isinstance(storage, _Storage) or storage.raw is None:
    raise ValueError(f"{where}: a storage blob holds a {type(storage).__name__}, not a storage")
  return storage


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


def load_pth(path: str | os.PathLike, stub_prefixes: tuple[str, ...] = ()) -> Any:
  """Load a torch checkpoint (zip or legacy format); tensors come back as NumPy arrays,
  containers as they were. Instances of classes under `stub_prefixes` (zip format only, e.g.
  `("__torch__",)` for a TorchScript archive) come back as `PickledObject` records."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"checkpoint {path} does not exist")
  if not zipfile.is_zipfile(path):
    if tarfile.is_tarfile(path):
      raise ValueError(f"{path} is a torch <= 0.3 tar checkpoint; re-save it with a newer torch")
    with open(path, "rb") as stream:
      return _unpickling(path, lambda: _load_legacy(stream, path))
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    root = _archive_root(names, path)

    def read_storage(key: str) -> bytes:
      member = f"{root}data/{key}"
      if member not in names:
        raise ValueError(f"{path}: storage {member} is missing from the archive")
      return archive.read(member)

    byteorder = archive.read(f"{root}byteorder").decode().strip() if f"{root}byteorder" in names else "little"
    unpickler = RestrictedUnpickler(io.BytesIO(archive.read(f"{root}data.pkl")), path,
                                    _zip_storage_loader(path, read_storage), stub_prefixes=stub_prefixes)
    obj = _unpickling(path, unpickler.load)
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
