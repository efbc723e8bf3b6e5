"""Tests for the torch-free .pth reader/writer: torch-written fixtures, edge cases, safety."""
import os
import pickle
import pickletools
import zipfile

import ml_dtypes
import numpy as np
import pytest

from gankd_jax.weights.torch_pth import (LEGACY_MAGIC, LEGACY_PROTOCOL, load_pth, load_state_dict,
                                         load_storage_blob, save_state_dict)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
LEGACY = os.path.join(FIXTURES, "stylegan2", "legacy_state_dict.pth")


def test_reads_torch_written_state_dict():
  loaded = load_state_dict(os.path.join(FIXTURES, "torch_state_dict.pth"))
  expected = np.load(os.path.join(FIXTURES, "torch_expected.npz"))
  assert list(loaded) == list(expected.files)  # order preserved
  dtypes = {"half": np.float16, "double": np.float64, "bf16": ml_dtypes.bfloat16,
            "bn.num_batches_tracked": np.int64, "mask": np.bool_}
  for name in expected.files:
    assert loaded[name].dtype == np.dtype(dtypes.get(name, np.float32)), name
    assert loaded[name].shape == expected[name].shape, name
    np.testing.assert_array_equal(loaded[name].astype(expected[name].dtype), expected[name], err_msg=name)
  # Views that shared one storage (offset rows, transposed, strided columns) are independent copies.
  np.testing.assert_array_equal(loaded["transposed"], loaded["base"].T)
  np.testing.assert_array_equal(loaded["offset_rows"], loaded["base"][1:3])
  np.testing.assert_array_equal(loaded["strided_cols"], loaded["base"][:, ::2])
  assert loaded["bn.num_batches_tracked"] == 123456789012


def test_reads_nested_checkpoint():
  path = os.path.join(FIXTURES, "torch_checkpoint_nested.pth")
  raw = load_pth(path)
  assert raw["epoch"] == 3 and sorted(raw["state_dict"]) == ["base", "conv.weight"]
  assert sorted(load_state_dict(path)) == ["base", "conv.weight"]


def test_writer_round_trip_and_layout(tmp_path):
  rng = np.random.default_rng(0)
  state = {"w": rng.normal(size=(3, 2, 1, 1)).astype(np.float32), "h": np.arange(3, dtype=np.float16),
           "b": np.array([1.5, -2.0], ml_dtypes.bfloat16), "n": np.array(2**40, np.int64),
           "t": rng.normal(size=(4, 3)).T, "e": np.zeros((0, 2), np.float32)}
  path = tmp_path / "out.pth"
  save_state_dict(path, state)
  loaded = load_state_dict(path)
  assert list(loaded) == list(state)
  for name, value in state.items():
    assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape, name
    np.testing.assert_array_equal(loaded[name], value)
  with zipfile.ZipFile(path) as archive:
    names = set(archive.namelist())
    assert {"archive/data.pkl", "archive/byteorder", "archive/data/0", "archive/data/5"} <= names
    globals_used = {arg for op, arg, _ in pickletools.genops(archive.read("archive/data.pkl"))
                    if op.name == "GLOBAL"}
  assert globals_used <= {"collections OrderedDict", "torch._utils _rebuild_tensor_v2", "torch FloatStorage",
                          "torch HalfStorage", "torch BFloat16Storage", "torch LongStorage",
                          "torch DoubleStorage"}


def test_big_endian_checkpoint(tmp_path):
  value = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
  path, big = tmp_path / "little.pth", tmp_path / "big.pth"
  save_state_dict(path, {"x": value})
  with zipfile.ZipFile(path) as source, zipfile.ZipFile(big, "w") as target:
    for name in source.namelist():
      data = source.read(name)
      if name == "archive/byteorder":
        data = b"big"
      elif name == "archive/data/0":
        data = value.astype(">f4").tobytes()
      target.writestr(name, data)
  np.testing.assert_array_equal(load_state_dict(big)["x"], value)


def _zip_with_pickle(path, payload: bytes, extra=None):
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", payload)
    for name, data in (extra or {}).items():
      archive.writestr(name, data)


