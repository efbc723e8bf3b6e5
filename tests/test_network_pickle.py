"""StyleGAN2-ADA network pickles read without torch: fixtures pickled by the real reference
(tests/fixtures/make_stylegan2_fixtures.py), safety (nothing a pickle carries is run), bad
files, state-dict inference, and conformance: our Flax G / D loaded through `load_network`
against the reference's own float outputs at every fixture config."""
import os
import pickle
import sys
import types

import jax
import numpy as np
import pytest

from gankd_jax import generate
from gankd_jax.weights import network_pickle
from gankd_jax.weights.network_pickle import (PersistentObject, load_network, read_network,
                                              read_network_pickle, solve_channels)
from gankd_jax.weights.torch_pth import load_state_dict, save_state_dict

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "stylegan2")
CONFIGS = ("uncond16", "cond32", "arch16")
TOLERANCE = 1e-4  # Of the output scale (max |reference output|).


def fixture(name: str) -> str:
  return os.path.join(FIXTURES, f"{name}.pkl")


@pytest.fixture(scope="module")
def expected():
  with np.load(os.path.join(FIXTURES, "expected.npz")) as archive:
    return {key: archive[key] for key in archive.files}


# ------------------------------------------------------------------------------ reading
def test_reads_reference_pickles():
  for name in CONFIGS:
    pkl = read_network_pickle(fixture(name))
    assert sorted(pkl.networks) == ["D", "G", "G_ema"], name
    g, g_ema, d = pkl.networks["G"], pkl.networks["G_ema"], pkl.networks["D"]
    assert (g.class_name, g_ema.class_name, d.class_name) == ("Generator", "Generator", "Discriminator")
    assert g.init_kwargs == g_ema.init_kwargs and type(g.init_kwargs["mapping_kwargs"]) is dict
    assert g.init_kwargs["mapping_kwargs"] == {"num_layers": 2}
    assert g.init_kwargs["img_resolution"] == pkl.training_set_kwargs["resolution"]
    assert pkl.training_set_kwargs["class_name"] == "training.dataset.ImageFolderDataset"
    assert "class Generator" in g.module_src  # Kept as text (never executed).
    # torch's state_dict order: own parameters and buffers before submodules'.
    assert list(g.state_dict)[:2] == ["synthesis.b4.const", "synthesis.b4.resample_filter"]
    assert list(g.state_dict) == list(g_ema.state_dict)
    assert not np.array_equal(g.state_dict["mapping.w_avg"], g_ema.state_dict["mapping.w_avg"])
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in g.state_dict.values())
  arch = read_network_pickle(fixture("arch16"))  # Pickled with protocol 3, with an AugmentPipe.
  assert arch.networks["G"].init_kwargs["synthesis_kwargs"]["architecture"] == "resnet"
  assert arch.augment_pipe.class_name == "AugmentPipe" and arch.augment_pipe.state_dict["p"] == 0.25
  assert read_network_pickle(fixture("uncond16")).augment_pipe is None


def test_numpy_scalars_of_module_state():
  """Each layer's gains are np.float64 in its pickled __dict__."""
  record = read_network_pickle(fixture("uncond16")).raw["G_ema"]
  fc0 = record.state["_modules"]["mapping"].state["_modules"]["fc0"]
  assert isinstance(fc0, PersistentObject) and fc0.class_name == "FullyConnectedLayer"
  assert isinstance(fc0.state["weight_gain"], np.float64)
  np.testing.assert_allclose(fc0.state["weight_gain"], 0.01 / np.sqrt(24))


def test_state_dict_inference_matches_pickled_kwargs():
  for name in CONFIGS:
    for which in ("G_ema", "D"):
      network = read_network(fixture(name), which)
      infer = (network_pickle.infer_generator_kwargs if which == "G_ema"
               else network_pickle.infer_discriminator_kwargs)
      inferred = infer(network.state_dict, name)
      pickled = network.init_kwargs
      for key in ("c_dim", "img_resolution", "img_channels"):
        assert inferred[key] == pickled[key], (name, which, key)
      if which == "G_ema":
        assert (inferred["z_dim"], inferred["w_dim"]) == (pickled["z_dim"], pickled["w_dim"])
        assert inferred["mapping_kwargs"]["num_layers"] == 2
        got, want = inferred["synthesis_kwargs"], pickled["synthesis_kwargs"]
        assert got["architecture"] == want.get("architecture", "skip"), name
      else:
        got, want = inferred, pickled
        assert got["architecture"] == want.get("architecture", "resnet"), name
      assert (got["channel_base"], got["channel_max"]) == (want["channel_base"], want["channel_max"])


