"""Deploy a trained generator: `python -m gankd_jax.export --workdir=DIR --format=... --output=FILE`.

  python -m gankd_jax.export --workdir=DIR [--role=student] --format=stablehlo|tflite|onnx
                             --output=FILE [--size=0] [--batch=1] [--benchmark]
  python -m gankd_jax.export --network=FILE [--arch=...] [--role=G_ema] --format=... --output=...
  python -m gankd_jax.export --workdir=DIR --format=tflite --quantize=float16|int8 --output=FILE

Restores DIR's latest checkpoint (`runs.restore_run`), takes the network of `--role` (any role
of `method.networks`: a student, a teacher, a DCGAN, a StyleGAN2 generator) or, with
`--network`, an imported teacher without a run: a PyTorch pix2pix / CycleGAN / gan-compression
/ OMGD generator `.pth` (weights/generator_pth.py; `--arch` where its tensors do not tell the
architecture; input `--size`, default 256) or a StyleGAN2-ADA network pickle `.pkl`
(weights/network_pickle.py; G_ema or G). A StyleGAN2 generator is exported with its noise fixed
(noise_mode "const") either from z (`--latent=z`: mapping + synthesis, `--truncation_psi`, a
conditional generator's class baked in by `--class_index`) or from ws [N, num_ws, w_dim]
(`--latent=w`: synthesis alone, for a fixed w per layer). The network is written, weights baked
in, as
  stablehlo  a `jax.export` serialisation (load with `jax.export.deserialize(...).call(x)`);
  tflite     jax2tf (native serialisation) -> SavedModel -> the TFLite converter with builtin
             ops only: a model that would need a Flex (TensorFlow) op is a one-line error;
  onnx       an ONNX graph (jax2onnx), run with onnxruntime.
The network is traced in the layers' export graph mode (`layers.export_graph`): plain
convolutions, instance norm by mean / variance, no tensor above 4-D, the same outputs.

After writing, the command runs the artifact in its own runtime (deserialised StableHLO, the
TFLite interpreter, onnxruntime) on a fixed input and compares it with the exact output, the
same network evaluated in float64: the max error over the output scale (max |y|) must be <= 1e-4
(fp32), else the file is removed and the command fails. The JAX model's own float32 error is
printed beside it (a deep teacher's is ~3e-4: float32 rounding, not the export). `--benchmark`
then times batch-1 inference of every generator role of the run in that runtime (1 and 2 threads, median after warm-up) next to its parameters and MACs.

`--quantize` (TFLite): post-training quantisation, float16 weights or int8 weights (dynamic
range: activations stay float, so no representative data). The 1e-4 check does not apply; the
command prints the PSNR of the quantised file's output against the fp32 JAX model on the parity
input (images in [-1, 1]), both files' sizes and their median latency at 1 thread.

The heavy converters are optional extras (`pip install .[export]`): the ONNX route needs onnx,
onnxruntime and jax2onnx; StableHLO and TFLite need only jax and tensorflow-cpu (core).
Bad input (no such role, a format whose extra is missing, an unsupported op) is one line and exit
status 2.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any, Callable

import numpy as np

FORMATS = ("stablehlo", "tflite", "onnx")
# Modules each format's converter and runtime need, beyond the core install.
FORMAT_MODULES = {"stablehlo": (), "tflite": (), "onnx": ("onnx", "onnxruntime", "jax2onnx")}
EXTRA_HINT = "pip install --no-deps -r requirements-export.txt (the pins of pip install .[export])"
PARITY_TOLERANCE = 1e-4  # Max error over the output scale, fp32.
MAX_RANK = 4  # Tensor rank every deployment runtime and delegate takes.
PARITY_SEED = 0
LATENTS = ("z", "w")  # StyleGAN2 inputs: mapping + synthesis, or synthesis alone.
PICKLE_ROLES = ("G_ema", "G")
# TFLite post-training quantisation: float16 weights, or int8 weights (dynamic range: the
# activations stay float, so no representative data is needed).
QUANTIZE = ("float16", "int8")
QUANTIZE_ITERS = 5  # Timed calls of the fp32 and the quantised file (median reported).


def missing_modules(fmt: str) -> list[str]:
  """The modules `fmt` needs that are not installed."""
  return [name for name in FORMAT_MODULES[fmt] if importlib.util.find_spec(name) is None]


def check_format(fmt: str) -> None:
  """One-line ValueError for an unknown format or one whose extra is not installed."""
  if fmt not in FORMATS:
    raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
  missing = missing_modules(fmt)
  if missing:
    raise ValueError(f"--format={fmt} needs {', '.join(missing)}: {EXTRA_HINT}")


# --------------------------------------------------------------------------------- the graph
def example_shape(network, size: int = 0, batch: int = 1) -> tuple[int, ...]:
  """The exported input shape: batch, then the network's example shape with image sides set to
  `size` (0: the run's own); a latent input (e.g. DCGAN's z) keeps its shape."""
  if batch < 1:
    raise ValueError(f"--batch must be >= 1, got {batch}")
  shape = tuple(network.input_shape)
  if size and len(shape) == 3:
    shape = (size, size, shape[2])
  elif size:
    raise ValueError(f"--size applies to image inputs; this network takes {shape}")
  return (batch, *shape)


def export_function(network, dtype=None) -> Callable[[Any], Any]:
  """x -> the network's output (the first, for a tuple), traced in the export graph mode with
  its variables as constants (floating ones cast to `dtype` when given)."""
  import jax
  from gankd_jax.models.layers import export_graph
  variables = jax.device_get(network.variables)
  if dtype is not None:
    variables = jax.tree_util.tree_map(
        lambda v: np.asarray(v, dtype) if np.issubdtype(np.asarray(v).dtype, np.floating) else v,
        variables)

  def forward(x):
    with export_graph():
      out = network.apply_fn(variables, x)
    return out[0] if isinstance(out, (tuple, list)) else out

  return forward


def first_output(out):
  """A generator's image (networks that also return features give a tuple)."""
  return out[0] if isinstance(out, (tuple, list)) else out


