"""Aguinaldo et al. (2019): compressing unconditional GANs by knowledge distillation.

Variants (`--config=configs/aguinaldo.py:NAME`):
  teacher     train the DCGAN teacher as a WGAN-GP (the paper's W-DCGAN);
  mse         distil a student by MSE to the teacher on the same latents (no discriminator);
  joint       alpha * adversarial (student critic on real data) + (1 - alpha) * MSE;
  scratch     the same student trained as an ordinary GAN (the baseline).
(none) is `teacher`. Every variant runs on the embedded digits (32x32 grey) by default; set
`--config.data.name=mnist|cifar10|celeb_a|image_folder` (and `data.image_size=64` for faces).
Students read their teacher from `--config.teacher.workdir=DIR` (a finished teacher run) or
`--config.teacher.weights=FILE.npz` (its generator's variables, architecture `family` at
`teacher.d`); with both empty, the teacher trains first in the same run for
`teacher.num_train_steps` steps.
"""

import ml_collections

from configs import base
from gankd_jax import data

VARIANTS = ("teacher", "mse", "joint", "scratch")


def get_config(variant: str = "teacher") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant '{variant}' of configs/aguinaldo.py; choose from "
                     f"{', '.join(VARIANTS)}")
  config = base.get_config()
  config.method = "aguinaldo"
  config.mode = variant
  config.family = "dcgan"             # Key in gankd_jax.models.LATENT_GENERATORS.
  config.nz = 100                     # Latent size (DCGAN's).
  config.batch_size = 64              # WGAN-GP's and DCGAN's batch.
  # Critic steps (generator updates = steps / loss.n_critic; mse: one per step).
  # Every step of the run. The student's budget: 5000 critic steps (adversarial) or 1000 MSE steps;
  # mse / joint as they stand train their teacher first in the run (teacher.workdir empty), so
  # their count includes its 5000 steps. With --config.teacher.workdir (or .weights) set, set
  # --config.num_train_steps to the student's budget alone.
  student_steps = 5000 if variant in ("teacher", "joint", "scratch") else 1000
  in_run_teacher_steps = 5000 if variant in ("mse", "joint") else 0
  config.num_train_steps = student_steps + in_run_teacher_steps
  config.log_every = 100
  config.eval_every = 1000
  config.checkpoint_every = 1000

  config.data = data.unconditional_data_config()   # Embedded digits at 32x32.

  config.teacher = ml_collections.ConfigDict()
  config.teacher.d = 32               # Depth scale factor: widths 4d, 2d, d at 32 px.
  config.teacher.workdir = ""         # A teacher run to distil; "" trains one first in this run.
  config.teacher.weights = ""         # Or a teacher generator's variables .npz (runs.save_variables).
  # Only when workdir and weights are "": teacher steps before the student's.
  config.teacher.num_train_steps = in_run_teacher_steps or 5000
  config.student = ml_collections.ConfigDict()
  config.student.d = 4
  config.discriminator = ml_collections.ConfigDict()
  config.discriminator.d = 0          # 0: the teacher's d (one critic size for every run).
  config.discriminator.norm = "layer"  # WGAN-GP critic: no BatchNorm (layer | instance | none).

  config.loss = ml_collections.ConfigDict()
  config.loss.gan = "wgan_gp"         # wgan_gp | hinge | lsgan | vanilla
  config.loss.lambda_gp = 10.0        # Gulrajani et al.'s gradient-penalty weight.
  config.loss.n_critic = 5            # Critic steps per generator update (1 for the others).
  config.loss.alpha = 0.5             # joint: alpha * adversarial + (1 - alpha) * MSE.

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.lr = 1e-4          # WGAN-GP's Adam(1e-4, 0.5, 0.9), constant.
  config.optimizer.b1 = 0.5
  config.optimizer.b2 = 0.9

  # VoL of every generator's outputs; FID / IS: the experiment (digit-classifier features).
  config.eval.evaluators = base.evaluators("sharpness")
  config.eval.batch_size = 128
  config.eval.num_sample_images = 16
  return config
