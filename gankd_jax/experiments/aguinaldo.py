"""Aguinaldo et al. (2019) on one dataset: a teacher, then MSE / joint / scratch students per size d.

  python -m gankd_jax.experiments.aguinaldo --workdir=DIR [--dataset=digits]

Trains one DCGAN teacher, then for each depth scale factor d in `--d_list` a student by MSE
distillation, one by joint distillation and one from scratch, all with the same budget of
generator updates (`--student_iters`; the adversarial runs take `n_critic` critic steps per
generator update, the MSE runs one step each).

GAN loss (`--gan`): the paper trains its teacher as a WGAN-GP (`--gan=wgan_gp`, also the default of
configs/aguinaldo.py). On a 2-core CPU in the 45-minute budget a WGAN-GP DCGAN teacher does not get
past grey blobs (measured: d=16, 800 generator updates = 4000 critic steps, 12 min), while DCGAN's
own recipe (hinge loss, BatchNorm critic, one critic step per update) draws digits after ~500
updates; so the experiment's default is `--gan=hinge`, and results.md says which loss was used. Every run goes through the shared training loop
in DIR/runs/<method>_d<d> (so a killed experiment resumes where it stopped). Then every generator
is evaluated on the same `--num_samples` latent codes:

  fid   Frechet distance of the generated images' features to the first --num_samples real
        training images' features (evaluation latents: methods/common.py, by example index)
  is    Inception-Score-style exp(E KL(p(y|x) || p(y))) over 10 splits
  vol   mean Variance of the Laplacian of the generated images (sharpness, as in the paper)

with the digit classifier (metrics/digit_classifier.py) as feature network for digits / MNIST
and pytorch-fid's Inception for colour data (its weights from `--inception_weights` or the cache;
without them fid / is are null and results.md says why). Outputs:

  DIR/results.json      [{"method", "d", "params", "fid", "is", "vol"}, ...]
  DIR/results.md        the table with compression ratios, the paper's claims checked on it
  DIR/fid_vs_params.png FID against generator parameters, one line per method
  DIR/samples/<method>_d<d>.png  8x8 samples of each row, the same latent codes everywhere
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Optional

from absl import app, flags, logging

from gankd_jax.cli import define_precision_flag, experiment_main, parse_flags

FLAGS = flags.FLAGS


def define_flags():
  """Defines the command's flags; only when run as a command, so that importing this module
  beside another command (tests, notebooks) does not define a flag twice."""
  flags.DEFINE_string("workdir", None, "Directory for the runs and the results.")
  flags.DEFINE_string("dataset", "digits", "digits | mnist | cifar10 | celeb_a | image_folder")
  flags.DEFINE_string("data_path", None, "Folder of images, for --dataset=image_folder.")
  flags.DEFINE_integer("image_size", 0, "Image side (0: 32, or 64 for celeb_a).")
  flags.DEFINE_integer("teacher_d", 32, "Teacher depth scale factor.")
  flags.DEFINE_list("d_list", ["1", "2", "4"], "Student depth scale factors.")
  flags.DEFINE_string("gan", "hinge", "GAN loss of every adversarial run: hinge (DCGAN's recipe: "
                      "BatchNorm critic, 1 critic step per generator update, Adam(lr, 0.5, 0.999)) "
                      "or wgan_gp (the paper's: layer-norm critic, 5 critic steps, Adam(lr, 0.5, 0.9)).")
  flags.DEFINE_integer("teacher_iters", 2000, "Teacher generator updates (x n_critic critic steps).")
  flags.DEFINE_integer("student_iters", 1500, "Generator updates of every student.")
  flags.DEFINE_integer("critic_d", 8, "Depth scale factor of the students' critics (joint, scratch).")
  # alpha balances loss terms of different scales: with the hinge critic the adversarial term is
  # ~1 while the pixel MSE to the teacher is ~0.1. Measured at d=2 (1500 updates, critic d=8):
  # alpha 0.5 and 0.1 let the critic swamp the student (noise, IS 1.2 / 3.3), alpha 0.02 gives
  # digits sharper than MSE alone (FID 782 vs 1004, IS 5.6 vs 5.2, VoL 1715 vs 1131).
  flags.DEFINE_float("alpha", 0.02, "Joint distillation: weight of the adversarial term.")
  flags.DEFINE_float("lr", 2e-4, "Adam learning rate of every run.")
  flags.DEFINE_integer("batch_size", 64, "Batch size of every run.")
  flags.DEFINE_integer("num_samples", 2000, "Generated images per row for FID / IS / VoL, and "
                       "real training images for the FID reference (at most the training split).")
  flags.DEFINE_string("inception_weights", None, "pytorch-fid Inception weights (colour datasets).")
  flags.DEFINE_integer("seed", 0, "Seed of every run and of the evaluation latents.")
  define_precision_flag("float32", "every run's config.precision, its evaluations included")
  flags.mark_flags_as_required(["workdir"])

METHODS = ("mse", "joint", "scratch")
DIGIT_DATASETS = ("digits", "mnist")
ROW_KEYS = ("method", "d", "params", "fid", "is", "vol")
IS_KEEP_FRACTION = 0.9  # "Keeps most of the teacher's IS": at least 90 % of it.
NOT_DIGITS_IS = 2.0     # Below this (of 10 classes) the samples are not recognisable images.


@dataclasses.dataclass
class Plan:
  """Every run of the experiment: (name, config, workdir), teacher first."""
  runs: list
  teacher_dir: str


# ------------------------------------------------------------------------------------ planning
def base_config(mode: str, settings) -> Any:
  from configs import aguinaldo as aguinaldo_config
  config = aguinaldo_config.get_config(mode)
  config.seed = settings.seed
  config.batch_size = settings.batch_size
  config.data.name = settings.dataset
  config.data.path = settings.data_path
  config.data.image_size = settings.image_size or (64 if settings.dataset == "celeb_a" else 32)
  config.teacher.d = settings.teacher_d
  config.loss.alpha = settings.alpha
  config.loss.gan = settings.gan
  config.optimizer.lr = settings.lr
  config.precision = settings.precision
  if settings.gan != "wgan_gp":  # DCGAN's recipe (Radford et al. 2016).
    config.loss.n_critic = 1
    config.discriminator.norm = "batch"
    config.optimizer.b2 = 0.999
  config.log_every = 100
  config.eval.max_examples = 512  # The loop's periodic check (VoL); the real metrics come after.
  return config


def _finish(config, steps: int):
  config.num_train_steps = steps
  config.checkpoint_every = max(100, steps // 4)
  config.eval_every = steps  # Start and end only; each run is short.
  return config


def plan(settings, workdir: str) -> Plan:
  """All run configs, validated (one-line ValueError) before anything trains."""
  from gankd_jax.methods import aguinaldo
  from gankd_jax import models
  runs_dir = os.path.join(os.path.abspath(workdir), "runs")  # Students name their teacher by it.
  teacher_dir = os.path.join(runs_dir, f"teacher_d{settings.teacher_d}")
  teacher = base_config("teacher", settings)
  n_critic = teacher.loss.n_critic
  _finish(teacher, settings.teacher_iters * n_critic)
  runs = [("teacher", settings.teacher_d, teacher, teacher_dir)]
  for d in settings.d_list:
    for mode in METHODS:
      config = base_config(mode, settings)
      config.student.d = d
      config.discriminator.d = settings.critic_d
      if mode != "scratch":
        config.teacher.workdir = teacher_dir
      steps = settings.student_iters * (1 if mode == "mse" else n_critic)
      runs.append((mode, d, _finish(config, steps), os.path.join(runs_dir, f"{mode}_d{d}")))
  for _, _, config, _ in runs:
    aguinaldo.check_config(config)
    models.check_latent_image_size(config.family, config.data.image_size)
  return Plan(runs, teacher_dir)


def check_settings(settings) -> None:
  from gankd_jax import data
  if settings.dataset not in data.UNCONDITIONAL_NAMES:
    raise ValueError(f"--dataset: unknown '{settings.dataset}'; choose from "
                     f"{', '.join(data.UNCONDITIONAL_NAMES)}")
  for name in ("teacher_iters", "student_iters", "num_samples", "batch_size"):
    if getattr(settings, name) <= 0:
      raise ValueError(f"--{name} must be positive, got {getattr(settings, name)}")
  if settings.num_samples < 10:
    raise ValueError(f"--num_samples must be >= 10 (IS over 10 splits), got {settings.num_samples}")
  for name in ("teacher_d", "critic_d"):
    if getattr(settings, name) <= 0:
      raise ValueError(f"--{name} (a depth scale factor) must be positive, got {getattr(settings, name)}")
  if not settings.d_list or any(d <= 0 for d in settings.d_list):
    raise ValueError(f"--d_list: depth scale factors must be positive integers, got {settings.d_list}")


@dataclasses.dataclass
class Settings:
  dataset: str
  data_path: Optional[str]
  image_size: int
  teacher_d: int
  d_list: list
  teacher_iters: int
  student_iters: int
  critic_d: int
  gan: str
  alpha: float
  lr: float
  batch_size: int
  num_samples: int
  inception_weights: Optional[str]
  seed: int
  precision: str = "float32"


def settings_from_flags() -> Settings:
  try:
    d_list = [int(d) for d in FLAGS.d_list]
  except ValueError:
    raise ValueError(f"--d_list must be integers, got {','.join(FLAGS.d_list)}") from None
  return Settings(FLAGS.dataset, FLAGS.data_path, FLAGS.image_size, FLAGS.teacher_d, d_list,
                  FLAGS.teacher_iters, FLAGS.student_iters, FLAGS.critic_d, FLAGS.gan, FLAGS.alpha, FLAGS.lr,
                  FLAGS.batch_size, FLAGS.num_samples,
                  FLAGS.inception_weights, FLAGS.seed, FLAGS.precision)


# ------------------------------------------------------------------------------------ evaluation
def feature_network_name(settings) -> str:
  return "digit_classifier" if settings.dataset in DIGIT_DATASETS else "inception"


def build_evaluators(settings, mesh, batch_size: int):
  """FID and IS (the dataset's feature network) and VoL, through the shared evaluation pass."""
  import ml_collections
  from gankd_jax import evaluation
  features = feature_network_name(settings)
  declared = {"fid": {"type": "fid", "features": features},
              "inception_score": {"type": "inception_score", "features": features},
              "sharpness": {"type": "sharpness"}}
  return evaluation.build(ml_collections.ConfigDict({
      "evaluators": declared, "inception_weights": settings.inception_weights or ""}),
      mesh, batch_size, settings.precision)


def evaluate_run(run_dir: str, role: str, evaluators, dataset, mesh, settings, batch_size: int
                 ) -> tuple[dict[str, Any], Any, Any]:
  """fid / is / vol of `role`'s images on the evaluation latents of the first `num_samples`
  examples (reference: those training images), its first 64 images, and the restored run."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from gankd_jax import evaluation, runs
  restored = runs.restore_run(run_dir, mesh=mesh)
  evaluators.set_roles((role,))
  result = evaluation.evaluation_pass(
      restored.method, restored.state, restored.frozen, dataset, mesh, evaluators,
      batch_size=batch_size, max_examples=settings.num_samples, num_sample_images=0)
  scores = result.results.get(role, {})
  first = {"index": jnp.arange(64, dtype=jnp.int32),
           "image": jnp.zeros((64, *dataset.image_shape), jnp.float32)}
  images = jax.jit(restored.method.generate)(restored.state, first, restored.frozen)[role]
  return ({"fid": scores.get("fid"), "is": scores.get("is"), "vol": scores["vol"]},
          np.asarray(images), restored)


def sample_grid(images, columns: int = 8):
  from gankd_jax import visualize
  rows = len(images) // columns
  return visualize.image_grid([images[c::columns][:rows] for c in range(columns)])


# ------------------------------------------------------------------------------------ reporting
def compression(teacher_params: int, params: int) -> float:
  return teacher_params / params


def claims(rows: list[dict]) -> list[str]:
  """The paper's three claims, checked on these rows, as plain sentences."""
  teacher = next(r for r in rows if r["method"] == "teacher")
  by = {(r["method"], r["d"]): r for r in rows if r["method"] != "teacher"}
  ds = sorted({d for _, d in by})
  lines = []
  if teacher["fid"] is None:
    lines.append("- FID / IS were not computed (no feature network), so claims 1 and 3 are not checked.")
  else:
    smallest = ds[:2]
    for d in smallest:
      scratch = by[("scratch", d)]
      for method in ("mse", "joint"):
        row = by[(method, d)]
        fid_better = row["fid"] < scratch["fid"]
        is_better = row["is"] > scratch["is"]
        verdict = ("beats" if fid_better and is_better else
                   "does not beat" if not fid_better and not is_better else "partly beats")
        lines.append(f"- Claim 1, d={d}: the {method} student {verdict} the scratch student "
                     f"(FID {row['fid']:.2f} vs {scratch['fid']:.2f}, IS {row['is']:.2f} vs "
                     f"{scratch['is']:.2f}).")
  sharper = [d for d in ds if by[("joint", d)]["vol"] > by[("mse", d)]["vol"]]
  pairs = ", ".join(f"d={d}: {by[('joint', d)]['vol']:.0f} vs {by[('mse', d)]['vol']:.0f}" for d in ds)
  lines.append(f"- Claim 2: joint is sharper than mse (higher VoL) at {len(sharper)} of {len(ds)} "
               f"sizes ({pairs}).")
  noisy = [d for d in sharper if by[("joint", d)]["is"] is not None
           and by[("joint", d)]["is"] < NOT_DIGITS_IS]
  if noisy:
    lines.append(f"  Caveat: at {', '.join(f'd={d}' for d in noisy)} the joint student's IS is below "
                 f"{NOT_DIGITS_IS} (its samples are not recognisable images), so its high VoL measures "
                 "noise, not sharper images; look at samples/joint_d*.png.")
  if teacher["is"] is not None:
    keeping = [r for r in by.values() if r["method"] in ("mse", "joint")
               and r["is"] >= IS_KEEP_FRACTION * teacher["is"]]
    if keeping:
      best = max(keeping, key=lambda r: compression(teacher["params"], r["params"]))
      lines.append(f"- Claim 3: the largest compression ratio keeping >= {IS_KEEP_FRACTION:.0%} of the "
                   f"teacher's IS ({teacher['is']:.2f}) is {compression(teacher['params'], best['params']):.1f}:1 "
                   f"({best['method']}, d={best['d']}, IS {best['is']:.2f}).")
    else:
      best = max((r for r in by.values() if r["method"] in ("mse", "joint")), key=lambda r: r["is"])
      lines.append(f"- Claim 3: no distilled student keeps >= {IS_KEEP_FRACTION:.0%} of the teacher's "
                   f"IS ({teacher['is']:.2f}) at these sizes; the closest is {best['method']} d={best['d']} "
                   f"({best['is']:.2f}, {best['is'] / teacher['is']:.0%}) at "
                   f"{compression(teacher['params'], best['params']):.1f}:1.")
  return lines


def _fmt(value, digits=2):
  return "n/a" if value is None else f"{value:.{digits}f}"


def results_markdown(rows, settings, network_name: str, note: str, wall_s: float) -> str:
  teacher = next(r for r in rows if r["method"] == "teacher")
  lines = [
      f"# Aguinaldo et al. (2019) on {settings.dataset}",
      "",
      f"Feature network for FID and IS: **{network_name}**"
      + (" (trained on the embedded digits' training split; not comparable with Inception-based numbers)"
         if network_name == "digit_classifier" else ""),
      f"{settings.num_samples} generated images per row (at most the training split's size; the "
      "evaluation latents of methods/common.py, the same for every row and every method); FID "
      "against as many real training images; VoL on the 0..255 grey scale.",
      f"Teacher: DCGAN d={settings.teacher_d}, GAN loss {settings.gan}, {settings.teacher_iters} "
      f"generator updates. Students: {settings.student_iters} generator updates each (joint / "
      f"scratch with a critic of d={settings.critic_d}, "
      f"{5 if settings.gan == 'wgan_gp' else 1} critic step(s) per update), alpha={settings.alpha}, "
      f"Adam lr {settings.lr}, batch {settings.batch_size}. Wall time {wall_s / 60:.1f} min.",
  ]
  if note:
    lines += ["", f"Note: {note}"]
  lines += ["", "| method | d | params | compression | FID | IS | VoL |",
            "|---|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['method']} | {r['d']} | {r['params']:,} | "
                 f"{compression(teacher['params'], r['params']):.1f}:1 | {_fmt(r['fid'])} | "
                 f"{_fmt(r['is'])} | {_fmt(r['vol'], 0)} |")
  lines += ["", "## The paper's claims on these numbers", "", *claims(rows), ""]
  return "\n".join(lines)


def plot_fid_vs_params(rows, path: str, network_name: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for method, marker in (("mse", "o"), ("joint", "s"), ("scratch", "^")):
    points = sorted((r["params"], r["fid"]) for r in rows if r["method"] == method and r["fid"] is not None)
    if points:
      ax.plot(*zip(*points), marker=marker, label=method)
  teacher = [(r["params"], r["fid"]) for r in rows if r["method"] == "teacher" and r["fid"] is not None]
  if teacher:
    ax.plot(*zip(*teacher), marker="*", markersize=14, linestyle="none", label="teacher")
  ax.set_xscale("log")
  ax.set_xlabel("generator parameters")
  ax.set_ylabel(f"FID ({network_name} features)")
  ax.set_title("FID vs generator size")
  ax.grid(True, alpha=0.3)
  ax.legend()
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=100)
  plt.close(fig)
  os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


# ------------------------------------------------------------------------------------ the run
def run_experiment(settings: Settings, workdir: str) -> list[dict]:
  """Plans (validating everything), trains every run, evaluates, writes the outputs."""
  from gankd_jax import checkpointing, data, parallel, stats, train, visualize
  check_settings(settings)
  experiment = plan(settings, workdir)
  for _, _, config, run_dir in experiment.runs:  # A workdir of other settings fails here, not later.
    checkpointing.check_workdir_config(run_dir, config)
  train_data = data.build_dataset(experiment.runs[0][2].data, "train")
  mesh = parallel.make_mesh(1)
  eval_batch = 250
  evaluators = build_evaluators(settings, mesh, eval_batch)
  note = "; ".join(evaluators.notes)
  network_name = "none" if note else feature_network_name(settings)

  start = time.time()
  for k, (mode, d, config, run_dir) in enumerate(experiment.runs, 1):
    elapsed = time.time() - start
    logging.info("[run %d/%d] %s d=%d: %d steps in %s (%.1f min elapsed)", k, len(experiment.runs),
                 mode, d, config.num_train_steps, run_dir, elapsed / 60)
    print(f"[run {k}/{len(experiment.runs)}] {mode} d={d}: {config.num_train_steps} steps "
          f"({elapsed / 60:.1f} min elapsed)", flush=True)
    train.train_and_evaluate(config, run_dir)

  num_samples = min(settings.num_samples, train_data.num_examples)
  print(f"evaluating {len(experiment.runs)} generators on {num_samples} samples "
        f"({network_name} features)", flush=True)
  rows = []
  os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
  for mode, d, config, run_dir in experiment.runs:
    role = "teacher" if mode == "teacher" else "student"
    metrics, first, restored = evaluate_run(run_dir, role, evaluators, train_data, mesh, settings,
                                            eval_batch)
    params = stats.count_params(
        restored.method.networks(restored.state, restored.frozen)[role].variables["params"])
    rows.append({"method": mode, "d": int(d), "params": int(params), **metrics})
    visualize.save_png(sample_grid(first), os.path.join(workdir, "samples", f"{mode}_d{d}.png"))
    logging.info("%s d=%d: %s", mode, d, rows[-1])
  wall = time.time() - start
  write_text(os.path.join(workdir, "results.json"), json.dumps(rows, indent=2))
  write_text(os.path.join(workdir, "results.md"),
             results_markdown(rows, settings, network_name, note, wall))
  plot_fid_vs_params(rows, os.path.join(workdir, "fid_vs_params.png"), network_name)
  print(results_markdown(rows, settings, network_name, note, wall), flush=True)
  return rows


main = experiment_main(settings_from_flags, run_experiment)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
