"""`gankd_jax.export`: the export graph mode and each format in its own runtime.

Tiny generators of each family (pix2pix U-Net and OMGD's deep U-Net, the mobile / plain / deep
ResNets, DCGAN) at 32 px (DCGAN 16 px), and the tiny StyleGAN2-ADA pickles of
tests/fixtures/stylegan2 (16 / 32 px; from z through mapping and synthesis, or synthesis from
ws): the export graph equals the training graph and has no tensor above 4-D; each artifact run
in its runtime (deserialised StableHLO, the TFLite interpreter, onnxruntime) matches the same
network evaluated in float64 within 1e-4 of the output scale (instance norm in TFLite too); TFLite holds builtin ops only. A format whose extra is not
installed is skipped with the reason. TFLite post-training quantisation (float16, int8 weights)
gives smaller files, builtin ops only, close to the fp32 model (PSNR). The command runs end to end on a one-step OMGD run, a
one-step StyleGAN2 run, an imported PyTorch generator .pth and a network pickle (`--network`).
"""
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gankd_jax import export, train
from gankd_jax.models import stylegan2
from gankd_jax.models.layers import export_graph
from gankd_jax.methods.common import inference_network
from gankd_jax.models.dcgan import DCGANGenerator
from gankd_jax.models.resnet import (MobileResnetDeepestGenerator, MobileResnetGenerator,
                                     ResnetGenerator)
from gankd_jax.models.unet import UnetDeepestGenerator, UnetGenerator
from gankd_jax.weights import generator_pth
from gankd_jax.weights.network_pickle import load_network

sys.path.insert(0, os.path.dirname(__file__))
from test_train import REPO, tiny_config  # noqa: E402
from test_stylegan2 import tiny_config as tiny_stylegan2_config  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
PICKLES = os.path.join(FIXTURES, "stylegan2")
PTH = os.path.join(FIXTURES, "generator_pth")

FAMILIES = {
    "unet": (UnetGenerator(ngf=4, num_downs=5), (32, 32, 3)),
    "unet_deepest": (UnetDeepestGenerator(ngf=2, num_downs=5), (32, 32, 3)),
    "resnet": (ResnetGenerator(ngf=4, n_blocks=2), (32, 32, 3)),
    "mobile_resnet": (MobileResnetGenerator(ngf=4, n_blocks=3), (32, 32, 3)),
    "mobile_deepest": (MobileResnetDeepestGenerator(ngf=2, n_blocks=2), (32, 32, 3)),
    "dcgan": (DCGANGenerator(d=4, image_size=16, nz=8), (8,)),
}
# The converters are slow on two cores: each runtime sees one family of each kind.
RUNTIME_FAMILIES = ("unet", "mobile_resnet", "dcgan")


def network(name):
  module, shape = FAMILIES[name]
  variables = module.init(jax.random.key(1), jnp.zeros((1, *shape)), train=False)
  # Non-trivial running statistics, so BatchNorm's inference form is exercised.
  variables = jax.tree_util.tree_map_with_path(
      lambda path, v: v + 0.1 if "var" in jax.tree_util.keystr(path) else v, variables)
  return inference_network(module, variables, shape)


def require(fmt):
  missing = export.missing_modules(fmt)
  if missing:
    pytest.skip(f"{fmt} export needs {', '.join(missing)}: {export.EXTRA_HINT}")


