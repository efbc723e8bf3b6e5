"""Evaluate the latest checkpoint of any run: `python -m gankd_jax.evaluate --workdir=DIR`.

  python -m gankd_jax.evaluate --workdir=DIR [--num_samples=N] [--inception_weights=FILE]

Reads DIR/config.json, builds the method it names (gankd_jax/methods registry) and restores DIR's
latest committed checkpoint. Then, on the run's evaluation split (its first N examples with
--num_samples), for every generator role the method's `generate` returns (each teacher and the
student):
  quality   FID / IS / KID against the split's real images, when pytorch-fid's Inception weights
            are found (else one line says which file and which flag, and the rest is reported);
            PSNR / SSIM / L1 against the target and (student) against each teacher, when the
            batches hold a target (paired translation); sharpness (Variance of Laplacian);
  cost      parameters, MACs (gankd_jax/stats.py), latency (batch 1, compiled, median after
            warm-up, metrics/latency.py); for the student, the speed-up and the MAC / parameter
            compression over each teacher.
Writes DIR/eval.json, prints a table, saves DIR/eval_grid.png (the method's sample columns).

The Inception statistics of the split's real images (mean, covariance and KID's feature sample)
do not depend on the run: they are computed once and cached under `--stats_cache` (default
`$GANKD_CACHE/reference_stats`, see weights/download.py), keyed by the data config, the split,
the number of examples, the image shape and the Inception weights' SHA-256.

Only the Method contract is used (generate, networks, frozen_variables, sample_columns, roles), so
any registered method is evaluated alike, paired or unconditional. Bad input (no such workdir, no
config.json, no checkpoint, bad flags) is a one-line error and exit status 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

from absl import app, flags, logging

from gankd_jax.cli import fail, parse_flags

EVAL_FILE = "eval.json"
GRID_FILE = "eval_grid.png"
STATS_FORMAT = 1  # Bump when the cached reference statistics change meaning.
WEIGHTS_FLAG = "--inception_weights"

FLAGS = flags.FLAGS


def define_flags():
  """Defines the command's flags; only when run as a command, so that importing this module
  beside another command (tests, notebooks) does not define a flag twice."""
  flags.DEFINE_string("workdir", None, "Run directory (holds config.json and checkpoints/).")
  flags.DEFINE_integer("num_samples", 0, "Evaluate the first N examples of the evaluation split; "
                       "0: all of it.")
  flags.DEFINE_string("inception_weights", "", "pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                      "(or .npz); default: the run's config.eval.inception_weights, else the cache.")
  flags.DEFINE_integer("batch_size", 0, "Global evaluation batch; 0: the run's config.eval.batch_size.")
  flags.DEFINE_string("stats_cache", "", "Directory of cached reference statistics; default "
                      "$GANKD_CACHE/reference_stats (~/.cache/gankd_jax/reference_stats).")
  flags.DEFINE_integer("latency_iters", 20, "Timed batch-1 calls per network (median reported).")
  flags.DEFINE_integer("num_sample_images", 8, "Rows of eval_grid.png.")


# --------------------------------------------------------------------------------- the run
def load_run(workdir: str):
  """(config, mesh, method, step, state, eval_data, example batch): the run's latest checkpoint,
  restored replicated over a mesh of the run's device count (config.num_devices; 0: all).

  Checks, in this order and before building anything: the workdir, its config.json, a committed
  checkpoint; each missing one is a one-line ValueError.
  """
  import jax
  import jax.numpy as jnp
  import ml_collections
  from gankd_jax import checkpointing, data, parallel
  from gankd_jax.data import pipeline
  from gankd_jax.methods import build_method

  config = ml_collections.ConfigDict(checkpointing.read_config(workdir))
  if checkpointing.latest_step(workdir) is None:
    raise ValueError(f"{workdir} has no committed checkpoint (has its training saved one yet?)")
  mesh = parallel.make_mesh(config.get("num_devices") or None)
  method = build_method(config)
  eval_data = data.build_dataset(config.data, "eval")
  example = next(iter(pipeline.eval_batches(eval_data, 1, 0, 1, max_examples=1)))
  example = {k: jnp.asarray(v) for k, v in example.items() if k != "mask"}
  abstract = jax.eval_shape(method.init_state, jax.random.key(0), example)
  abstract = jax.tree_util.tree_map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=parallel.replicated(mesh)), abstract)
  step, state = checkpointing.restore_latest(workdir, abstract)
  return config, mesh, method, step, state, eval_data, example


def per_example_evaluators(example_batch) -> list:
  """Sharpness always; PSNR/SSIM/L1 only when the batches hold a target to compare with."""
  from gankd_jax.metrics import paired, sharpness
  evaluators = [sharpness.per_example_metrics]
  if "B" in example_batch:  # Paired translation datasets (data/paired.py) name the target B.
    evaluators.append(paired.per_example_metrics)
  return evaluators


# --------------------------------------------------------------------------------- Inception
def inception_metrics(weights_flag: str, config, mesh, batch_size: int):
  """(InceptionMetrics, weights SHA-256) or (None, one-line note saying what is missing)."""
  from gankd_jax.metrics import distribution
  from gankd_jax.models import inception
  from gankd_jax.weights import download
  configured = weights_flag or None
  from_config = config.get("eval", {}).get("inception_weights")
  if not configured and from_config and os.path.isfile(from_config):
    configured = from_config  # The run's own file; gone (e.g. another machine): look elsewhere.
  try:
    path = download.resolve(download.INCEPTION_FID, configured, flag=WEIGHTS_FLAG)
    variables = inception.load_inception(path)
  except ValueError as error:
    if weights_flag:
      raise  # Asked for explicitly (e.g. a file of another architecture): an error, not a note.
    return None, f"fid, inception_score, kid skipped: {error}"
  return (distribution.InceptionMetrics(distribution.NAMES, variables, batch_size, mesh),
          download.sha256_of(path))


def reference_key(data_config: dict, num_examples: int, image_shape, weights_sha256: str) -> str:
  """Cache key of the real images' statistics: what determines them, hashed."""
  data_config = {k: v for k, v in data_config.items() if k != "num_threads"}  # Speed only.
  described = json.dumps({"format": STATS_FORMAT, "data": data_config, "split": "eval",
                          "num_examples": int(num_examples), "image_shape": list(image_shape),
                          "inception_sha256": weights_sha256}, sort_keys=True)
  return hashlib.sha256(described.encode()).hexdigest()[:24]


