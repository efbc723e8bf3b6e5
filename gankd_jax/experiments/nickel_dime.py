"""NICKEL & DiME (Yeo et al., ECCV 2024) on the embedded digits: which of its parts helps a pruned
StyleGAN2 student, arm by arm.

  python -m gankd_jax.experiments.nickel_dime --workdir=DIR [--teacher_workdir=RUN] [--full]

The teacher is the small StyleGAN2 of configs/stylegan2.py, trained first in DIR/runs/teacher
through the shared loop (`--teacher_steps`), or an existing run of that config
(`--teacher_workdir`) or a network pickle (`--teacher_network`). Then, for every pruning ratio
and seed, one student per arm, all with the same pruned start (the teacher's l1-kept slices),
the same D_S initialisation, latents, data order, steps and batch; an arm is a set of config
overrides of configs/nickel_dime.py (`ARMS`):

  adversarial   softplus losses against D_S and D_T only (DiME off, NICKEL off)
  output_kd     + L1 and a perceptual term to the teacher's image on the same latents (CAGAN's
                output distillation, weights 3 + 3; the perceptual network is the small
                config's random digit classifier: LPIPS needs VGG weights)
  dime          + DiME (moments of a randomly initialised digit classifier's features)
  nickel        + NICKEL (D_S reproduces the teacher's 8 px synthesis features, Haar high bands)
  nickel_dime   both: the paper's method

Every run goes through the shared loop in DIR/runs/<name> (a killed experiment resumes where it
stopped); the loop evaluates the student's FID every `--eval_every` steps (fid_vs_step.png).
Then every student and the teacher are evaluated on the same `--num_samples` fixed latents with
the SHIPPED, TRAINED digit classifier (metrics/digit_classifier.py), a network no arm trained
with (DiME's and output KD's phi are the same architecture at seeded random weights): FID, KID,
precision / recall (k = 3) against the held-out digits (the eval split) and against the teacher's
images on the same latents. Outputs:

  DIR/results.json    rows {"arm", "pruning_ratio", "params", "macs", "fid", "kid", "precision",
                      "recall", "seed", "fid_vs_teacher", "kid_vs_teacher",
                      "precision_vs_teacher", "recall_vs_teacher", "d_logit_gap"}
  DIR/results.md      the table and the paper's two claims checked on it
  DIR/fid_vs_step.png the loop's student FID over training, per arm and ratio
  DIR/d_logits.png    mean D_S(x) and D_S(G_S z) over training, per arm (the paper's Figure 3)
  DIR/samples/<run>.png  teacher | student on the same latents
"""
from __future__ import annotations

import dataclasses
import json
import os
import struct
import time
from typing import Any, Optional

from absl import app, flags, logging

from gankd_jax.cli import define_precision_flag, experiment_main, parse_flags

FLAGS = flags.FLAGS

# Each arm as loss weights over configs/nickel_dime.py:small (whose DiME and NICKEL are on). The
# weights are inputs of the step (`SHARED_STEP`), so every arm of a ratio runs one compiled step.
OUTPUT_KD = {"output_kd.l1": 3.0, "output_kd.perceptual": 3.0}  # CAGAN's kd_l1 / kd_lpips 3 + 3.
NO_DIME = {"dime.networks.digits.first_weight": 0.0, "dime.networks.digits.second_weight": 0.0}
NO_NICKEL = {"nickel.weight": 0.0}
ARMS: dict[str, dict[str, Any]] = {
    "adversarial": {**NO_DIME, **NO_NICKEL},
    "output_kd": {**NO_DIME, **NO_NICKEL, **OUTPUT_KD},
    "dime": NO_NICKEL,
    "nickel": NO_DIME,
    "nickel_dime": {},
}
SHARED_STEP = {"weights_as_step_inputs": True}
ROW_KEYS = ("arm", "pruning_ratio", "params", "macs", "fid", "kid", "precision", "recall")
METRICS = ("fid", "kid", "precision", "recall")
VS_TEACHER = tuple(f"{k}_vs_teacher" for k in METRICS)
FEATURES = "digit_classifier"
# The paper's Figure 3: D_S's mean logit on reals (Dmain) and on the student's fakes (Dmain).
REAL_LOGIT, FAKE_LOGIT = "train/scores/real", "train/scores/fake_d_s"
DEFAULTS = {"ratios": [0.9], "seeds": [0], "steps": 200}
FULL = {"ratios": [0.9, 0.7], "seeds": [0, 1, 2], "steps": 1000}


