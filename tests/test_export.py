"""`gankd_jax.export`: the export graph mode and each format in its own runtime.

Tiny generators of each family (pix2pix U-Net and OMGD's deep U-Net, the mobile / plain / deep
ResNets, DCGAN) at 32 px (DCGAN 16 px): the export graph equals the training graph and has no
tensor above 4-D; each artifact run in its runtime (deserialised StableHLO, the TFLite
interpreter, onnxruntime) matches the JAX model within 1e-4 of the output scale; TFLite holds
builtin ops only. A format whose extra is not installed is skipped with the reason. The command
runs end to end on a one-step OMGD run.
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
from gankd_jax.methods.common import inference_network
from gankd_jax.models.dcgan import DCGANGenerator
from gankd_jax.models.resnet import (MobileResnetDeepestGenerator, MobileResnetGenerator,
                                     ResnetGenerator)
from gankd_jax.models.unet import UnetDeepestGenerator, UnetGenerator

sys.path.insert(0, os.path.dirname(__file__))
from test_train import REPO, tiny_config  # noqa: E402

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
