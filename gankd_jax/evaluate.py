"""Evaluate the latest checkpoint of any run: `python -m gankd_jax.evaluate --workdir=DIR`.

  python -m gankd_jax.evaluate --workdir=DIR [--num_samples=N] [--inception_weights=FILE]

Reads DIR/config.json, builds the method it names (gankd_jax/methods registry) and restores DIR's
latest committed checkpoint. Then, on the run's evaluation split (its first N examples with
--num_samples), for every generator role the method's `generate` returns (each teacher and the
student):
  quality   FID / IS / KID against the split's real images, when pytorch-fid's Inception weights
            are found, and precision / recall (k = 3) in VGG16 fc2 features, when torchvision's
            VGG16 weights are (else one line says which file and which flag, and the rest is
            reported); PSNR / SSIM / L1 against each role's paired targets (the ground truth and,
            for the student, each teacher), when the method has them; sharpness (VoL);
  cost      parameters, MACs (gankd_jax/stats.py), latency (batch 1, compiled by the inference
            path of gankd_jax/inference.py, median after warm-up, metrics/latency.py); for the
            student, the speed-up and the MAC / parameter compression over each teacher.
Everything runs in the run's config.precision (recorded as eval.json's "precision").
Writes DIR/eval.json, prints a table, saves DIR/eval_grid.png (the method's sample columns).

The real images' side of FID / KID / precision-recall (mean and covariance, feature samples) does
not depend on the run: it is computed once and cached under `--stats_cache` (default
`$GANKD_CACHE/reference_stats`, see weights/download.py), one file per feature network, keyed by
the data config, the split, the number of examples, the image shape and the weights' SHA-256.

The run is restored by `runs.restore_run` and evaluated by the same pass as the training loop
(evaluation.py), through the Method contract only, so any registered method is evaluated alike,
paired or unconditional. Bad input (no such workdir, no config.json, no checkpoint, bad flags) is
a one-line error and exit status 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

from absl import app, flags, logging

from gankd_jax.cli import fail, parse_flags, text_table

EVAL_FILE = "eval.json"
GRID_FILE = "eval_grid.png"
STATS_FORMAT = 2  # Bump when the cached reference statistics change meaning.
WEIGHTS_FLAG = "--inception_weights"
VGG_WEIGHTS_FLAG = "--vgg16_weights"

FLAGS = flags.FLAGS


def define_flags():
  """Defines the command's flags; only when run as a command, so that importing this module
  beside another command (tests, notebooks) does not define a flag twice."""
  flags.DEFINE_string("workdir", None, "Run directory (holds config.json and checkpoints/).")
  flags.DEFINE_integer("num_samples", 0, "Evaluate the first N examples of the evaluation split; "
                       "0: all of it.")
  flags.DEFINE_string("inception_weights", "", "pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                      "(or .npz); default: the run's config.eval.inception_weights, else the cache.")
  flags.DEFINE_string("vgg16_weights", "", "torchvision's vgg16-397923af.pth, for precision / "
                      "recall; default: the run's config.eval.vgg16_weights, else the cache.")
  flags.DEFINE_integer("batch_size", 0, "Global evaluation batch; 0: the run's config.eval.batch_size.")
  flags.DEFINE_string("stats_cache", "", "Directory of cached reference statistics; default "
                      "$GANKD_CACHE/reference_stats (~/.cache/gankd_jax/reference_stats).")
  flags.DEFINE_integer("latency_iters", 20, "Timed batch-1 calls per network (median reported).")
  flags.DEFINE_integer("num_sample_images", 8, "Rows of eval_grid.png.")


# --------------------------------------------------------------------------------- evaluators
EVALUATORS = ("paired", "sharpness", "fid", "inception_score", "kid", "precision_recall")


def eval_config(config, inception_weights: str, vgg16_weights: str = ""):
  """Every evaluator type, with the Inception (VGG16) weights of the flag, else the run's own file
  (if it still exists here), else the cache."""
  import ml_collections
  configured = inception_weights or None
  from_config = config.get("eval", {}).get("inception_weights")
  if not configured and from_config and os.path.isfile(from_config):
    configured = from_config  # The run's own file; gone (e.g. another machine): look elsewhere.
  evaluators = {name: {"type": name} for name in EVALUATORS}
  # A run that measured FID in other features (e.g. the digit classifier, shipped with the
  # package) gets FID / KID in those when no Inception weights are found, rather than none.
  run_fid = config.get("eval", {}).get("evaluators", {}).get("fid", {})
  run_features = run_fid.get("features")
  if run_features not in (None, "inception") and not configured and not _inception_cached():
    for name in ("fid", "kid"):
      evaluators[name]["features"] = run_features
  # The run's reference side (e.g. CycleGAN's train + eval real images) for every real-side type.
  for name in ("fid", "kid", "precision_recall"):
    evaluators[name]["reference"] = run_fid.get("reference", "eval")
  return ml_collections.ConfigDict({
      "evaluators": evaluators, "inception_weights": configured or "",
      "vgg16_weights": vgg16_weights or config.get("eval", {}).get("vgg16_weights", "") or ""})


def _inception_cached() -> bool:
  from gankd_jax.weights import download
  return download.find_cached(download.INCEPTION_FID) is not None


def reference_key(data_config: dict, num_examples: int, image_shape, weights_sha256: str,
                  references: dict[str, str] | None = None) -> str:
  """Cache key of the real images' features: what determines them, hashed. `references`: each
  evaluator's reference side (spec.reference) where it is not the default "eval"."""
  data_config = {k: v for k, v in data_config.items() if k != "num_threads"}  # Speed only.
  fields = {"format": STATS_FORMAT, "data": data_config, "split": "eval",
            "num_examples": int(num_examples), "image_shape": list(image_shape),
            "weights_sha256": weights_sha256}
  if references:
    fields["references"] = references
  described = json.dumps(fields, sort_keys=True)
  return hashlib.sha256(described.encode()).hexdigest()[:24]


