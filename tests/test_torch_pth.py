"""Tests for the torch-free .pth reader/writer: torch-written fixtures, edge cases, safety."""
import os
import pickle
import pickletools
import zipfile

import ml_dtypes
import numpy as np
import pytest

from gankd_jax.weights.torch_pth import load_pth, load_state_dict, save_state_dict

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


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
  legacy = tmp_path / "legacy.pth"
  legacy.write_bytes(pickle.dumps({"a": 1}))
  with pytest.raises(ValueError, match="not a torch zip checkpoint"):
    load_state_dict(legacy)
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
