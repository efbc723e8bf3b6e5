"""Measured deploy speed of an OMGD config's generators: batch-1 latency in each runtime.

  python benchmarks/deploy.py --config=configs/omgd.py:unet_s16 [--size=256]
                              [--formats=jax,tflite,onnx] [--threads=1,2] [--iters=10]
                              [--roles=...] [--json=FILE]

Builds every generator role of the config (randomly initialised: latency does not depend on the
weights, so no run is needed). Row by row (one role at a time, its runtimes back to back, so a
row's numbers share the machine's load of that moment) it
  - times the JAX model itself (the inference path, gankd_jax/inference.py) on XLA:CPU: XLA sizes its
    thread pool at start-up, so "1 thread" pins every thread of this process to one core for
    that measurement (`pinned_to`) and "2 threads" lets it use two;
  - exports the network in the export graph mode to each other format (gankd_jax/export.py, with
    its parity check) and times the file in its own runtime (TFLite interpreter, onnxruntime,
    deserialised StableHLO) at each thread count;
median milliseconds after warm-up. Prints (and with --json writes) params, MACs (as the papers
count them), latency per runtime and thread count, and the student's measured speed-up over
each teacher next to the MACs ratio. For a trained run use
`python -m gankd_jax.export --workdir=DIR --format=F --output=FILE --benchmark`.
"""

import contextlib
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from gankd_jax.cli import fail, parse_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/omgd.py:unet_s16", "Config (optionally :VARIANT).")
flags.DEFINE_integer("size", 0, "Image side; 0: the config's crop size.")
flags.DEFINE_list("formats", ["jax", "tflite", "onnx"],
                  "Runtimes to time: jax (the model itself) and any export format.")
flags.DEFINE_list("threads", ["1", "2"], "Thread counts to time each runtime at.")
flags.DEFINE_list("roles", [], "Generator roles to time (default: all, teachers first).")
flags.DEFINE_integer("iters", 10, "Timed calls per runtime and thread count (median reported).")
flags.DEFINE_integer("warmup", 3, "Untimed calls first.")
flags.DEFINE_string("json", None, "Also write the rows here.")
flags.DEFINE_float("tolerance", 1e-4, "Parity check of each exported file: max error over the "
                   "output scale, against the same network evaluated in float64.")

LABELS = {"jax": "JAX", "stablehlo": "StableHLO", "tflite": "TFLite", "onnx": "ONNX Runtime"}


@contextlib.contextmanager
def pinned_to(cpus: int):
  """Every thread of this process (XLA's pool included) on the first `cpus` cores."""
  allowed = sorted(os.sched_getaffinity(0))
  mask = set(allowed[:cpus])

  def pin(cores):
    for task in os.listdir("/proc/self/task"):
      with contextlib.suppress(OSError):  # A thread that ended meanwhile.
        os.sched_setaffinity(int(task), cores)

  pin(mask)
  try:
    yield
  finally:
    pin(set(allowed))


def time_row(net, formats, threads, size: int, directory: str, errors: dict) -> dict:
  """latency_ms[format][threads] of one network, every runtime back to back; each file's
  parity error against float64 (over the output scale) goes to errors[format], the JAX
  model's own float32 error to errors["jax_float32"]."""
  from gankd_jax import export
  from gankd_jax.inference import compile_inference
  shape = export.example_shape(net, size, 1)
  x = export.parity_input(shape)
  latency = {}
  for fmt in formats:
    if fmt == "jax":
      run = compile_inference(lambda variables, v: export.first_output(net.apply_fn(variables, v)),
                              net.variables)
      latency[fmt] = {}
      for n in threads:
        with pinned_to(n):
          latency[fmt][n] = export.time_runner(lambda v: run(v).block_until_ready(), x,
                                               warmup=FLAGS.warmup, iters=FLAGS.iters)
      continue
    path = os.path.join(directory, f"net.{fmt}")
    record = export.export_network(net, fmt, path, size=size, batch=1, tolerance=FLAGS.tolerance)
    errors[fmt] = record["relative_error"]
    errors["jax_float32"] = record["jax_relative_error"]
    latency[fmt] = {}
    for n in threads:
      # XLA:CPU (StableHLO) takes no thread count: pinned like the JAX model.
      with pinned_to(n) if fmt == "stablehlo" else contextlib.nullcontext():
        runner = export.load_runner(fmt, path, None if fmt == "stablehlo" else n)
        latency[fmt][n] = export.time_runner(runner, x, warmup=FLAGS.warmup, iters=FLAGS.iters)
    os.remove(path)
  return latency