def reference_function(network) -> Callable[[Any], Any]:
  """The same network in its training graph (the routes the layers pick for speed)."""
  import jax
  variables = jax.device_get(network.variables)
  return lambda x: first_output(network.apply_fn(variables, x))


def float64_output(network, x) -> np.ndarray:
  """The exact output the parity check measures against: the export graph evaluated in float64
  (weights and input widened; jax x64 for this call only). A float32 model is not exact either:
  the JAX training graph of a deep randomly initialised teacher (OMGD resnet_s16's deep one at
  256 px) is itself 3e-4 of the output scale off float64 (its norms take E[x^2] - mean^2), so
  a float32 reference would charge its rounding to the runtime."""
  import jax
  with jax.enable_x64(True):
    return np.asarray(jax.jit(export_function(network, np.float64))(np.asarray(x, np.float64)))


def parity_input(shape) -> np.ndarray:
  """A fixed input in the range generators see (images in [-1, 1], latents ~ N(0, 1))."""
  rng = np.random.default_rng(PARITY_SEED)
  x = rng.standard_normal(shape).astype(np.float32)
  return np.clip(x, -1.0, 1.0) if len(shape) == 4 else x


# --------------------------------------------------------------------------------- writers
def write_stablehlo(forward, shape, path: str) -> None:
  import jax
  import jax.numpy as jnp
  exported = jax.export.export(jax.jit(forward))(jax.ShapeDtypeStruct(shape, jnp.float32))
  _write_bytes(path, exported.serialize())


def _tf_quiet():
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import tensorflow as tf
  return tf


def check_quantize(fmt: str, quantize: str | None) -> None:
  if quantize and quantize not in QUANTIZE:
    raise ValueError(f"--quantize must be one of {', '.join(QUANTIZE)}, got '{quantize}'")
  if quantize and fmt != "tflite":
    raise ValueError(f"--quantize applies to --format=tflite, not {fmt}")