class _RunsShell:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


class _Evaluates:
  def __reduce__(self):
    return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path, protocol):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  _zip_with_pickle(path, pickle.dumps({"weight": _RunsShell(marker)}, protocol=protocol))
  with pytest.raises(ValueError, match=r"refusing to load .*evil\.pth: pickle calls (posix|os|nt)\.system"):
    load_state_dict(path)
  assert not marker.exists()
  _zip_with_pickle(path, pickle.dumps([_Evaluates()], protocol=protocol))
  with pytest.raises(ValueError, match=r"pickle calls (builtins|__builtin__)\.eval"):
    load_pth(path)


def test_malicious_global_after_valid_tensors_is_refused(tmp_path):
  path = tmp_path / "mixed.pth"
  save_state_dict(path, {"x": np.ones(2, np.float32)})
  with zipfile.ZipFile(path) as archive:
    good = archive.read("archive/data.pkl")
    storage = archive.read("archive/data/0")
  # Insert a call to os.system before the final STOP of an otherwise valid state dict.
  evil = good[:-1] + b"0cos\nsystem\nX\x04\x00\x00\x00true\x85R."
  _zip_with_pickle(path, evil, {"archive/data/0": storage})
  with pytest.raises(ValueError, match=r"pickle calls os\.system"):
    load_pth(path)