def stats_cache_dir(flag_value: str) -> str:
  from gankd_jax.weights import download
  return flag_value or os.path.join(download.cache_dir(), "reference_stats")


def load_reference(path: str):
  """The cached {"stats": (mu, sigma), "sample": FeatureSample} or None (absent / unreadable)."""
  import numpy as np
  from gankd_jax.metrics import kid
  if not os.path.isfile(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as archive:
      mu, sigma, rows = archive["mu"], archive["sigma"], archive["kid_rows"]
  except (OSError, ValueError, KeyError, EOFError) as error:
    logging.warning("ignoring unreadable cached statistics %s (%s)", path, error)
    return None
  sample = kid.FeatureSample(rows.shape[1])
  sample.update(rows)
  return {"stats": (mu, sigma), "sample": sample}


def save_reference(path: str, reference, description: dict) -> None:
  """Written atomically (a sibling temporary file renamed), with a readable .json beside it."""
  import numpy as np
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp.npz"
  mu, sigma = reference["stats"]
  np.savez(tmp, mu=mu, sigma=sigma, kid_rows=reference["sample"].rows)
  os.replace(tmp, path)
  with open(path[:-len(".npz")] + ".json", "w") as handle:
    json.dump(description, handle, indent=2, sort_keys=True)


# --------------------------------------------------------------------------------- the pass
def evaluation_pass(method, state, frozen, eval_data, mesh, batch_size: int, num_examples: int,
                    evaluators, inception, num_sample_images: int):
  """One pass over the first `num_examples` of the split: (means by role, count, grid columns,
  distribution metrics by role)."""
  import jax
  import numpy as np
  from gankd_jax import parallel, visualize
  from gankd_jax.data import pipeline
  from gankd_jax.train import make_eval_step

  eval_step = make_eval_step(method, mesh, evaluators)
  passes = [inception.start(num_examples)] if inception is not None else []
  sums: dict[str, float] = {}
  count, roles = 0, []
  samples = visualize.SampleRows(num_examples, num_sample_images)
  for local in pipeline.eval_batches(eval_data, batch_size, jax.process_index(),
                                     jax.process_count(), max_examples=num_examples):
    on_device = eval_step(state, parallel.global_batch(local, mesh), frozen)
    batch, outputs, per_example = jax.device_get(on_device)
    for evaluator_pass in passes:
      evaluator_pass.update(on_device[1], on_device[0], batch["mask"])
    mask = np.asarray(batch["mask"], bool)
    for name, values in per_example.items():
      sums[name] = sums.get(name, 0.0) + float(np.sum(np.asarray(values, np.float64)[mask]))
    count += int(mask.sum())
    samples.add(len(mask), lambda: method.sample_columns(batch, outputs))
    roles = roles or [role for role in method.roles if role in outputs]
  means = {name: total / max(count, 1) for name, total in sums.items()}
  distribution = {}
  for evaluator_pass in passes:
    distribution.update(evaluator_pass.result())
  return means, count, samples.columns(), roles, distribution


def cost(method, state, roles, latency_iters: int) -> dict[str, dict[str, float]]:
  """Params, MACs and batch-1 latency of each generator role's network."""
  import jax
  import jax.numpy as jnp
  from gankd_jax import stats
  from gankd_jax.metrics.latency import measure_latency
  networks = method.networks(state)
  out = {}
  for role in roles:
    net = networks[role]
    example = jax.ShapeDtypeStruct((1, *net.input_shape), jnp.float32)
    # MACs first: count_macs traces transposed convs in their textbook form, and a trace cached
    # by an earlier jit of the same apply_fn (the sub-pixel form) would be reused otherwise.
    macs = stats.count_macs(net.apply_fn, net.variables, example)
    latency = measure_latency(net.apply_fn, net.variables, net.input_shape, iters=latency_iters)
    out[role] = {"params": stats.count_params(net.variables["params"]), "macs": macs,
                 "latency_ms": latency["median_ms"], "latency_min_ms": latency["min_ms"]}
  return out


def assemble(roles, means, distribution, costs) -> dict[str, Any]:
  """{"roles": {role: metrics}, "student_vs": {teacher: ratios}} from the pieces."""
  result = {role: dict(costs[role]) for role in roles}
  for name, value in {**means, **distribution}.items():
    group, metric = name.split("/", 1)
    if group in result:
      result[group][metric] = value
    elif group.startswith("student_vs_") and "student" in result:
      result["student"][f"{metric}_vs_{group[len('student_vs_'):]}"] = value
  compression = {}
  if "student" in result:
    student = result["student"]
    for teacher in (r for r in roles if r.startswith("teacher")):
      t = result[teacher]
      compression[teacher] = {
          "speedup": t["latency_ms"] / student["latency_ms"],
          "mac_compression": t["macs"] / max(student["macs"], 1),
          "param_compression": t["params"] / max(student["params"], 1)}
  return {"roles": result, "student_vs": compression}


def evaluate(workdir: str, *, num_samples: int = 0, inception_weights: str = "",
             batch_size: int = 0, stats_cache: str = "", latency_iters: int = 20,
             num_sample_images: int = 8) -> dict[str, Any]:
  """Evaluates `workdir`'s latest checkpoint; writes eval.json and eval_grid.png; returns the
  eval.json record."""
  import jax
  from gankd_jax import checkpointing, parallel, visualize

  if num_samples < 0:
    raise ValueError(f"--num_samples must be >= 0, got {num_samples}")
  if batch_size < 0:
    raise ValueError(f"--batch_size must be >= 0, got {batch_size}")
  if inception_weights and not os.path.isfile(inception_weights):
    raise ValueError(f"{WEIGHTS_FLAG}: no such file: {inception_weights}")
  config, mesh, method, step, state, eval_data, example = load_run(workdir)
  num_examples = min(num_samples or eval_data.num_examples, eval_data.num_examples)
  batch_size = -(-(batch_size or config.eval.batch_size) // mesh.size) * mesh.size
  evaluators = per_example_evaluators(example)

  skipped = []
  inception, weights = inception_metrics(inception_weights, config, mesh, batch_size)
  reference_info = None
  if inception is None:
    skipped.append(weights)
    logging.warning("%s", weights)
  else:
    key = reference_key(config.data.to_dict(), num_examples, eval_data.image_shape, weights)
    path = os.path.join(stats_cache_dir(stats_cache), f"{key}.npz")
    inception.reference = load_reference(path)
    reference_info = {"path": path, "cached": inception.reference is not None}

  frozen = parallel.replicate(method.frozen_variables(), mesh)
  means, count, columns, roles, distribution = evaluation_pass(
      method, state, frozen, eval_data, mesh, batch_size, num_examples, evaluators, inception,
      num_sample_images)
  if reference_info is not None and not reference_info["cached"] and inception.reference:
    if jax.process_index() == 0:
      save_reference(reference_info["path"], inception.reference, {
          "data": config.data.to_dict(), "split": "eval", "num_examples": count,
          "image_shape": list(eval_data.image_shape), "inception_sha256": weights,
          "format": STATS_FORMAT})
  costs = cost(method, state, roles, latency_iters)
  record = {"workdir": str(workdir), "method": config.method, "step": int(step),
            "split": "eval", "num_examples": count, "devices": mesh.size,
            "backend": jax.default_backend(),
            **assemble(roles, means, distribution, costs)}
  if reference_info is not None:
    record["reference_stats"] = reference_info
  if skipped:
    record["skipped"] = skipped
  if jax.process_index() == 0:
    run_dir = checkpointing.as_path(workdir)
    checkpointing.write_text_atomically(run_dir / EVAL_FILE, json.dumps(record, indent=2))
    visualize.save_png(visualize.image_grid(columns), run_dir / GRID_FILE)
  return record


# --------------------------------------------------------------------------------- the table
QUALITY_COLUMNS = (("fid", "FID", "{:.2f}"), ("is", "IS", "{:.3f}"), ("kid", "KID", "{:.4f}"),
                   ("psnr", "PSNR", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"), ("vol", "VoL", "{:.1f}"))


def format_table(record: dict[str, Any]) -> str:
  """The eval.json record as a fixed-width table, one row per role, then the student's ratios."""
  roles = record["roles"]
  quality = [c for c in QUALITY_COLUMNS if any(c[0] in m for m in roles.values())]
  header = (f"{'role':<14}{'params (M)':>11}{'MACs (G)':>10}{'latency ms':>11}"
            + "".join(f"{title:>9}" for _, title, _ in quality))
  lines = [f"{record['method']} at step {record['step']}, {record['num_examples']} examples of the "
           f"eval split, latency batch 1 on {record['backend']}", header]
  for role, m in roles.items():
    lines.append(f"{role:<14}{m['params'] / 1e6:>11.3f}{m['macs'] / 1e9:>10.3f}"
                 f"{m['latency_ms']:>11.2f}"
                 + "".join(f"{fmt.format(m[key]) if key in m else '-':>9}" for key, _, fmt in quality))
  student = roles.get("student", {})
  for teacher, ratios in record["student_vs"].items():
    vs = [f"{name.upper()} {student[f'{name}_vs_{teacher}']:.4g}" for name in ("psnr", "ssim")
          if f"{name}_vs_{teacher}" in student]
    lines.append(f"student vs {teacher}: {ratios['speedup']:.2f}x faster, "
                 f"{ratios['mac_compression']:.1f}x fewer MACs, "
                 f"{ratios['param_compression']:.1f}x fewer params"
                 + (f"; {', '.join(vs)} against its output" if vs else ""))
  for note in record.get("skipped", []):
    lines.append(note)
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.workdir:
    fail("--workdir is required (a run directory with config.json and checkpoints/)")
  # orbax logs every read-only restore at INFO/WARNING; the table carries our own notes.
  logging.set_verbosity(logging.ERROR)
  try:
    record = evaluate(FLAGS.workdir, num_samples=FLAGS.num_samples,
                      inception_weights=FLAGS.inception_weights, batch_size=FLAGS.batch_size,
                      stats_cache=FLAGS.stats_cache, latency_iters=FLAGS.latency_iters,
                      num_sample_images=FLAGS.num_sample_images)
  except ValueError as error:
    fail(str(error))
  print(format_table(record))
  print(f"wrote {os.path.join(FLAGS.workdir, EVAL_FILE)} and {os.path.join(FLAGS.workdir, GRID_FILE)}",
        file=sys.stderr)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