def tflite_bytes(forward, shape, quantize: str | None = None) -> bytes:
  """jax2tf (native serialisation) -> SavedModel -> TFLite flatbuffer, builtin ops only;
  `quantize` float16 / int8: post-training quantisation of the weights."""
  tf = _tf_quiet()
  from jax.experimental import jax2tf
  function = tf.function(jax2tf.convert(forward, with_gradient=False), autograph=False,
                         input_signature=[tf.TensorSpec(shape, tf.float32, name="x")])
  module = tf.Module()
  module.forward = function
  with tempfile.TemporaryDirectory() as saved:
    tf.saved_model.save(module, saved, signatures=function.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_saved_model(saved)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize:
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
      converter.target_spec.supported_types = [tf.float16]
    try:
      with _captured_stderr() as log:
        return converter.convert()
    except Exception as error:  # pylint: disable=broad-except
      raise ValueError(f"tflite: {unsupported_op_message(str(error) + log.getvalue())}") from None


def unsupported_op_message(log: str) -> str:
  """One line naming the op (and where the converter says, the layer) TFLite cannot run."""
  for line in log.splitlines():
    line = line.strip()
    if "failed to legalize" in line or "not supported" in line.lower() or "Flex" in line:
      return f"unsupported op (builtin ops only, no Flex): {line[:300]}"
  first = next((line.strip() for line in log.splitlines() if line.strip()), "conversion failed")
  return f"conversion failed: {first[:300]}"


@contextlib.contextmanager
def _captured_stderr():
  buffer = io.StringIO()
  with contextlib.redirect_stderr(buffer):
    yield buffer


def write_tflite(forward, shape, path: str, quantize: str | None = None) -> None:
  _write_bytes(path, tflite_bytes(forward, shape, quantize))


def write_onnx(forward, shape, path: str) -> None:
  import logging
  # jax2onnx imports its example plugins too; those that need packages we do not install
  # (equinox, dm-pix) log a traceback each, which is noise here.
  logging.getLogger("jax2onnx").setLevel(logging.CRITICAL)
  import jax2onnx
  model = jax2onnx.to_onnx(forward, [tuple(shape)], model_name="generator")
  _write_bytes(path, model.SerializeToString())


WRITERS = {"stablehlo": write_stablehlo, "tflite": write_tflite, "onnx": write_onnx}


def _write_bytes(path: str, content: bytes) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "wb") as handle:
    handle.write(content)
  os.replace(tmp, path)


# --------------------------------------------------------------------------------- runtimes
def tflite_interpreter(path: str, threads: int | None = None, *, census: bool = False):
  """The LiteRT interpreter (ai_edge_litert when installed, else tf.lite's). `census`: without
  the default XNNPACK delegate, so every op stays visible."""
  if importlib.util.find_spec("ai_edge_litert") is not None:
    from ai_edge_litert import interpreter as litert  # pylint: disable=import-error
    interpreter_cls, resolver = litert.Interpreter, litert.OpResolverType
  else:
    tf = _tf_quiet()
    interpreter_cls, resolver = tf.lite.Interpreter, tf.lite.experimental.OpResolverType
  kwargs = {"num_threads": threads} if threads else {}
  if census:
    kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice.
    interpreter = interpreter_cls(model_path=path, **kwargs)
  interpreter.allocate_tensors()
  return interpreter