def test_bad_files_raise_one_line_value_errors(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    load_state_dict(tmp_path / "nope.pth")
  plain = tmp_path / "plain.pth"
  plain.write_bytes(pickle.dumps({"a": 1}))
  with pytest.raises(ValueError, match="not a torch checkpoint .*without torch's magic number"):
    load_state_dict(plain)
  text = tmp_path / "text.pth"
  text.write_bytes(b"hello world, not a pickle")
  with pytest.raises(ValueError, match="not a torch checkpoint"):
    load_state_dict(text)
  no_pickle = tmp_path / "nopickle.pth"
  with zipfile.ZipFile(no_pickle, "w") as archive:
    archive.writestr("archive/version", "3")
  with pytest.raises(ValueError, match="without data.pkl"):
    load_state_dict(no_pickle)
  # A storage shorter than the tensor it backs.
  good, short = tmp_path / "good.pth", tmp_path / "short.pth"
  save_state_dict(good, {"x": np.ones((4, 4), np.float32)})
  with zipfile.ZipFile(good) as archive:
    _zip_with_pickle(short, archive.read("archive/data.pkl"), {"archive/data/0": b"\x00" * 8})
  with pytest.raises(ValueError, match="storage 0 has 8 bytes"):
    load_state_dict(short)
  missing = tmp_path / "missing_storage.pth"
  with zipfile.ZipFile(good) as archive:
    _zip_with_pickle(missing, archive.read("archive/data.pkl"))
  with pytest.raises(ValueError, match="missing from the archive"):
    load_state_dict(missing)
  not_a_dict = tmp_path / "list.pth"
  _zip_with_pickle(not_a_dict, pickle.dumps([1, 2], protocol=2))
  with pytest.raises(ValueError, match="holds a list, not a state dict"):
    load_state_dict(not_a_dict)


def test_save_rejects_unsupported_dtype(tmp_path):
  with pytest.raises(ValueError, match="tensor c.*complex64"):
    save_state_dict(tmp_path / "x.pth", {"c": np.zeros(2, np.complex64)})


# ------------------------------------------------------------------ legacy (pre-1.6) format
def test_reads_torch_legacy_state_dict():
  """Written by torch.save(..., _use_new_zipfile_serialization=False) in make_stylegan2_fixtures.py."""
  with open(LEGACY, "rb") as f:
    assert not f.read(4).startswith(b"PK")
  loaded = load_state_dict(LEGACY)
  expected = np.load(os.path.join(FIXTURES, "stylegan2", "legacy_expected.npz"))
  assert list(loaded) == list(expected.files)
  dtypes = {"half": np.float16, "double": np.float64, "bn.num_batches_tracked": np.int64, "mask": np.bool_}
  for name in expected.files:
    assert loaded[name].dtype == np.dtype(dtypes.get(name, np.float32)), name
    assert loaded[name].shape == expected[name].shape, name
    np.testing.assert_array_equal(loaded[name].astype(expected[name].dtype), expected[name], err_msg=name)
  np.testing.assert_array_equal(loaded["transposed"], loaded["base"].T)
  np.testing.assert_array_equal(loaded["offset_rows"], loaded["base"][1:])
  assert loaded["bn.num_batches_tracked"] == 987654321012


def _legacy_stream(obj_pickle: bytes, storages: list[tuple[str, int, bytes]], little_endian=True) -> bytes:
  """A legacy torch.save stream around a hand-written object pickle (as torch writes it)."""
  order = "little" if little_endian else "big"
  header = b"".join(pickle.dumps(v, protocol=2) for v in (
      LEGACY_MAGIC, LEGACY_PROTOCOL, {"protocol_version": LEGACY_PROTOCOL, "little_endian": little_endian}))
  keys = pickle.dumps([key for key, _, _ in storages], protocol=2)
  return header + obj_pickle + keys + b"".join(n.to_bytes(8, order) + raw for _, n, raw in storages)


def _storage_pickle(key: str, numel: int, view=None) -> bytes:
  """Protocol-2 pickle of one bare storage: its persistent id (what a storage blob holds)."""
  view_ops = b"N" if view is None else (b"(X" + len(view[0]).to_bytes(4, "little") + view[0].encode()
                                        + b"J" + view[1].to_bytes(4, "little") + b"J"
                                        + view[2].to_bytes(4, "little") + b"t")
  return (b"\x80\x02(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX" + len(key).to_bytes(4, "little")
          + key.encode() + b"X\x03\x00\x00\x00cpuJ" + numel.to_bytes(4, "little") + view_ops + b"tQ.")


def test_storage_blobs_big_endian_views_and_truncation():
  values = np.arange(5, dtype=np.float32) - 1.5
  little = _legacy_stream(_storage_pickle("7", 5), [("7", 5, values.tobytes())])
  storage = load_storage_blob(little, "blob")
  assert np.array_equal(np.frombuffer(storage.raw, np.float32), values)
  big = _legacy_stream(_storage_pickle("7", 5), [("7", 5, values.astype(">f4").tobytes())], little_endian=False)
  assert np.array_equal(np.frombuffer(load_storage_blob(big, "blob").raw, np.float32), values)
  view = _legacy_stream(_storage_pickle("7", 5, ("8", 1, 3)), [("7", 5, values.tobytes())])
  assert np.array_equal(np.frombuffer(load_storage_blob(view, "blob").raw, np.float32), values[1:4])
  with pytest.raises(ValueError, match="blob is truncated: storage 7 ends early"):
    load_storage_blob(little[:-3], "blob")
  with pytest.raises(ValueError, match="blob: cannot unpickle"):
    load_storage_blob(little[:60], "blob")
  not_storage = _legacy_stream(pickle.dumps([1, 2], protocol=2), [])
  with pytest.raises(ValueError, match="holds a list, not a storage"):
    load_storage_blob(not_storage, "blob")


def test_legacy_file_truncated_or_malicious(tmp_path):
  with open(LEGACY, "rb") as f:
    data = f.read()
  cut = tmp_path / "cut.pth"
  cut.write_bytes(data[:-10])
  with pytest.raises(ValueError, match="cut.pth is truncated"):
    load_state_dict(cut)
  cut.write_bytes(data[:200])
  with pytest.raises(ValueError, match="cut.pth: cannot unpickle"):
    load_state_dict(cut)
  marker = tmp_path / "pwned"
  evil = tmp_path / "evil.pth"
  evil.write_bytes(_legacy_stream(pickle.dumps({"w": _RunsShell(marker)}, protocol=2), []))
  with pytest.raises(ValueError, match=r"refusing to load .*evil\.pth: pickle calls (posix|os)\.system"):
    load_state_dict(evil)
  assert not marker.exists()