def define_flags():
  """Defines the command's flags; only when run as a command (see experiments/aguinaldo.py)."""
  flags.DEFINE_string("workdir", None, "Directory for the runs and the results.")
  flags.DEFINE_string("teacher_workdir", None, "An existing run of configs/stylegan2.py (small) "
                      "to distil; default: train one in DIR/runs/teacher.")
  flags.DEFINE_string("teacher_network", None, "Or a stylegan2-ada-pytorch network pickle of the "
                      "small teacher's architecture.")
  flags.DEFINE_integer("teacher_steps", 1500, "Steps of the teacher trained in DIR/runs/teacher.")
  flags.DEFINE_list("arms", list(ARMS), f"Arms to run, of {', '.join(ARMS)}.")
  flags.DEFINE_list("ratios", None, "Pruning ratios p in [0, 1) (default 0.9; --full: 0.9,0.7).")
  flags.DEFINE_list("seeds", None, "Seeds of every arm (default 0; --full: 0,1,2).")
  flags.DEFINE_integer("steps", None, "Training steps of every student (default "
                       f"{DEFAULTS['steps']}; --full: {FULL['steps']}).")
  flags.DEFINE_bool("full", False, f"Ratios {FULL['ratios']}, seeds {FULL['seeds']}, "
                    f"{FULL['steps']} steps (explicit --ratios/--seeds/--steps win).")
  flags.DEFINE_integer("batch_size", 32, "Batch size of every student.")
  flags.DEFINE_integer("eval_every", 50, "Steps between the loop's FID evaluations.")
  flags.DEFINE_integer("num_samples", 1000, "Fixed latents per generator for the final metrics.")
  define_precision_flag("float32", "every run's config.precision, its evaluations included")
  flags.mark_flags_as_required(["workdir"])


@dataclasses.dataclass
class Settings:
  arms: list
  ratios: list
  seeds: list
  steps: int
  teacher_steps: int
  teacher_workdir: Optional[str] = None
  teacher_network: Optional[str] = None
  batch_size: int = 32
  eval_every: int = 50
  num_samples: int = 1000
  log_every: int = 10
  precision: str = "float32"  # Every run's config.precision.
  # Dotted config fields set on every student (tests: tiny widths), and on a trained teacher.
  overrides: dict = dataclasses.field(default_factory=dict)
  teacher_overrides: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Run:
  name: str
  arm: str             # "teacher" for the teacher.
  ratio: float
  seed: int
  config: Any
  workdir: str


# ------------------------------------------------------------------------------------ planning
def check_settings(settings: Settings) -> None:
  """One-line ValueErrors for bad flags, before anything is built."""
  for arm in settings.arms:
    if arm not in ARMS:
      raise ValueError(f"--arms: unknown arm '{arm}'; choose from {', '.join(ARMS)}")
  if not settings.arms or len(set(settings.arms)) != len(settings.arms):
    raise ValueError(f"--arms: give each arm once, got {','.join(settings.arms) or 'none'}")
  for ratio in settings.ratios:
    if not 0.0 <= ratio < 1.0:
      raise ValueError(f"--ratios: a pruning ratio must be in [0, 1), got {ratio}")
  if not settings.ratios or not settings.seeds:
    raise ValueError("--ratios and --seeds need at least one value each")
  if len({round(r * 100) for r in settings.ratios}) != len(settings.ratios):
    raise ValueError(f"--ratios: give ratios at least 0.01 apart (they name the runs), got "
                     f"{','.join(map(str, settings.ratios))}")
  for name in ("steps", "teacher_steps", "batch_size", "eval_every", "num_samples", "log_every"):
    if getattr(settings, name) <= 0:
      raise ValueError(f"--{name} must be positive, got {getattr(settings, name)}")
  if settings.num_samples < 10:
    raise ValueError(f"--num_samples must be >= 10, got {settings.num_samples}")
  if settings.teacher_workdir and settings.teacher_network:
    raise ValueError("give one of --teacher_workdir and --teacher_network, not both")
  if settings.teacher_network and not os.path.isfile(settings.teacher_network):
    raise ValueError(f"--teacher_network: no such network pickle: {settings.teacher_network}")
  if settings.teacher_workdir and not os.path.isfile(
      os.path.join(settings.teacher_workdir, "config.json")):
    raise ValueError(f"--teacher_workdir: {settings.teacher_workdir} holds no run (no config.json)")