def stats_cache_dir(flag_value: str) -> str:
  from gankd_jax.weights import download
  return flag_value or os.path.join(download.cache_dir(), "reference_stats")


def load_references(path: str) -> dict[str, dict] | None:
  """The cached real-image side of each evaluator ({name: {array name: array}}), or None."""
  import numpy as np
  if not os.path.isfile(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as archive:
      stored = {key: archive[key] for key in archive.files}
  except (OSError, ValueError, EOFError) as error:
    logging.warning("ignoring unreadable cached statistics %s (%s)", path, error)
    return None
  references: dict[str, dict] = {}
  for key, value in stored.items():
    name, array = key.split("/", 1)
    references.setdefault(name, {})[array] = value
  return references


def save_references(path: str, references: dict[str, dict], description: dict) -> None:
  """Written atomically (a sibling temporary file renamed), with a readable .json beside it."""
  import numpy as np
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp.npz"
  np.savez(tmp, **{f"{name}/{key}": value for name, arrays in references.items()
                   for key, value in arrays.items()})
  os.replace(tmp, path)
  with open(path[:-len(".npz")] + ".json", "w") as handle:
    json.dump(description, handle, indent=2, sort_keys=True)


def reference_name(evaluator_name: str, real_set: str | None) -> str:
  """An evaluator's entry in the cache file; a named real set (Method.compared_with) its own."""
  return evaluator_name if real_set is None else f"{evaluator_name}@{real_set}"


def attach_references(evaluators, config, num_examples: int, image_shape, cache: str,
                      real_sets=(None,)) -> dict[str, dict[str, Any]]:
  """Per feature network: the cache file of its evaluators' real-image side (one per real set),
  read if present. Returns {network: {"path", "cached", "evaluators", "real_sets"}}."""
  from gankd_jax.weights import download
  by_network: dict[str, list] = {}
  for evaluator in evaluators.distribution.values():
    if evaluator.spec.type != "inception_score":  # IS has no real-image side.
      by_network.setdefault(evaluator.network.name, []).append(evaluator)
  info = {}
  for name, members in by_network.items():
    weights = members[0].network.weights_path
    sha = download.sha256_of(weights) if weights else name
    key = reference_key(config.data.to_dict(), num_examples, image_shape, sha,
                        {e.spec.name: e.spec.reference for e in members
                         if e.spec.reference != "eval"})
    path = os.path.join(cache, f"{key}.npz")
    stored = load_references(path) or {}
    for evaluator in members:
      for real_set in real_sets:
        evaluator.set_stored(real_set, stored.get(reference_name(evaluator.spec.name, real_set)))
    cached = all(real_set in evaluator.references for evaluator in members
                 for real_set in real_sets)
    info[name] = {"path": path, "cached": cached, "weights_sha256": sha, "evaluators": members,
                  "real_sets": list(real_sets)}
  return info


def cost(networks, roles, latency_iters: int, precision: str = "float32"
         ) -> dict[str, dict[str, float]]:
  """Params, MACs and batch-1 latency (in `precision`) of each generator role's network."""
  import jax
  import jax.numpy as jnp
  from gankd_jax import stats
  from gankd_jax.metrics.latency import measure_latency
  out = {}
  for role in roles:
    net = networks[role]
    example = jax.ShapeDtypeStruct((1, *net.input_shape), jnp.float32)
    # MACs first: count_macs traces transposed convs in their textbook form, and a trace cached
    # by an earlier jit of the same apply_fn (the sub-pixel form) would be reused otherwise.
    macs = stats.count_macs(net.apply_fn, net.variables, example)
    latency = measure_latency(net.apply_fn, net.variables, net.input_shape, iters=latency_iters,
                              precision=precision)
    out[role] = {"params": stats.count_params(net.variables["params"]), "macs": macs,
                 "latency_ms": latency["median_ms"], "latency_min_ms": latency["min_ms"]}
  return out


def assemble(roles, results, costs) -> dict[str, Any]:
  """{"roles": {role: metrics}, "student_vs": {teacher: ratios}} from the pieces."""
  result = {role: dict(costs[role]) for role in roles}
  for group, metrics in results.items():
    for metric, value in metrics.items():
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
             num_sample_images: int = 8, vgg16_weights: str = "") -> dict[str, Any]:
  """Evaluates `workdir`'s latest checkpoint; writes eval.json and eval_grid.png; returns the
  eval.json record."""
  import jax
  from gankd_jax import checkpointing, data, evaluation, runs, visualize
  from gankd_jax.models import layers

  if num_samples < 0:
    raise ValueError(f"--num_samples must be >= 0, got {num_samples}")
  if batch_size < 0:
    raise ValueError(f"--batch_size must be >= 0, got {batch_size}")
  if inception_weights and not os.path.isfile(inception_weights):
    raise ValueError(f"{WEIGHTS_FLAG}: no such file: {inception_weights}")
  if vgg16_weights and not os.path.isfile(vgg16_weights):
    raise ValueError(f"{VGG_WEIGHTS_FLAG}: no such file: {vgg16_weights}")
  restored = runs.restore_run(workdir)
  config, mesh, method = restored.config, restored.mesh, restored.method
  eval_data = data.build_dataset(config.data, "eval")
  num_examples = min(num_samples or eval_data.num_examples, eval_data.num_examples)
  batch_size = -(-(batch_size or config.eval.batch_size) // mesh.size) * mesh.size

  evaluators = evaluation.build(eval_config(config, inception_weights, vgg16_weights), mesh,
                                batch_size, layers.precision_of(config))
  # The notes name the training command's flags; this command has its own.
  evaluators.notes = [note.replace(evaluation.INCEPTION_FLAG, WEIGHTS_FLAG)
                      .replace(evaluation.VGG_FLAG, VGG_WEIGHTS_FLAG) for note in evaluators.notes]
  for note in evaluators.notes:
    if inception_weights and note.startswith(("fid", "inception_score", "kid")):
      raise ValueError(note.split(": ", 1)[1])  # Asked for explicitly: an error, not a note.
    logging.warning("%s", note)
  training_reals = (data.build_dataset(config.data, "train_eval")
                    if evaluation.wants_training_reals(evaluators.distribution_specs()) else None)
  references = attach_references(evaluators, config, num_examples, eval_data.image_shape,
                                 stats_cache_dir(stats_cache),
                                 evaluation.compared_real_sets(method))
  result = evaluation.evaluation_pass(
      method, restored.state, restored.frozen, eval_data, mesh, evaluators, batch_size=batch_size,
      max_examples=num_examples, num_sample_images=num_sample_images,
      training_reals=training_reals)
  for name, info in references.items():
    members, sets = info.pop("evaluators"), info.pop("real_sets")
    if not info["cached"] and all(s in e.references for e in members for s in sets) and (
        jax.process_index() == 0):
      save_references(info["path"], {reference_name(e.spec.name, s): e.references[s]
                                     for e in members for s in sets}, {
          "data": config.data.to_dict(), "split": "eval", "num_examples": result.num_examples,
          "image_shape": list(eval_data.image_shape), "features": name,
          "weights_sha256": info["weights_sha256"], "format": STATS_FORMAT,
          "references": {e.spec.name: e.spec.reference for e in members}})
  costs = cost(method.networks(restored.state, restored.frozen), result.roles, latency_iters,
               layers.precision_of(config))
  record = {"workdir": str(workdir), "method": config.method, "step": int(restored.step),
            "split": "eval", "num_examples": result.num_examples, "devices": mesh.size,
            "backend": jax.default_backend(), "precision": layers.precision_of(config),
            **assemble(result.roles, result.results, costs)}
  report = method.report(restored.state)
  if report:
    record["report"] = report
  if references:
    record["reference_stats"] = references
  if evaluators.notes:
    record["skipped"] = list(evaluators.notes)
  if jax.process_index() == 0:
    run_dir = checkpointing.as_path(workdir)
    checkpointing.write_text_atomically(run_dir / EVAL_FILE, json.dumps(record, indent=2))
    visualize.save_png(visualize.image_grid(result.columns, labels=result.labels), run_dir / GRID_FILE)
  return record


# --------------------------------------------------------------------------------- the table
QUALITY_COLUMNS = (("fid", "FID", "{:.2f}"), ("is", "IS", "{:.3f}"), ("kid", "KID", "{:.4f}"),
                   ("precision", "prec", "{:.3f}"), ("recall", "recall", "{:.3f}"),
                   ("psnr", "PSNR", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"), ("l1", "L1", "{:.4f}"),
                   ("vol", "VoL", "{:.1f}"))


def format_table(record: dict[str, Any]) -> str:
  """The eval.json record as a table (cli.text_table), one row per role, then the student's
  ratios."""
  roles = record["roles"]
  quality = [c for c in QUALITY_COLUMNS if any(c[0] in m for m in roles.values())]
  rows = [["role", "params (M)", "MACs (G)", "latency ms", *(title for _, title, _ in quality)]]
  for role, m in roles.items():
    rows.append([role, f"{m['params'] / 1e6:.3f}", f"{m['macs'] / 1e9:.3f}",
                 f"{m['latency_ms']:.2f}",
                 *(fmt.format(m[key]) if key in m else "-" for key, _, fmt in quality)])
  lines = [f"{record['method']} at step {record['step']}, {record['num_examples']} examples of the "
           f"eval split, latency batch 1 on {record['backend']}"
           f"{' in ' + record['precision'] if 'precision' in record else ''}", *text_table(rows)]
  student = roles.get("student", {})
  for teacher, ratios in record["student_vs"].items():
    vs = [f"{name.upper()} {student[f'{name}_vs_{teacher}']:.4g}" for name in ("psnr", "ssim", "l1")
          if f"{name}_vs_{teacher}" in student]
    lines.append(f"student vs {teacher}: {ratios['speedup']:.2f}x faster, "
                 f"{ratios['mac_compression']:.1f}x fewer MACs, "
                 f"{ratios['param_compression']:.1f}x fewer params"
                 + (f"; {', '.join(vs)} against its output" if vs else ""))
  for name, value in record.get("report", {}).items():
    if isinstance(value, list):  # Rows, e.g. the selection history.
      lines.append(f"{name}:" + ("" if value else " none"))
      lines.extend("  " + "  ".join(f"{k} {v}" for k, v in row.items()) for row in value)
    else:
      lines.append(f"{name}: {value}")
  for note in record.get("skipped", []):
    lines.append(note)
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.workdir:
    fail("--workdir is required (a run directory with config.json and checkpoints/)")
  # The table carries our own notes; --verbose shows every log line (console.py).
  if not FLAGS.verbose:
    logging.set_verbosity(logging.ERROR)
  from gankd_jax import xla_cpu
  xla_cpu.configure(inference=True)  # Forward passes only.
  try:
    record = evaluate(FLAGS.workdir, num_samples=FLAGS.num_samples,
                      inception_weights=FLAGS.inception_weights, batch_size=FLAGS.batch_size,
                      stats_cache=FLAGS.stats_cache, latency_iters=FLAGS.latency_iters,
                      num_sample_images=FLAGS.num_sample_images,
                      vgg16_weights=FLAGS.vgg16_weights)
  except ValueError as error:
    fail(str(error))
  print(format_table(record))
  print(f"wrote {os.path.join(FLAGS.workdir, EVAL_FILE)} and {os.path.join(FLAGS.workdir, GRID_FILE)}",
        file=sys.stderr)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