def format_table(rows: dict, formats, threads, student: str = "student") -> str:
  """Markdown: params, MACs, latency per runtime and threads; then the student's speed-ups."""
  columns = [(fmt, n) for fmt in formats for n in threads]
  lines = ["| role | params (M) | MACs (G) | " + " | ".join(
      f"{LABELS.get(fmt, fmt)} {n}T ms" for fmt, n in columns) + " |",
      "|---|---|---|" + "---|" * len(columns)]
  for role, row in rows.items():
    lines.append(f"| {role} | {row['params'] / 1e6:.3f} | {row['macs'] / 1e9:.3f} | " + " | ".join(
        f"{row['latency_ms'][fmt][n]:.1f}" for fmt, n in columns) + " |")
  if student in rows:
    s = rows[student]
    lines.append("")
    for role, row in rows.items():
      if role == student:
        continue
      speed = ", ".join(f"{LABELS.get(fmt, fmt)} {n}T "
                        f"{row['latency_ms'][fmt][n] / s['latency_ms'][fmt][n]:.1f}x"
                        for fmt, n in columns)
      lines.append(f"- {student} vs {role}: MACs ratio {row['macs'] / max(s['macs'], 1):.1f}x; "
                   f"measured speed-up {speed}")
  return "\n".join(lines)


def main(argv):
  del argv
  from gankd_jax import xla_cpu
  xla_cpu.configure(inference=True)  # Forward passes only, as gankd_jax.translate runs them.
  import jax
  import jax.numpy as jnp
  from gankd_jax import export, stats
  from gankd_jax.methods import build_method
  from gankd_jax.methods.common import inference_network
  config = FLAGS.config
  size = FLAGS.size or int(config.data.crop_size)
  threads = [int(n) for n in FLAGS.threads]
  try:
    for fmt in FLAGS.formats:
      if fmt != "jax":
        export.check_format(fmt)
    if max(threads) > len(os.sched_getaffinity(0)) or min(threads) < 1:
      raise ValueError(f"--threads must be in 1..{len(os.sched_getaffinity(0))}, got {threads}")
    method = build_method(config)
    roles = FLAGS.roles or list(method.generator_roles)
    unknown = [r for r in roles if r not in method.generator_roles]
    if unknown:
      raise ValueError(f"--roles: {', '.join(unknown)} not among {', '.join(method.generator_roles)}")
  except ValueError as error:
    fail(str(error))
  rows = {}
  with tempfile.TemporaryDirectory() as directory:
    for role in roles:
      module = method.generators[role]
      variables = module.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
      net = inference_network(module, variables, (size, size, 3))
      rows[role] = {
          "params": stats.count_params(variables["params"]),
          "macs": stats.count_macs(net.apply_fn, net.variables,
                                   jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)),
          "parity_error": {}}
      rows[role]["latency_ms"] = time_row(net, FLAGS.formats, threads, size, directory,
                                          rows[role]["parity_error"])
      print(f"{role}: {json.dumps(rows[role])}", flush=True)
  print(format_table(rows, FLAGS.formats, threads), flush=True)
  if FLAGS.json:
    with open(FLAGS.json, "w", encoding="utf-8") as handle:
      json.dump({"config": FLAGS["config"].config_filename, "size": size,
                 "threads": threads, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
