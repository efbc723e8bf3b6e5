"""NICKEL & DiME: a channel-pruned StyleGAN2 student of a StyleGAN2 teacher (methods/nickel_dime.py).

The generator and discriminator fields describe the TEACHER (a pickle or run of another
architecture is a one-line error); the student is that generator with `student.pruning_ratio`
of every layer's channels pruned; D_S and D_T share the discriminator fields.

Variants (`--config=configs/nickel_dime.py:NAME`):
  small                 (default) the configs/stylegan2.py small teacher (32 px digits), p = 0.7,
                        DiME on a randomly initialised digit classifier (seeded, asked for by
                        name: the shipped trained one is the FID network, so DiME does not
                        train against the evaluator; no download), NICKEL at 8 px; give the
                        teacher with --config.teacher.workdir=DIR (a run of
                        `--config=configs/stylegan2.py`) or --config.teacher.network=FILE.pkl.
  ffhq256_p50 ... _p95  the reference's paper256 setup (channel_base 16384, channel_max 512, 8
                        mapping layers, z/w 512) at p = 0.5, 0.7, 0.8, 0.9, 0.95: DINO ResNet-50
                        and CLIP RN50 moments (weights 20 + 20, 15 + 15, micro-batch 8), NICKEL
                        weight 10 at 64 px over 4 Haar levels, batch 64; on an image folder
                        (`--config.data.path`) with the teacher's pickle and the phi weights
                        (`--config.dime.networks.dino.weights`, `...clip.weights`).
"""

import ml_collections

from configs import stylegan2

# The paper's MACs reductions (NICKEL & DiME, FFHQ-256 table) per pruning ratio, in percent.
PAPER_MACS_REDUCTION = {0.5: 74.96, 0.7: 90.73, 0.8: 95.73, 0.9: 98.92, 0.95: 99.69}
FFHQ_VARIANTS = {f"ffhq256_p{round(p * 100)}": p for p in PAPER_MACS_REDUCTION}
VARIANTS = ("small", *FFHQ_VARIANTS)


def _network(network: str, normalization: str = "none", random_init: bool = False
             ) -> ml_collections.ConfigDict:
  """A frozen feature network (gankd_jax/models/embedding.py, or the shipped digit_classifier):
  its name, weights file (required unless random_init; a missing one is a one-line error naming
  this field), input normalisation (none: [-1, 1] as the reference feeds; imagenet; clip; images
  are resized to the network's input size, CLIP's 224 as the reference), random_init (a
  randomly initialised network, only when asked for here) and the seed of that draw."""
  return ml_collections.ConfigDict({
      "network": network, "weights": "", "normalization": normalization,
      "random_init": random_init, "seed": 0})


def _phi(network: str, first: float, second: float, random_init: bool = False
         ) -> ml_collections.ConfigDict:
  """A DiME embedding network (`_network`) with the weights of its first and second moments."""
  entry = _network(network, random_init=random_init)
  entry.update({"first_weight": first, "second_weight": second})
  return entry


def get_config(variant: str = "small") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant '{variant}' of configs/nickel_dime.py; choose from "
                     f"{', '.join(VARIANTS)}")
  config = stylegan2.get_config("small" if variant == "small" else "paper256")
  config.method = "nickel_dime"
  del config["init_from"]

  config.teacher = ml_collections.ConfigDict()
  config.teacher.network = ""    # A stylegan2-ada-pytorch network pickle (G_ema -> G_T, D -> D_T).
  config.teacher.workdir = ""    # Or a run of configs/stylegan2.py (its G_ema and D).

  config.student = ml_collections.ConfigDict()
  config.student.pruning_ratio = 0.7
  config.student.criterion = "l1"          # l1 | random | saliency | content_aware
  config.student.criterion_samples = 400   # saliency: teacher samples scored (the reference's 400).
  config.student.seed = 0

  config.nickel = ml_collections.ConfigDict()
  config.nickel.weight = 10.0
  config.nickel.resolution = 8             # The reference: 64 at 256 px (a quarter of the side).
  config.nickel.levels = 3                 # Haar levels (the reference: 4).

  config.dime = ml_collections.ConfigDict()
  config.dime.form = "moments"             # moments | mmd | none
  config.dime.micro_batch = 8              # Moments per micro-batch (the reference's per-GPU 8).
  config.dime.num_target_samples = 2048    # Teacher samples behind the target moments.
  config.dime.target_seed = 0
  config.dime.mmd_bandwidths = (0.5, 1.0, 2.0, 4.0)  # RBF bandwidths, relative to sqrt(dim).
  config.dime.networks = ml_collections.ConfigDict()
  # Random weights: the trained digit classifier is the evaluation network (eval.evaluators).
  config.dime.networks.digits = _phi("digit_classifier", 20.0, 20.0, random_init=True)

  # Not in NICKEL & DiME: output distillation as earlier StyleGAN2-compression work does it (CAGAN:
  # L1 3 + LPIPS 3 on the same latents; an arm of the experiment); 0: off. The perceptual term
  # is the mean absolute difference of `network`'s features of the student's and the teacher's
  # images (LPIPS needs VGG weights and its learnt heads; here any feature network by name).
  config.output_kd = ml_collections.ConfigDict()
  config.output_kd.l1 = 0.0
  config.output_kd.perceptual = 0.0
  config.output_kd.network = _network("digit_classifier", random_init=True)

  # False: each loss weight is a constant of the compiled step and a term of weight 0 is left out
  # of it. True: the weights are inputs of the step and every term this config can compute
  # (DiME unless dime.form is none, NICKEL, output KD) is compiled, one of weight 0 skipped at run
  # time, so runs that differ only in weights share one compiled step through JAX's persistent
  # compilation cache (experiments/nickel_dime.py's arms: XLA:CPU compiles a step in minutes).
  config.weights_as_step_inputs = False

  config.best_checkpoint_metric = "student/fid"
  config.eval.evaluators.paired.every = 0  # Student vs teacher on the same latents (PSNR, SSIM).
  if variant == "small":
    config.num_train_steps = 1000
  else:
    config.student.pruning_ratio = FFHQ_VARIANTS[variant]
    # Printed by model_stats next to the measured reduction.
    config.paper_macs_reduction = PAPER_MACS_REDUCTION[config.student.pruning_ratio]
    config.nickel.resolution = 64
    config.nickel.levels = 4
    config.dime.num_target_samples = 10000
    config.dime.networks = ml_collections.ConfigDict()
    config.dime.networks.dino = _phi("resnet50", 20.0, 20.0)
    config.dime.networks.clip = _phi("clip_rn50", 15.0, 15.0)
    config.output_kd.network = _network("vgg16", "imagenet")  # LPIPS's backbone.
    config.batch_size = 64                 # The reference's 4 GPUs x ... = 64 images per step.
    config.num_train_steps = 40_000_000 // 64  # kimg 40000.
  return config