def load_runner(fmt: str, path: str, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
  """x -> y with the artifact at `path` in its own runtime."""
  if fmt == "stablehlo":
    import jax
    with open(path, "rb") as handle:
      exported = jax.export.deserialize(bytearray(handle.read()))
    call = jax.jit(exported.call)
    return lambda x: np.asarray(call(x))
  if fmt == "tflite":
    interpreter = tflite_interpreter(path, threads)
    source = interpreter.get_input_details()[0]["index"]
    target = interpreter.get_output_details()[0]["index"]

    def run_tflite(x):
      interpreter.set_tensor(source, np.asarray(x, np.float32))
      interpreter.invoke()
      return interpreter.get_tensor(target)
    return run_tflite
  import onnxruntime
  options = onnxruntime.SessionOptions()
  if threads:
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
  session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
  name = session.get_inputs()[0].name
  return lambda x: session.run(None, {name: np.asarray(x, np.float32)})[0]


def op_census(fmt: str, path: str) -> dict[str, Any]:
  """The ops of an artifact and its largest tensor rank (TFLite / ONNX)."""
  if fmt == "tflite":
    interpreter = tflite_interpreter(path, census=True)
    ops = sorted({op["op_name"] for op in interpreter._get_ops_details()})  # pylint: disable=protected-access
    rank = max(len(t["shape"]) for t in interpreter.get_tensor_details())
    return {"ops": ops, "max_rank": rank}
  if fmt == "onnx":
    import onnx
    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    values = [*model.graph.value_info, *model.graph.input, *model.graph.output]
    rank = max(len(v.type.tensor_type.shape.dim) for v in values)
    rank = max([rank] + [len(init.dims) for init in model.graph.initializer])
    return {"ops": sorted({node.op_type for node in model.graph.node}), "max_rank": rank}
  return {}


# --------------------------------------------------------------------------------- export
def psnr(actual, reference, peak_to_peak: float = 2.0) -> float:
  """PSNR in dB of `actual` against `reference` for images in [-1, 1] (a range of 2)."""
  mse = float(np.mean((np.asarray(actual, np.float64) - np.asarray(reference, np.float64)) ** 2))
  return float("inf") if mse == 0 else float(10.0 * np.log10(peak_to_peak ** 2 / mse))


def export_quantized(network, output: str, quantize: str, *, size: int = 0,
                     batch: int = 1) -> dict[str, Any]:
  """Writes `network` as a `quantize`d TFLite file and returns its record: the PSNR of its
  output against the fp32 model's on the parity input, file sizes and the median latency (1
  thread) of the quantised and the fp32 TFLite file. A tensor above 4-D removes the file."""
  import jax
  check_quantize("tflite", quantize)
  shape = example_shape(network, size, batch)
  forward = export_function(network)
  write_tflite(forward, shape, output, quantize)
  x = parity_input(shape)
  model = np.asarray(jax.jit(reference_function(network))(x))
  run = load_runner("tflite", output, 1)
  record = {"format": "tflite", "quantize": quantize, "output": output, "input_shape": list(shape),
            "psnr_db": psnr(np.reshape(run(x), model.shape), model),
            "bytes": os.path.getsize(output), **op_census("tflite", output)}
  if record["max_rank"] > MAX_RANK:
    os.remove(output)
    raise ValueError(f"tflite graph has a tensor of rank {record['max_rank']} "
                     f"(deployment needs <= {MAX_RANK})")
  with tempfile.TemporaryDirectory() as tmp:
    fp32 = os.path.join(tmp, "fp32.tflite")
    write_tflite(forward, shape, fp32)
    record["fp32_bytes"] = os.path.getsize(fp32)
    record["latency_ms"] = {
        "fp32": time_runner(load_runner("tflite", fp32, 1), x, iters=QUANTIZE_ITERS),
        quantize: time_runner(run, x, iters=QUANTIZE_ITERS)}
  return record


def export_network(network, fmt: str, output: str, *, size: int = 0, batch: int = 1,
                   tolerance: float = PARITY_TOLERANCE) -> dict[str, Any]:
  """Writes `network` as `fmt` to `output`, checks it in its runtime and returns a record:
  the input shape, max error against the float64 evaluation (`float64_output`), output scale,
  the same error of the JAX model in float32 and the runtime's difference from it, and the op
  census (TFLite / ONNX). An error above `tolerance` of the output scale or a tensor above 4-D
  removes the file and raises a one-line ValueError."""
  import jax
  check_format(fmt)
  shape = example_shape(network, size, batch)
  forward = export_function(network)
  WRITERS[fmt](forward, shape, output)
  x = parity_input(shape)
  exact = float64_output(network, x)
  model = np.asarray(jax.jit(reference_function(network))(x), np.float64)
  actual = np.asarray(load_runner(fmt, output)(x), np.float64).reshape(exact.shape)
  scale = float(np.max(np.abs(exact))) or 1.0
  error = float(np.max(np.abs(actual - exact)))
  jax_error = float(np.max(np.abs(model - exact)))
  record = {"format": fmt, "output": output, "input_shape": list(shape),
            "max_error": error, "output_scale": scale, "relative_error": error / scale,
            "jax_relative_error": jax_error / scale,
            "vs_jax_relative_error": float(np.max(np.abs(actual - model))) / scale,
            **op_census(fmt, output)}
  problem = None
  if record["relative_error"] > tolerance:
    problem = (f"{fmt} output differs from the float64 evaluation by {error:.3g} (scale "
               f"{scale:.3g}; tolerance {tolerance:g} of the scale; the JAX model in float32: "
               f"{jax_error / scale:.3g})")
  elif record.get("max_rank", 0) > MAX_RANK:
    problem = f"{fmt} graph has a tensor of rank {record['max_rank']} (deployment needs <= {MAX_RANK})"
  if problem:
    os.remove(output)
    raise ValueError(problem)
  return record


def select_network(networks: dict, role: str, workdir: str):
  if role not in networks:
    raise ValueError(f"{workdir} has no '{role}' network (it has {', '.join(networks)})")
  return networks[role]


# --------------------------------------------------------------------------------- benchmark
def time_runner(run, x, *, warmup: int = 3, iters: int = 20) -> float:
  """Median milliseconds of `run(x)` after `warmup` calls."""
  for _ in range(warmup):
    run(x)
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    run(x)
    times.append((time.perf_counter() - start) * 1000.0)
  return statistics.median(times)


def benchmark(networks: dict, roles, fmt: str, *, size: int = 0, threads=(1, 2),
              iters: int = 20, directory: str | None = None) -> dict[str, dict[str, Any]]:
  """Per role: params, MACs and batch-1 latency (ms) of the `fmt` artifact at each thread count.

  The JAX latency itself is `gankd_jax.evaluate`'s; here every runtime runs its own file.
  """
  import jax
  import jax.numpy as jnp
  from gankd_jax import stats
  if fmt == "stablehlo":
    threads = (0,)  # XLA:CPU's own thread pool: 0 stands for its default.
  rows = {}
  with tempfile.TemporaryDirectory(dir=directory) as tmp:
    for role in roles:
      net = networks[role]
      shape = example_shape(net, size, 1)
      macs = stats.count_macs(net.apply_fn, net.variables, jax.ShapeDtypeStruct(shape, jnp.float32))
      path = os.path.join(tmp, f"{role}.{fmt}")
      export_network(net, fmt, path, size=size, batch=1)
      x = parity_input(shape)
      latency = {n: time_runner(load_runner(fmt, path, n), x, iters=iters) for n in threads}
      rows[role] = {"params": stats.count_params(net.variables["params"]), "macs": macs,
                    "latency_ms": latency}
  return rows


def format_benchmark(rows: dict, fmt: str, student: str = "student") -> str:
  """A table: params, MACs, latency per thread count, and for the student the measured
  speed-up over each other role next to the MACs ratio."""
  threads = sorted(next(iter(rows.values()))["latency_ms"])
  label = {n: f"{n}T" if n else "xla" for n in threads}
  from gankd_jax.cli import text_table
  lines = text_table(
      [["role", "params (M)", "MACs (G)", *(f"{fmt} {label[n]} ms" for n in threads)]]
      + [[role, f"{row['params'] / 1e6:.3f}", f"{row['macs'] / 1e9:.3f}",
          *(f"{row['latency_ms'][n]:.2f}" for n in threads)] for role, row in rows.items()])
  if student in rows:
    s = rows[student]
    for role, row in rows.items():
      if role == student:
        continue
      speed = ", ".join(f"{row['latency_ms'][n] / s['latency_ms'][n]:.2f}x ({label[n]})"
                        for n in threads)
      lines.append(f"{student} vs {role}: MACs ratio {row['macs'] / max(s['macs'], 1):.2f}x, "
                   f"measured speed-up {speed}")
  return "\n".join(lines)


# --------------------------------------------------------------------------------- sources
def stylegan2_network(module, variables, latent: str = "z", class_index: int | None = None,
                      truncation_psi: float = 1.0):
  """A StyleGAN2 `Generator` as a one-input Network with the noise fixed (noise_mode "const"):
  latent "z" maps z [N, z_dim] (and, for a conditional generator, the baked-in one-hot class
  `class_index`) through mapping and synthesis; latent "w" runs synthesis alone from
  ws [N, num_ws, w_dim] (a fixed w per layer, e.g. from a projection or a style mix)."""
  import jax.numpy as jnp
  from gankd_jax.methods.base import Network
  if latent not in LATENTS:
    raise ValueError(f"--latent must be one of {', '.join(LATENTS)}, got '{latent}'")
  if latent == "w":
    def synthesis(variables, ws):
      return module.apply(variables, ws, noise_mode="const",
                          method=lambda m, ws, noise_mode: m.synthesis(ws, noise_mode=noise_mode))
    return Network(synthesis, variables, (module.num_ws, module.w_dim))
  if module.c_dim and class_index is None:
    raise ValueError(f"a conditional generator (c_dim={module.c_dim}) exported from z needs "
                     f"--class_index in 0..{module.c_dim - 1} (or --latent=w)")
  if module.c_dim and not 0 <= class_index < module.c_dim:
    raise ValueError(f"--class_index must be in 0..{module.c_dim - 1}, got {class_index}")

  label = np.zeros((1, module.c_dim), np.float32)  # A constant (no scatter in the graph).
  if module.c_dim:
    label[0, class_index] = 1.0

  def generate(variables, z):
    c = jnp.broadcast_to(jnp.asarray(label), (z.shape[0], module.c_dim))
    return module.apply(variables, z, c, truncation_psi=truncation_psi, noise_mode="const")
  return Network(generate, variables, (module.z_dim,))


def network_from_file(path: str, *, role: str | None = None, arch: str | None = None,
                      size: int = 0, **stylegan2_options):
  """(label, Network) of an imported teacher: a PyTorch pix2pix / CycleGAN / gan-compression /
  OMGD generator `.pth` / `.pt` (architecture read from its tensors, or forced by `arch`;
  input `size`, default 256) or a StyleGAN2-ADA network pickle `.pkl` (`role` G_ema or G; a
  torch.save state dict of a StyleGAN2 G with `arch="stylegan2"`)."""
  from gankd_jax.methods.common import inference_network
  if not os.path.isfile(path):
    raise ValueError(f"--network: no such file: {path}")
  ext = os.path.splitext(path)[1].lower()
  if ext not in (".pkl", ".pth", ".pt"):
    raise ValueError(f"--network: {path} is neither a StyleGAN2 network pickle (.pkl) nor a "
                     "PyTorch generator checkpoint (.pth / .pt)")
  if ext == ".pkl" or arch == "stylegan2":
    from gankd_jax.weights.network_pickle import load_network
    role = role or "G_ema"
    if role not in PICKLE_ROLES:
      raise ValueError(f"--role for a StyleGAN2 network is one of {', '.join(PICKLE_ROLES)}, "
                       f"got '{role}'")
    if arch not in (None, "stylegan2"):
      raise ValueError(f"--arch={arch} applies to .pth / .pt generators (a .pkl describes itself)")
    module, variables = load_network(path, role)
    return role, stylegan2_network(module, variables, **stylegan2_options)
  if role is not None:
    raise ValueError(f"--role does not apply to {path}: a generator checkpoint holds one network")
  from gankd_jax.weights.generator_pth import load_generator
  imported = load_generator(path, arch)
  spec = imported.spec
  size = size or 256
  multiple = 2 ** spec.num_downs if spec.family == "unet" else 4
  if size % multiple:
    raise ValueError(f"--size={size}: {path} ({spec.describe()}) takes image sides that are "
                     f"multiples of {multiple}")
  return "generator", inference_network(imported.module, imported.variables,
                                        (size, size, spec.input_nc))


def networks_from_run(workdir: str, role: str | None, latent: str = "z", **stylegan2_options):
  """(networks to export / time by role, the role to export, the roles to benchmark) of a run.
  A StyleGAN2 run's generator with latent "w" is its synthesis network (G_ema)."""
  from gankd_jax import runs
  from gankd_jax.models import stylegan2
  if not workdir or not os.path.isdir(workdir):
    raise ValueError(f"--workdir: no such run directory: {workdir}")
  restored = runs.restore_run(workdir)
  networks = restored.method.networks(restored.state, restored.frozen)
  role = role or ("student" if "student" in networks else restored.method.generator_roles[0])
  select_network(networks, role, workdir)
  generator = getattr(restored.method, "generator", None)
  if isinstance(generator, stylegan2.Generator):
    for name in restored.method.generator_roles:
      networks[name] = stylegan2_network(generator, networks[name].variables, latent,
                                         **stylegan2_options)
  elif latent != "z":
    raise ValueError(f"--latent={latent} applies to StyleGAN2 generators; {workdir} is a "
                     f"{type(restored.method).__name__} run")
  return networks, role, restored.method.generator_roles


# --------------------------------------------------------------------------------- command
def define_flags():
  from absl import flags
  flags.DEFINE_string("workdir", None, "Run directory (holds config.json and checkpoints/).")
  flags.DEFINE_string("network", None, "Instead of --workdir: an imported teacher, a PyTorch "
                      "generator .pth / .pt or a StyleGAN2-ADA network pickle .pkl.")
  flags.DEFINE_string("arch", None, "Architecture of a --network .pth where its tensors do not "
                      "tell (weights/generator_pth.py parse_arch, e.g. resnet_9blocks,ngf=64); "
                      "'stylegan2' for a torch.save state dict of a StyleGAN2 G.")
  flags.DEFINE_string("role", None, "Network role to export: any role of the run (default "
                      "student, else its first generator); G_ema (default) or G of a pickle.")
  flags.DEFINE_string("format", None, f"One of {', '.join(FORMATS)}.")
  flags.DEFINE_string("output", None, "File to write.")
  flags.DEFINE_integer("size", 0, "Image side of the exported input; 0: the run's (256 for a "
                       "--network .pth).")
  flags.DEFINE_integer("batch", 1, "Batch of the exported input.")
  flags.DEFINE_string("latent", "z", "StyleGAN2: z (mapping + synthesis) or w (synthesis from "
                      "ws [N, num_ws, w_dim]).")
  flags.DEFINE_integer("class_index", None, "StyleGAN2 conditional generator from z: the class "
                       "baked in.")
  flags.DEFINE_float("truncation_psi", 1.0, "StyleGAN2 from z: truncation towards w_avg.")
  flags.DEFINE_string("quantize", None, "TFLite post-training quantisation: float16 (weights) "
                      "or int8 (dynamic-range weights); prints the PSNR against the fp32 model "
                      "and both files' latency.")
  flags.DEFINE_bool("benchmark", False, "Also time batch-1 inference of every generator role "
                    "in this format's runtime (1 and 2 threads).")


def run_command(workdir: str | None, role: str | None, fmt: str, output: str, size: int = 0,
                batch: int = 1, bench: bool = False, iters: int = 20, *,
                network: str | None = None, arch: str | None = None, latent: str = "z",
                class_index: int | None = None, truncation_psi: float = 1.0,
                quantize: str | None = None) -> dict[str, Any]:
  """The command's work, for tests: returns the export record (and the benchmark rows)."""
  check_format(fmt)
  check_quantize(fmt, quantize)
  if quantize and bench:
    raise ValueError("--benchmark times fp32 files; --quantize times its own file")
  if bool(workdir) == bool(network):
    raise ValueError("give exactly one of --workdir (a run) and --network (an imported file)")
  if arch and not network:
    raise ValueError("--arch applies to --network files")
  options = {"latent": latent, "class_index": class_index, "truncation_psi": truncation_psi}
  if network:
    role, net = network_from_file(network, role=role, arch=arch, size=size, **options)
    networks, roles = {role: net}, (role,)
  else:
    networks, role, roles = networks_from_run(workdir, role, **options)
  if quantize:
    return export_quantized(networks[role], output, quantize, size=size, batch=batch)
  record = export_network(networks[role], fmt, output, size=size, batch=batch)
  if bench:
    record["benchmark"] = benchmark(networks, roles, fmt, size=size, iters=iters)
  return record


def main(argv):
  from absl import flags, logging
  from gankd_jax.cli import fail
  config = flags.FLAGS
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  for name in ("format", "output"):
    if not config[name].value:
      fail(f"--{name} is required")
  if not config.verbose:
    logging.set_verbosity(logging.ERROR)
  try:
    record = run_command(config.workdir, config.role, config.format, config.output,
                         config.size, config.batch, config.benchmark, network=config.network,
                         arch=config.arch, latent=config.latent, class_index=config.class_index,
                         truncation_psi=config.truncation_psi, quantize=config.quantize)
  except ValueError as error:
    fail(str(error))
  if "quantize" in record:
    latency = record["latency_ms"]
    print(f"wrote {record['output']} (tflite, {record['quantize']}, input "
          f"{tuple(record['input_shape'])}, {record['bytes'] / 1e6:.3g} MB vs fp32 "
          f"{record['fp32_bytes'] / 1e6:.3g} MB); PSNR against the fp32 model "
          f"{record['psnr_db']:.2f} dB; latency (1 thread) {latency[record['quantize']]:.2f} ms "
          f"vs fp32 {latency['fp32']:.2f} ms")
    print(f"ops: {' '.join(record['ops'])}; max tensor rank {record['max_rank']}")
    return
  print(f"wrote {record['output']} ({record['format']}, input {tuple(record['input_shape'])}); "
        f"max error against float64 {record['max_error']:.3g} = {record['relative_error']:.3g} "
        f"of the output scale {record['output_scale']:.3g} (the JAX model in float32: "
        f"{record['jax_relative_error']:.3g}; {record['format']} vs JAX float32: "
        f"{record['vs_jax_relative_error']:.3g})")
  if "ops" in record:
    print(f"ops: {' '.join(record['ops'])}; max tensor rank {record['max_rank']}")
  if "benchmark" in record:
    print(format_benchmark(record["benchmark"], record["format"]))


if __name__ == "__main__":
  from absl import app
  from gankd_jax.cli import parse_flags
  define_flags()
  app.run(main, flags_parser=parse_flags)
  sys.exit(0)