def max_rank(jaxpr) -> int:
  """The largest rank of any value in a jaxpr, nested calls (pjit, custom VJPs) included."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  rank = 0
  for eqn in jaxpr.eqns:
    rank = max([rank] + [len(var.aval.shape) for var in eqn.outvars])
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
          rank = max(rank, max_rank(sub))
  return rank


@pytest.mark.parametrize("name", list(FAMILIES))
def test_export_graph_equals_training_graph_without_tensors_above_4d(name):
  net = network(name)
  x = export.parity_input((2, *net.input_shape))
  expected = jax.jit(export.reference_function(net))(x)
  actual = jax.jit(export.export_function(net))(x)
  scale = float(jnp.max(jnp.abs(expected)))
  np.testing.assert_allclose(actual, expected, rtol=0, atol=export.PARITY_TOLERANCE * scale)
  assert max_rank(jax.make_jaxpr(export.export_function(net))(x)) <= 4
  # The training graph is the one with the 6-D depth-to-space (the reason for the mode).
  assert max_rank(jax.make_jaxpr(export.reference_function(net))(x)) == 6


@pytest.mark.parametrize("name", list(FAMILIES))
def test_stablehlo_parity(name, tmp_path):
  net = network(name)
  path = str(tmp_path / f"{name}.stablehlo")
  record = export.export_network(net, "stablehlo", path, batch=2)
  assert os.path.getsize(path) > 0 and record["input_shape"] == [2, *net.input_shape]
  assert record["relative_error"] <= export.PARITY_TOLERANCE
  # Loadable on its own: deserialised, it is the network.
  x = export.parity_input((2, *net.input_shape))
  with open(path, "rb") as handle:
    exported = jax.export.deserialize(bytearray(handle.read()))
  np.testing.assert_allclose(exported.call(x), jax.jit(export.reference_function(net))(x),
                             atol=1e-5)


@pytest.mark.parametrize("name", RUNTIME_FAMILIES)
def test_tflite_parity_builtin_ops_only(name, tmp_path):
  require("tflite")
  net = network(name)
  record = export.export_network(net, "tflite", str(tmp_path / f"{name}.tflite"))
  assert record["relative_error"] <= export.PARITY_TOLERANCE, record
  assert record["max_rank"] <= 4
  assert "CONV_2D" in record["ops"]
  assert not [op for op in record["ops"] if op.startswith("Flex") or op in ("CUSTOM", "DELEGATE")]


def test_tflite_instance_norm_is_within_tolerance_of_float64(tmp_path):
  # TFLite's SUM adds one float32 at a time: instance norm's mean over a whole map in one SUM
  # was 1.6e-4 of the scale off here (and made OMGD resnet_s16's deep teacher 2.7e-4 off at
  # 256 px); the export graph's mean over W then H is ~7e-6 off.
  require("tflite")
  from gankd_jax.models.layers import instance_norm

  def forward(x):
    with export_graph():
      return instance_norm(x)
  rng = np.random.default_rng(0)
  x = (4.0 + 0.01 * rng.standard_normal((1, 64, 64, 4))).astype(np.float32)
  path = str(tmp_path / "norm.tflite")
  export.write_tflite(forward, x.shape, path)
  x64 = x.astype(np.float64)
  mean = x64.mean(axis=(1, 2), keepdims=True)
  exact = (x64 - mean) / np.sqrt(((x64 - mean) ** 2).mean(axis=(1, 2), keepdims=True) + 1e-5)
  error = np.max(np.abs(export.load_runner("tflite", path)(x) - exact)) / np.max(np.abs(exact))
  assert error < 3e-5, error


def test_parity_reference_is_float64():
  # The check measures each runtime against the float64 evaluation of the export graph, not the
  # float32 JAX model (whose own rounding grows with depth).
  net = network("mobile_deepest")
  x = export.parity_input((1, *net.input_shape))
  exact = export.float64_output(net, x)
  assert exact.dtype == np.float64 and jnp.zeros(()).dtype == jnp.float32  # x64 left off.
  model = np.asarray(jax.jit(export.reference_function(net))(x))
  scale = np.max(np.abs(exact))
  assert 0 < np.max(np.abs(model - exact)) / scale < export.PARITY_TOLERANCE


def test_tflite_quantized_student(tmp_path):
  # int8 here, float16 in test_command_quantized_student (each converts twice: fp32 and quantised).
  require("tflite")
  quantize = "int8"
  net = network("unet")
  record = export.export_quantized(net, str(tmp_path / "q.tflite"), quantize)
  # Smaller weights, still builtin ops only, close to the fp32 model but not bit-equal.
  assert record["bytes"] < 0.6 * record["fp32_bytes"], record
  assert 40.0 < record["psnr_db"] < float("inf"), record
  assert record["max_rank"] <= 4 and "CONV_2D" in record["ops"]
  assert not [op for op in record["ops"] if op.startswith("Flex") or op in ("CUSTOM", "DELEGATE")]
  assert set(record["latency_ms"]) == {"fp32", quantize}
  assert all(ms > 0 for ms in record["latency_ms"].values())


def test_quantize_bad_input_is_one_line():
  with pytest.raises(ValueError, match="--quantize applies to --format=tflite, not onnx"):
    export.check_quantize("onnx", "int8")
  with pytest.raises(ValueError, match="--quantize must be one of float16, int8, got 'int4'"):
    export.check_quantize("tflite", "int4")


@pytest.mark.parametrize("name", RUNTIME_FAMILIES)
def test_onnx_parity(name, tmp_path):
  require("onnx")
  net = network(name)
  record = export.export_network(net, "onnx", str(tmp_path / f"{name}.onnx"))
  assert record["relative_error"] <= export.PARITY_TOLERANCE, record
  assert record["max_rank"] <= 4 and "Conv" in record["ops"]


def test_missing_extra_is_one_line(monkeypatch):
  monkeypatch.setitem(export.FORMAT_MODULES, "onnx", ("no_such_module_gankd",))
  hint = re.escape(f"needs no_such_module_gankd: {export.EXTRA_HINT}")
  with pytest.raises(ValueError, match=hint):
    export.check_format("onnx")
  with pytest.raises(ValueError, match="--format must be one of"):
    export.check_format("coreml")


def test_unsupported_op_is_named():
  log = "loc(fused[\"XlaCallModule:\"]): error: 'tf.Erfinv' op is neither a custom op nor a flex op"
  assert "tf.Erfinv" in export.unsupported_op_message(log + "\nmore")


# ------------------------------------------------------------------------------ the command
@pytest.fixture(scope="module")
def run(tmp_path_factory):
  config = tiny_config(**{"num_train_steps": 1, "log_every": 1, "checkpoint_every": 1,
                          "num_devices": 1})
  workdir = str(tmp_path_factory.mktemp("export") / "run")
  train.train_and_evaluate(config, workdir)
  return workdir


def test_command_exports_student_and_benchmarks(run, tmp_path):
  output = str(tmp_path / "student.stablehlo")
  record = export.run_command(run, "student", "stablehlo", output, bench=True, iters=2)
  assert record["relative_error"] <= export.PARITY_TOLERANCE and os.path.isfile(output)
  rows = record["benchmark"]
  assert set(rows) == {"teacher_wide", "teacher_deep", "student"}
  assert all(min(row["latency_ms"].values()) > 0 and row["macs"] > 0 for row in rows.values())
  table = export.format_benchmark(rows, "stablehlo")
  assert "student vs teacher_wide: MACs ratio" in table


def test_command_quantized_student(run, tmp_path):
  require("tflite")
  output = str(tmp_path / "student.tflite")
  record = export.run_command(run, None, "tflite", output, quantize="float16")
  assert record["quantize"] == "float16" and os.path.isfile(output)
  assert record["psnr_db"] > 40.0 and record["bytes"] < record["fp32_bytes"], record
  with pytest.raises(ValueError, match="--benchmark times fp32 files"):
    export.run_command(run, None, "tflite", output, bench=True, quantize="int8")


def test_command_line_end_to_end_and_bad_role(run, tmp_path):
  output = str(tmp_path / "teacher.stablehlo")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  done = subprocess.run([sys.executable, "-m", "gankd_jax.export", f"--workdir={run}",
                         "--role=teacher_wide", "--format=stablehlo", f"--output={output}"],
                        cwd=REPO, env=env, capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr
  assert "max error" in done.stdout and os.path.isfile(output)
  bad = subprocess.run([sys.executable, "-m", "gankd_jax.export", f"--workdir={run}",
                        "--role=generator", "--format=stablehlo", f"--output={output}x"],
                       cwd=REPO, env=env, capture_output=True, text=True, check=False)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1] == (
      f"error: {run} has no 'generator' network (it has teacher_wide, teacher_deep, student, "
      "discriminator)")


# ------------------------------------------------------------------------------ StyleGAN2
def pickle_network(name, latent, **options):
  _, net = export.network_from_file(os.path.join(PICKLES, f"{name}.pkl"), latent=latent, **options)
  return net


@pytest.mark.parametrize("up,axis_shape", [(2, (2, 5, 7, 3)), (2, (1, 4, 4, 1)), (4, (1, 3, 6, 2))])
def test_fir_upsampling_export_form_equals_training_form(up, axis_shape):
  x = jax.random.normal(jax.random.key(0), axis_shape)
  expected = stylegan2.upsample2d(x, up)
  with export_graph():
    actual = stylegan2.upsample2d(x, up)
    assert max_rank(jax.make_jaxpr(lambda v: stylegan2.upsample2d(v, up))(x)) <= 4
  np.testing.assert_array_equal(actual, expected)


STYLEGAN2_CASES = [("uncond16", "z", {}), ("uncond16", "w", {}), ("arch16", "w", {}),
                   ("cond32", "z", {"class_index": 2, "truncation_psi": 0.7})]


@pytest.mark.parametrize("name,latent,options", STYLEGAN2_CASES)
def test_stylegan2_export_graph_equals_training_graph_without_tensors_above_4d(name, latent,
                                                                                options):
  net = pickle_network(name, latent, **options)
  x = export.parity_input((2, *net.input_shape))
  expected = jax.jit(export.reference_function(net))(x)
  actual = jax.jit(export.export_function(net))(x)
  scale = float(jnp.max(jnp.abs(expected)))
  np.testing.assert_allclose(actual, expected, rtol=0, atol=export.PARITY_TOLERANCE * scale)
  assert max_rank(jax.make_jaxpr(export.export_function(net))(x)) <= 4
  # The training graph interleaves FIR phases through 5-D stacks and the sub-pixel conv's 6-D
  # depth-to-space: the reason for the mode.
  assert max_rank(jax.make_jaxpr(export.reference_function(net))(x)) == 6


def test_stylegan2_z_export_is_the_generator_and_w_export_its_synthesis():
  module, variables = load_network(os.path.join(PICKLES, "cond32.pkl"))
  z = export.parity_input((2, module.z_dim))
  c = np.zeros((2, module.c_dim), np.float32)
  c[:, 1] = 1.0
  expected = module.apply(variables, z, c, noise_mode="const")
  net = pickle_network("cond32", "z", class_index=1)
  np.testing.assert_allclose(jax.jit(export.export_function(net))(z), expected, atol=1e-5)
  ws = module.apply(variables, z, c, method=lambda m, z, c: m.mapping(z, c))
  synthesis = pickle_network("cond32", "w")
  assert synthesis.input_shape == (module.num_ws, module.w_dim)
  np.testing.assert_allclose(jax.jit(export.export_function(synthesis))(ws), expected, atol=1e-5)


@pytest.mark.parametrize("fmt,name,latent,options", [
    ("stablehlo", "cond32", "z", {"class_index": 3}), ("tflite", "uncond16", "z", {}),
    ("tflite", "arch16", "w", {}), ("onnx", "uncond16", "z", {}), ("onnx", "arch16", "w", {})])
def test_stylegan2_parity_and_op_census(fmt, name, latent, options, tmp_path):
  require(fmt)
  net = pickle_network(name, latent, **options)
  record = export.export_network(net, fmt, str(tmp_path / f"{name}.{fmt}"), batch=1)
  assert record["relative_error"] <= export.PARITY_TOLERANCE, record
  if fmt == "tflite":
    assert record["max_rank"] <= 4 and "CONV_2D" in record["ops"]
    assert not [op for op in record["ops"] if op.startswith("Flex") or op in ("CUSTOM", "DELEGATE")]
  if fmt == "onnx":
    assert record["max_rank"] <= 4 and "Conv" in record["ops"]


# ------------------------------------------------------------------------------ --network
def test_network_pth_end_to_end_equals_the_imported_generator(tmp_path):
  path = os.path.join(PTH, "gancompression_mobile9_instance_module.pth")
  output = str(tmp_path / "teacher.stablehlo")
  record = export.run_command(None, None, "stablehlo", output, size=32, network=path)
  assert record["input_shape"] == [1, 32, 32, 3]
  assert record["relative_error"] <= export.PARITY_TOLERANCE
  x = export.parity_input((1, 32, 32, 3))
  with open(output, "rb") as handle:
    exported = jax.export.deserialize(bytearray(handle.read()))
  np.testing.assert_allclose(exported.call(x), generator_pth.load_generator(path).apply(x),
                             atol=1e-5)
  # --arch reaches the importer: one that does not fit the tensors is a one-line error.
  forced = str(tmp_path / "forced.stablehlo")
  with pytest.raises(ValueError, match=r"^[^\n]*conv_block[^\n]*$"):
    export.run_command(None, None, "stablehlo", forced, size=32, network=path,
                       arch="resnet_9blocks")
  assert not os.path.exists(forced)


def test_network_pth_onnx(tmp_path):
  require("onnx")
  path = os.path.join(PTH, "junyanz_resnet6_batch_dropout_legacy_module.pth")
  record = export.run_command(None, None, "onnx", str(tmp_path / "g.onnx"), size=32,
                              network=path)
  assert record["relative_error"] <= export.PARITY_TOLERANCE and record["max_rank"] <= 4


@pytest.mark.parametrize("kwargs,message", [
    ({"network": "/no/such.pth"}, "--network: no such file: /no/such.pth"),
    ({"network": os.path.join(FIXTURES, "fid_reference.npz")}, "is neither a StyleGAN2 network pickle"),
    ({"network": os.path.join(PTH, "omgd_unet256_batch.pth"), "size": 32},
     "--size=32: .* takes image sides that are multiples of 256"),
    ({"network": os.path.join(PTH, "omgd_unet256_batch.pth"), "role": "student"},
     "--role does not apply to"),
    ({"network": os.path.join(PICKLES, "uncond16.pkl"), "role": "D"},
     "--role for a StyleGAN2 network is one of G_ema, G, got 'D'"),
    ({"network": os.path.join(PICKLES, "uncond16.pkl"), "arch": "unet_256"},
     "--arch=unet_256 applies to .pth"),
    ({"network": os.path.join(PICKLES, "cond32.pkl")},
     r"conditional generator \(c_dim=4\) exported from z needs --class_index in 0..3"),
    ({"network": os.path.join(PICKLES, "cond32.pkl"), "class_index": 4},
     "--class_index must be in 0..3, got 4"),
    ({"network": os.path.join(PICKLES, "uncond16.pkl"), "latent": "x"}, "--latent must be one of"),
    ({"network": os.path.join(PICKLES, "uncond16.pkl"), "size": 64}, "--size applies to image"),
    ({}, "give exactly one of --workdir"),
    ({"arch": "unet_256", "workdir": "/tmp"}, "--arch applies to --network files"),
])
def test_network_bad_input_is_one_line(kwargs, message, tmp_path):
  kwargs = {"workdir": None, "role": None, **kwargs}
  output = str(tmp_path / "x.stablehlo")
  with pytest.raises(ValueError, match=message) as error:
    export.run_command(kwargs.pop("workdir"), kwargs.pop("role"), "stablehlo", output, **kwargs)
  assert "\n" not in str(error.value) and not os.path.exists(output)


def test_command_line_network_pickle_tflite(tmp_path):
  require("tflite")
  output = str(tmp_path / "synthesis.tflite")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  done = subprocess.run([sys.executable, "-m", "gankd_jax.export",
                         f"--network={os.path.join(PICKLES, 'uncond16.pkl')}", "--latent=w",
                         "--format=tflite", f"--output={output}"],
                        cwd=REPO, env=env, capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr
  assert "max error" in done.stdout and "max tensor rank 4" in done.stdout
  assert os.path.isfile(output)


def test_command_on_a_stylegan2_run(run, tmp_path_factory, tmp_path):
  workdir = str(tmp_path_factory.mktemp("export_sg2") / "run")
  train.train_and_evaluate(tiny_stylegan2_config(num_train_steps=1, checkpoint_every=1,
                                                 log_every=1), workdir)
  for latent, shape in (("z", [1, 8]), ("w", [1, 6, 8])):
    record = export.run_command(workdir, "generator", "stablehlo",
                                str(tmp_path / f"{latent}.stablehlo"), latent=latent)
    assert record["input_shape"] == shape
    assert record["relative_error"] <= export.PARITY_TOLERANCE
  with pytest.raises(ValueError, match=r"--latent=w applies to StyleGAN2 generators; .* is a "
                     r"OMGD\w* run"):
    export.run_command(run, "student", "stablehlo", str(tmp_path / "x.stablehlo"), latent="w")