def test_solve_channels():
  ffhq = {res: min(32768 // res, 512) for res in (4, 8, 16, 32, 64, 128, 256, 512, 1024)}
  assert solve_channels(ffhq, "x") == (32768, 512)
  # All widths at channel_max: any base >= 512 * 32 fits; the reference's default is chosen.
  cifar = {res: min(16384 // res, 512) for res in (4, 8, 16, 32)}
  assert solve_channels(cifar, "x") == (32768, 512)
  half = {res: min(16384 // res, 512) for res in (4, 8, 16, 32, 64, 128, 256)}  # fmaps 0.5
  assert solve_channels(half, "x") == (16384, 512)
  assert solve_channels({4: 16, 8: 8, 16: 4}, "x") == (64, 16)
  with pytest.raises(ValueError, match=r"x: no channel_base/channel_max gives the channel widths 4px: 16, 8px: 16, 16px: 3"):
    solve_channels({4: 16, 8: 16, 16: 3}, "x")


# ------------------------------------------------------------------------------ safety
class _RunsShell:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def _persistent_record_pickler(monkeypatch):
  """A `torch_utils.persistence._reconstruct_persistent_obj` that pickle can name (the test's
  own stand-in: pickling needs the function to be importable under that name)."""
  def _reconstruct_persistent_obj(meta):
    raise AssertionError(f"never called while pickling {meta!r:.20}")
  _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
  _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
  package, module = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
  module._reconstruct_persistent_obj = _reconstruct_persistent_obj
  package.persistence = module
  monkeypatch.setitem(sys.modules, "torch_utils", package)
  monkeypatch.setitem(sys.modules, "torch_utils.persistence", module)

  class Record:
    def __init__(self, class_name, module_src, state):
      self.meta = dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)

    def __reduce__(self):
      return (_reconstruct_persistent_obj, (self.meta,))
  return Record


def test_persistence_source_is_never_executed(tmp_path, monkeypatch):
  record = _persistent_record_pickler(monkeypatch)
  marker = tmp_path / "executed"
  source = f"open({str(marker)!r}, 'w').write('pwned')\nclass Generator:\n  pass\n"
  state = {"_parameters": {}, "_buffers": {}, "_modules": {}, "_init_args": (), "_init_kwargs": {"z_dim": 4}}
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps({"G": record("Generator", source, state), "D": None, "G_ema": None}))
  pkl = read_network_pickle(path)
  assert pkl.networks["G"].module_src == source and pkl.networks["G"].init_kwargs == {"z_dim": 4}
  with pytest.raises(ValueError, match=r"Generator init kwargs \['z_dim'\]"):
    load_network(path, "G")
  assert not marker.exists()
  # A call hidden in a record's state is refused before it runs.
  state["_parameters"] = {"weight": _RunsShell(marker)}
  for protocol in (2, 4):
    path.write_bytes(pickle.dumps({"G": record("Generator", "", state)}, protocol=protocol))
    with pytest.raises(ValueError, match=r"^refusing to load .*evil\.pkl: pickle calls (posix|os)\.system$"):
      read_network_pickle(path)
  assert not marker.exists()


def test_unknown_globals_are_refused(tmp_path):
  path = tmp_path / "x.pkl"
  path.write_bytes(pickle.dumps({"G_ema": np.zeros(3)}))  # ndarray: not something the reference pickles
  with pytest.raises(ValueError, match=r"pickle calls numpy\._core\.multiarray\._reconstruct"):
    read_network_pickle(path)
  path.write_bytes(b"\x80\x02cdnnlib.tflib.network\nNetwork\n)\x81.")
  with pytest.raises(ValueError, match=r"pickle calls dnnlib\.tflib\.network\.Network \(a TensorFlow"):
    read_network_pickle(path)
  path.write_bytes(b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00U3\x85R.")  # allowed name, bad value
  with pytest.raises(ValueError, match=r"x\.pkl: numpy dtype 'U3' is not numeric"):
    read_network_pickle(path)
  path.write_bytes(b"\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R.")
  with pytest.raises(ValueError, match=r"pickle calls builtins\.eval"):
    read_network_pickle(path)


# ------------------------------------------------------------------------------ bad files
def test_truncated_and_wrong_files(tmp_path, monkeypatch):
  data = open(fixture("cond32"), "rb").read()
  cut = tmp_path / "cut.pkl"
  for size in (len(data) // 2, len(data) - 5, 40):
    cut.write_bytes(data[:size])
    with pytest.raises(ValueError, match=r"cut\.pkl: cannot unpickle \(truncated or corrupt"):
      read_network_pickle(cut)
  with pytest.raises(ValueError, match="does not exist"):
    load_network(tmp_path / "nope.pkl")
  other = tmp_path / "other.pkl"
  other.write_bytes(pickle.dumps([1, 2]))
  with pytest.raises(ValueError, match="holds a list, not a StyleGAN2-ADA network pickle"):
    load_network(other)
  record = _persistent_record_pickler(monkeypatch)
  state = {"_parameters": {}, "_buffers": {}, "_modules": {}, "_init_args": (), "_init_kwargs": {}}
  other.write_bytes(pickle.dumps({"netG": record("ResnetGenerator", "", state)}))
  with pytest.raises(ValueError, match=r"has no G, G_ema or D \(keys: netG\)"):
    load_network(other)
  other.write_bytes(pickle.dumps({"G_ema": record("ResnetGenerator", "", state), "D": None}))
  with pytest.raises(ValueError, match=r"other\.pkl:G_ema is a ResnetGenerator, not a StyleGAN2 Generator"):
    load_network(other)
  with pytest.raises(ValueError, match=r"other\.pkl has no G \(it holds G_ema\)"):
    load_network(other, "G")
  with pytest.raises(ValueError, match="network 'Gs' is not one of G, G_ema, D"):
    load_network(fixture("uncond16"), "Gs")
  not_sg2 = tmp_path / "resnet.pth"
  save_state_dict(not_sg2, {"model.0.weight": np.zeros((2, 3, 7, 7), np.float32)})
  with pytest.raises(ValueError, match="not a StyleGAN2 generator or discriminator state dict"):
    load_network(not_sg2)


# ------------------------------------------------------------------- state dicts and shapes
def test_state_dict_files_load_like_the_pickle(tmp_path):
  """torch.save state dicts (zip, written by our writer; the legacy format shares the reader)
  of G_ema and D: same variables as through the pickle, kwargs inferred."""
  for which in ("G_ema", "D"):
    network = read_network(fixture("cond32"), which)
    path = tmp_path / f"{which}.pth"
    save_state_dict(path, network.state_dict)
    assert list(load_state_dict(path)) == list(network.state_dict)
    overrides = {"synthesis_kwargs": {"conv_clamp": 256}} if which == "G_ema" else {"conv_clamp": 256}
    module, variables = load_network(path, which, init_kwargs=overrides)
    ref_module, ref_variables = load_network(fixture("cond32"), which)
    if which == "D":  # mbstd_group_size cannot be seen in shapes: the reference's default.
      assert module.epilogue_kwargs.get("mbstd_group_size", 4) == 4
      assert ref_module.epilogue_kwargs["mbstd_group_size"] == 2
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables, ref_variables)
  with pytest.raises(ValueError, match=r"D\.pth holds a Discriminator state dict; asked for G_ema"):
    load_network(tmp_path / "D.pth", "G_ema")


def test_mismatches_are_named(tmp_path):
  network = read_network(fixture("uncond16"), "G_ema")
  path = tmp_path / "g.pth"

  def expect(state, message, **kwargs):
    save_state_dict(path, state)
    with pytest.raises(ValueError, match=message):
      load_network(path, "G", **kwargs)

  state = dict(network.state_dict)
  del state["synthesis.b8.conv0.affine.bias"]
  expect(state, r"g\.pth:G: missing tensor synthesis\.b8\.conv0\.affine\.bias \(16,\)$")
  state = dict(network.state_dict, **{"synthesis.b16.torgb.bias": np.zeros(4, np.float32)})
  expect(state, r"g\.pth:G: tensor synthesis\.b16\.torgb\.bias has shape \(4,\), expected \(3,\)$")
  state = dict(network.state_dict, **{"synthesis.b8.extra": np.zeros(2, np.float32)})
  expect(state, r"g\.pth:G: unexpected tensor synthesis\.b8\.extra \(2,\)$")
  state = dict(network.state_dict, **{"synthesis.b8.resample_filter": np.ones((4, 4), np.float32) / 16})
  expect(state, r"synthesis\.b8\.resample_filter is not the \[1,3,3,1\] filter")
  expect(network.state_dict, r"missing tensor mapping\.fc2\.(weight|bias) ",
         init_kwargs={"mapping_kwargs": {"num_layers": 3}})


# ------------------------------------------------------------------------------ conformance
@pytest.mark.parametrize("name", CONFIGS)
def test_conformance_with_reference_outputs(name, expected):
  """Our G_ema / G (psi 1 and 0.7, noise_mode const) and D logits against the reference's."""
  z, c = expected[f"{name}/z"], expected[f"{name}/c"]
  for which, tags in (("G_ema", ("psi1", "psi0.7")), ("G", ("psi1",))):
    module, variables = load_network(fixture(name), which)
    for tag in tags:
      # One example at a time through generate's compiled G (the same program as test_generate's).
      ours = np.concatenate([np.asarray(generate.synthesize(
          module, variables, z[i:i + 1], c[i:i + 1], truncation_psi=float(tag[3:]), noise_mode="const"))
                             for i in range(len(z))])
      ref = expected[f"{name}/{which.lower()}_{tag}"].transpose(0, 2, 3, 1)
      assert ours.shape == ref.shape
      error, scale = np.abs(ours - ref).max(), np.abs(ref).max()
      assert error <= TOLERANCE * scale, (name, which, tag, error, scale)
  module, variables = load_network(fixture(name), "D")
  discriminator = jax.jit(lambda v, img, c: module.apply(v, img, c))
  for tag in ("psi1", "psi0.7", "img"):
    images = expected[f"{name}/g_ema_{tag}" if tag != "img" else f"{name}/d_img"].transpose(0, 2, 3, 1)
    ours = np.asarray(discriminator(variables, images, c))
    ref = expected[f"{name}/d_logits_{tag}"]
    assert ours.shape == ref.shape == (len(z), 1)
    error, scale = np.abs(ours - ref).max(), np.abs(ref).max()
    assert error <= TOLERANCE * scale, (name, "D", tag, error, scale)