def _override(config, overrides: dict):
  config.update_from_flattened_dict(dict(overrides))
  return config


def _schedule(config, settings: Settings, steps: int):
  config.num_train_steps = steps
  config.log_every = min(settings.log_every, steps)
  config.eval_every = min(settings.eval_every, steps)
  config.checkpoint_every = max(config.eval_every, steps // 4)
  config.num_devices = 1
  config.precision = settings.precision
  return config


def run_name(arm: str, ratio: float, seed: int) -> str:
  return f"{arm}_p{round(ratio * 100):02d}_s{seed}"


def plan(settings: Settings, workdir: str) -> list[Run]:
  """Every run (teacher first when trained here), each config validated before anything trains."""
  from configs import nickel_dime as nd_config
  from configs import stylegan2 as sg_config
  from gankd_jax.methods import nickel_dime
  from gankd_jax.methods import stylegan2 as sg_method
  runs_dir = os.path.join(os.path.abspath(workdir), "runs")
  runs, teacher_dir = [], settings.teacher_workdir
  if not (settings.teacher_workdir or settings.teacher_network):
    teacher_dir = os.path.join(runs_dir, "teacher")
    teacher = _override(sg_config.get_config("small"), settings.teacher_overrides)
    teacher.seed = settings.seeds[0]
    _schedule(teacher, settings, settings.teacher_steps)
    teacher.eval_every = max(settings.teacher_steps // 3, 1)
    sg_method.check_config(teacher)
    runs.append(Run("teacher", "teacher", 0.0, teacher.seed, teacher, teacher_dir))
  for ratio in settings.ratios:
    for seed in settings.seeds:
      for arm in settings.arms:
        config = nd_config.get_config("small")
        config.teacher.workdir = os.path.abspath(teacher_dir) if teacher_dir else ""
        config.teacher.network = settings.teacher_network or ""
        config.student.pruning_ratio = float(ratio)
        config.seed = int(seed)
        config.batch_size = settings.batch_size
        _schedule(config, settings, settings.steps)
        config.best_checkpoint_metric = ""  # Every arm is evaluated at its last step.
        # The loop's FID (fid_vs_step.png): the student only, on the trained classifier.
        config.eval.evaluators.fid.update(every=0, features=FEATURES, roles=("student",))
        _override(config, {**SHARED_STEP, **ARMS[arm], **settings.overrides})
        nickel_dime.check_config(config)
        sg_method.check_config(config)
        runs.append(Run(run_name(arm, ratio, seed), arm, float(ratio), int(seed), config,
                        os.path.join(runs_dir, run_name(arm, ratio, seed))))
  return runs


# ------------------------------------------------------------------------------------ scalars
def read_scalars(run_dir: str, tags: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
  """(step, value) series of `tags` from the run's TensorBoard event files (the loop's train
  scalars; read with TensorBoard's protos, no TensorFlow), last value per step."""
  from tensorboard.compat.proto import event_pb2
  from tensorboard.util import tensor_util
  series: dict[str, dict[int, float]] = {tag: {} for tag in tags}
  names = sorted(n for n in os.listdir(run_dir) if n.startswith("events.out.tfevents"))
  for name in names:
    with open(os.path.join(run_dir, name), "rb") as f:
      data = f.read()
    pos = 0
    while pos + 12 <= len(data):  # TFRecord: length, its CRC, the record, its CRC.
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      record = data[pos + 12:pos + 12 + length]
      pos += 12 + length + 4
      if len(record) < length:
        break  # A record still being written.
      event = event_pb2.Event.FromString(record)
      for value in event.summary.value:
        if value.tag in series:
          number = (value.simple_value if value.WhichOneof("value") == "simple_value"
                    else float(tensor_util.make_ndarray(value.tensor)))
          series[value.tag][int(event.step)] = number
  return {tag: sorted(points.items()) for tag, points in series.items()}


def logit_gap(scalars: dict[str, list[tuple[int, float]]]) -> Optional[float]:
  """Mean D_S(x) - D_S(G_S z) over the last half of training (how far the two drifted apart)."""
  real, fake = dict(scalars.get(REAL_LOGIT, [])), dict(scalars.get(FAKE_LOGIT, []))
  steps = sorted(set(real) & set(fake))
  if not steps:
    return None
  late = [s for s in steps if s >= steps[-1] / 2] or steps
  return float(sum(real[s] - fake[s] for s in late) / len(late))


# ------------------------------------------------------------------------------------ evaluation
class Evaluator:
  """The trained digit classifier's features of fixed-latent samples, and the metrics of
  gankd_jax.metrics between feature sets."""

  def __init__(self, mesh, batch_size: int, precision: str = "float32"):
    import ml_collections
    from gankd_jax import evaluation
    from gankd_jax.metrics.features import FeatureExtractor
    from gankd_jax.models import layers
    apply, variables, _ = evaluation.FEATURE_LOADERS[FEATURES](ml_collections.ConfigDict())
    self.extractor = FeatureExtractor(layers.with_precision(precision, apply), variables,
                                      batch_size, mesh)
    self.batch_size = self.extractor.batch_size

  def features(self, images) -> Any:
    import numpy as np
    parts = [self.extractor(images[i:i + self.batch_size])["features"]
             for i in range(0, len(images), self.batch_size)]
    return np.concatenate(parts)

  def real_features(self, dataset, num: int):
    """Features of the first `num` examples of `dataset` (the held-out digits)."""
    import numpy as np
    from gankd_jax.data import pipeline
    parts = []
    for batch in pipeline.eval_batches(dataset, self.batch_size, 0, 1, max_examples=num):
      mask = np.asarray(batch["mask"], bool)
      parts.append(self.features(np.asarray(batch["image"])[mask]))
    return np.concatenate(parts)[:num]

  @staticmethod
  def compare(reference, fake) -> dict[str, float]:
    """FID, KID (mean), precision and recall (k = 3) of `fake` against `reference` features."""
    import jax
    import numpy as np
    from gankd_jax import parallel
    from gankd_jax.metrics import fid, kid, precision_recall
    stats = []
    for rows in (reference, fake):
      gaussian = fid.GaussianStats(rows.shape[1])
      gaussian.update(rows)
      stats.append(gaussian.result())
    local = jax.sharding.Mesh(np.asarray(jax.local_devices()), (parallel.DATA_AXIS,))
    pr = precision_recall.precision_recall(reference, fake, k=3, mesh=local)
    return {"fid": float(fid.frechet_distance(*stats[1], *stats[0])),
            "kid": float(kid.kernel_inception_distance(reference, fake)[0]),
            "precision": float(pr["precision"]), "recall": float(pr["recall"])}


def generate(restored, num: int, batch_size: int) -> dict[str, Any]:
  """Student and teacher images on the evaluation latents of examples 0..num-1 (methods/common.py;
  the same for every run), in fixed batches so every batch's noise is the same everywhere; in the
  run's config.precision."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from gankd_jax.models import layers
  method = restored.method
  step = jax.jit(layers.with_precision(layers.precision_of(restored.config), method.generate))
  image_shape = method.image_shape
  out: dict[str, list] = {}
  for start in range(0, num, batch_size):
    batch = {"index": jnp.arange(start, start + batch_size, dtype=jnp.int32),
             "image": jnp.zeros((batch_size, *image_shape), jnp.float32)}
    for role, images in jax.device_get(step(restored.state, batch, restored.frozen)).items():
      out.setdefault(role, []).append(np.asarray(images))
  return {role: np.concatenate(parts)[:num] for role, parts in out.items()}


def sample_grid(teacher, student, rows: int = 8, pairs: int = 3):
  """teacher | student column pairs on the same latents (as many as the images fill)."""
  from gankd_jax import visualize
  rows = min(rows, len(teacher))
  pairs = max(1, min(pairs, len(teacher) // rows))
  columns, labels = [], []
  for p in range(pairs):
    columns += [teacher[p * rows:(p + 1) * rows], student[p * rows:(p + 1) * rows]]
    labels += ["T", "S"]  # Teacher, student: a 32 px column has no room for words.
  return visualize.image_grid(columns, labels=labels)


# ------------------------------------------------------------------------------------ reporting
def _fmt(value, digits=2, kind="f"):
  return "n/a" if value is None else f"{value:.{digits}{kind}}"


def _mean(rows, key):
  values = [r[key] for r in rows if r.get(key) is not None]
  return sum(values) / len(values) if values else None


def summarise(rows: list[dict]) -> dict[tuple[str, float], dict[str, Any]]:
  """(arm, ratio) -> the seed-mean of every metric (one seed: its values)."""
  groups: dict[tuple[str, float], list[dict]] = {}
  for row in rows:
    if row["arm"] != "teacher":
      groups.setdefault((row["arm"], row["pruning_ratio"]), []).append(row)
  return {key: {k: _mean(group, k) for k in (*METRICS, *VS_TEACHER, "d_logit_gap")} | {
      "seeds": len(group)} for key, group in groups.items()}


def claims(rows: list[dict]) -> list[str]:
  """The paper's two claims, checked on these rows, as plain sentences."""
  means = summarise(rows)
  lines = []
  top = max(r for _, r in means)
  arms = {arm: m for (arm, ratio), m in means.items() if ratio == top}
  if "nickel_dime" in arms and len(arms) > 1:
    for metric, better in (("fid", min), ("kid", min), ("fid_vs_teacher", min)):
      scored = {a: m[metric] for a, m in arms.items() if m[metric] is not None}
      if "nickel_dime" not in scored:
        continue
      best = better(scored, key=scored.get)
      others = ", ".join(f"{a} {v:.4g}" for a, v in scored.items() if a != "nickel_dime")
      verdict = "holds" if best == "nickel_dime" else f"does not hold (best: {best})"
      lines.append(f"- Claim 1 (N&D beats the other arms at high compression), p={top:g}, "
                   f"{metric}: {verdict}; nickel_dime {scored['nickel_dime']:.4g} vs {others}.")
  else:
    lines.append("- Claim 1 is not checked: it needs the nickel_dime arm and another arm.")
  pairs = [("nickel", "adversarial"), ("nickel_dime", "dime")]
  checked = False
  for (arm, ratio), m in sorted(means.items()):
    for with_nickel, without in pairs:
      if arm != with_nickel or (without, ratio) not in means:
        continue
      gap, base = m["d_logit_gap"], means[(without, ratio)]["d_logit_gap"]
      if gap is None or base is None:
        continue
      checked = True
      verdict = "holds" if abs(gap) < abs(base) else "does not hold"
      lines.append(f"- Claim 2 (NICKEL keeps D_S(x) and D_S(G_S z) from drifting apart), p={ratio:g}:"
                   f" {verdict}: mean D_S(x) - D_S(G_S z) over the last half of training "
                   f"{gap:.3g} with NICKEL ({with_nickel}) vs {base:.3g} without ({without}).")
  if not checked:
    lines.append("- Claim 2 is not checked: it needs nickel with adversarial, or nickel_dime with "
                 "dime, at the same ratio.")
  return lines


def results_markdown(rows: list[dict], settings: Settings, teacher_desc: str, wall_s: float,
                     timing: dict[str, Any]) -> str:
  lines = [
      "# NICKEL & DiME on the embedded digits: the arms",
      "",
      f"Teacher: {teacher_desc}. Students: the teacher pruned by p (l1 criterion, the same "
      f"pruned start, D_S init, latents and data order in every arm), {settings.steps} steps at "
      f"batch {settings.batch_size}, seeds {', '.join(map(str, settings.seeds))}; arms "
      f"{', '.join(settings.arms)}. This invocation took {wall_s / 60:.1f} min (a resumed "
      "experiment counts only its own part)"
      + (f" (steady {timing['steps_per_s']:.2f} steps/s for {timing['run']}; compiles and "
         "evaluations apart; the machine may have been shared)" if timing.get("steps_per_s")
         else "") + ".",
      "",
      f"Evaluation: every student at its last step (no best-checkpoint selection), "
      f"{settings.num_samples} fixed latents per generator (methods/common.py's, the "
      "same for every row); features of the shipped digit classifier (trained on the digits' "
      "training split; not comparable with Inception-based numbers). No arm trained with it: "
      "DiME's phi and output KD's perceptual network are the same architecture at seeded random "
      "weights (configs/nickel_dime.py). fid / kid / precision / recall: against the held-out "
      "digits (the eval split); *_vs_teacher: against the teacher's images on the same latents. "
      "Sample grids: T = teacher, S = student, same latents. The d-logit gap: mean D_S(x) - D_S(G_S z) over the last half of training (the train "
      "scalars of d_logits.png).",
      "",
      "What this default does not test: the paper's phi networks (DINO ResNet-50, CLIP RN50), "
      "256 px FFHQ and its training length (they need a GPU and downloaded weights: "
      "configs/nickel_dime.py:ffhq256_p*); the loss weights are the reference's, set for those.",
      "",
      "| arm | p | seed | params | MACs | FID | KID | precision | recall | FID vs T | KID vs T "
      "| prec. vs T | recall vs T | D_S gap |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    lines.append(
        f"| {r['arm']} | {r['pruning_ratio']:g} | {'-' if r['seed'] is None else r['seed']} | "
        f"{r['params']:,} | {r['macs']:,} | "
        f"{_fmt(r['fid'])} | {_fmt(r['kid'], 4, 'g')} | {_fmt(r['precision'], 3)} | "
        f"{_fmt(r['recall'], 3)} | {_fmt(r['fid_vs_teacher'])} | {_fmt(r['kid_vs_teacher'], 4, 'g')} | "
        f"{_fmt(r['precision_vs_teacher'], 3)} | {_fmt(r['recall_vs_teacher'], 3)} | "
        f"{_fmt(r['d_logit_gap'], 3)} |")
  if len(settings.seeds) > 1:
    lines += ["", "Means over seeds:", "", "| arm | p | FID | KID | FID vs T | D_S gap |",
              "|---|---:|---:|---:|---:|---:|"]
    for (arm, ratio), m in summarise(rows).items():
      lines.append(f"| {arm} | {ratio:g} | {_fmt(m['fid'])} | {_fmt(m['kid'], 4, 'g')} | "
                   f"{_fmt(m['fid_vs_teacher'])} | {_fmt(m['d_logit_gap'], 3)} |")
  lines += ["", "## The paper's claims on these numbers", "", *claims(rows), "",
            "A short run on a small teacher: a claim that does not hold here says what this "
            "budget shows, not what the paper's 256 px runs show.", ""]
  return "\n".join(lines)


def _save(fig, path: str) -> None:
  import matplotlib.pyplot as plt
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=100)
  plt.close(fig)
  os.replace(tmp, path)


def plot_fid_vs_step(curves: dict[str, list[tuple[int, float]]], teacher_fid, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, points in curves.items():
    if points:
      ax.plot(*zip(*points), marker=".", label=name)
  if teacher_fid is not None:
    ax.axhline(teacher_fid, color="black", linestyle=":", label="teacher")
  ax.set_yscale("log")
  ax.set_xlabel("training step")
  ax.set_ylabel(f"student FID ({FEATURES} features, held-out digits)")
  ax.set_title("FID over training (the loop's evaluations)")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7)
  _save(fig, path)


def plot_d_logits(series: dict[str, dict[str, list[tuple[int, float]]]], path: str) -> None:
  """One panel per ratio: D_S(x) solid and D_S(G_S z) dashed, one colour per arm."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  ratios = sorted({name.split("_p")[-1].split("_s")[0] for name in series}, reverse=True)
  fig, axes = plt.subplots(1, max(len(ratios), 1), figsize=(6.5 * max(len(ratios), 1), 4.5),
                           squeeze=False)
  colours = {arm: f"C{i}" for i, arm in enumerate(ARMS)}
  for ax, ratio in zip(axes[0], ratios):
    for name, scalars in series.items():
      if name.split("_p")[-1].split("_s")[0] != ratio:
        continue
      arm = name.split("_p")[0]
      for tag, style, what in ((REAL_LOGIT, "-", "D_S(x)"), (FAKE_LOGIT, "--", "D_S(G_S z)")):
        if scalars.get(tag):
          ax.plot(*zip(*scalars[tag]), style, color=colours.get(arm), label=f"{name} {what}")
    ax.set_title(f"p = 0.{ratio}: D_S's mean logits over training")
    ax.set_xlabel("training step")
    ax.set_ylabel("mean logit")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6)
  _save(fig, path)


def write_text(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


# ------------------------------------------------------------------------------------ the run
def read_summary(run_dir: str) -> dict[str, Any]:
  from gankd_jax import train
  with open(os.path.join(run_dir, train.SUMMARY_FILE)) as f:
    return json.load(f)


def _steady_rate(run: Run) -> Optional[float]:
  """The loop's steady steps/s of `run` (its last steps_per_sec scalar)."""
  points = read_scalars(run.workdir, ("steps_per_sec",))["steps_per_sec"]
  return points[-1][1] if points else None


def run_experiment(settings: Settings, workdir: str) -> list[dict]:
  """Plans (validating everything), trains every run, evaluates, writes the outputs."""
  from gankd_jax import checkpointing, data, parallel, runs as runs_lib, train, visualize
  check_settings(settings)
  runs = plan(settings, workdir)
  for run in runs:  # A workdir of other settings fails here, not after an hour.
    checkpointing.check_workdir_config(run.workdir, run.config)
  students = [r for r in runs if r.arm != "teacher"]
  start = time.time()
  for k, run in enumerate(runs, 1):
    print(f"[run {k}/{len(runs)}] {run.name}: {run.config.num_train_steps} steps "
          f"({(time.time() - start) / 60:.1f} min elapsed)", flush=True)
    summary = train.train_and_evaluate(run.config, run.workdir)
    if summary["steps"] < run.config.num_train_steps:  # SIGTERM: the loop saved and stopped.
      print(f"stopped in {run.name} at step {summary['steps']}; run the same command again to "
            "resume", flush=True)
      return []

  mesh = parallel.make_mesh(1)
  evaluator = Evaluator(mesh, 250, settings.precision)
  held_out = data.build_dataset(students[0].config.data, "eval")
  num_real = min(settings.num_samples, held_out.num_examples)
  print(f"evaluating {len(students)} students and the teacher on {settings.num_samples} latents "
        f"against {num_real} held-out digits ({FEATURES} features)", flush=True)
  real = evaluator.real_features(held_out, num_real)
  os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
  rows, teacher_features, teacher_images, curves, logits = [], None, None, {}, {}
  for run in students:
    restored = runs_lib.restore_run(run.workdir, mesh=mesh)
    images = generate(restored, settings.num_samples, 250)
    if teacher_features is None:  # The same frozen teacher, latents and noise in every run.
      teacher_images, teacher_features = images["teacher"], evaluator.features(images["teacher"])
      summary = read_summary(run.workdir)
      teacher_net = summary["networks"]["teacher"]
      rows.append({"arm": "teacher", "pruning_ratio": 0.0, "params": int(teacher_net["params"]),
                   "macs": int(teacher_net["macs"]), **evaluator.compare(real, teacher_features),
                   "seed": None, **{k: None for k in VS_TEACHER}, "d_logit_gap": None})
    student = evaluator.features(images["student"])
    summary = read_summary(run.workdir)
    scalars = read_scalars(run.workdir, (REAL_LOGIT, FAKE_LOGIT))
    logits[run.name] = scalars
    curves[run.name] = [(r["step"], r["student"]["fid"]) for r in train.read_evals(run.workdir)
                        if "fid" in r.get("student", {})]
    vs_teacher = evaluator.compare(teacher_features, student)
    rows.append({"arm": run.arm, "pruning_ratio": run.ratio,
                 "params": int(summary["networks"]["student"]["params"]),
                 "macs": int(summary["networks"]["student"]["macs"]),
                 **evaluator.compare(real, student), "seed": run.seed,
                 **{f"{k}_vs_teacher": v for k, v in vs_teacher.items()},
                 "d_logit_gap": logit_gap(scalars)})
    visualize.save_png(sample_grid(teacher_images, images["student"]),
                       os.path.join(workdir, "samples", f"{run.name}.png"))
    logging.info("%s: %s", run.name, rows[-1])
  wall = time.time() - start
  teacher_desc = (f"the small StyleGAN2 trained here for {settings.teacher_steps} steps"
                  if runs[0].arm == "teacher" else
                  f"{settings.teacher_workdir or settings.teacher_network}")
  timing = {"run": students[0].name, "steps_per_s": _steady_rate(students[0])}
  markdown = results_markdown(rows, settings, teacher_desc, wall, timing)
  write_text(os.path.join(workdir, "results.json"), json.dumps(rows, indent=2))
  write_text(os.path.join(workdir, "results.md"), markdown)
  plot_fid_vs_step(curves, rows[0]["fid"], os.path.join(workdir, "fid_vs_step.png"))
  plot_d_logits(logits, os.path.join(workdir, "d_logits.png"))
  print(markdown, flush=True)
  return rows


def _numbers(values, kind, name):
  try:
    return [kind(v) for v in values]
  except ValueError:
    raise ValueError(f"--{name} must be {kind.__name__}s, got {','.join(values)}") from None


def settings_from_flags() -> Settings:
  preset = FULL if FLAGS.full else DEFAULTS
  return Settings(
      arms=list(FLAGS.arms),
      ratios=_numbers(FLAGS.ratios, float, "ratios") if FLAGS.ratios else preset["ratios"],
      seeds=_numbers(FLAGS.seeds, int, "seeds") if FLAGS.seeds else preset["seeds"],
      steps=FLAGS.steps or preset["steps"], teacher_steps=FLAGS.teacher_steps,
      teacher_workdir=FLAGS.teacher_workdir, teacher_network=FLAGS.teacher_network,
      batch_size=FLAGS.batch_size, eval_every=FLAGS.eval_every, num_samples=FLAGS.num_samples,
      precision=FLAGS.precision)


def _compile_once():
  """Every arm and seed of a ratio runs the same programs (the weights are step inputs), and a
  resumed experiment those it ran: XLA:CPU takes minutes per StyleGAN2 step variant, so they are
  compiled once, into DIR/jit_cache."""
  import jax
  jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(FLAGS.workdir),
                                                              "jit_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


main = experiment_main(settings_from_flags, run_experiment, setup=_compile_once)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
