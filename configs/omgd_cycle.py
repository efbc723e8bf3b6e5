"""OMGD for unpaired translation (CycleGAN teachers, best-FID selection, student rounds).

Variants (`--config=configs/omgd_cycle.py:NAME`):
  (none)             the embedded unpaired data at 64x64, mobile-ResNet teachers and student
                     narrow enough for a 2-core CPU, FID in the digit classifier's features
                     (shipped with the package, so selection works offline);
  horse2zebra_s16, horse2zebra_s12, horse2zebra_s8, summer2winter_s16
                     the reference's setups (bytedance/OMGD scripts/cycle_gan/*/distill*.sh):
                     256x256, batch 1, mobile_resnet_9blocks teachers ngf 64 / 48 and students
                     ngf 16 / 12 / 8, lambda_cd 5e2 (horse2zebra) / 1e2 (summer2winter), n_dis 4,
                     m = save_epoch_freq 10 / 12 / 8 / 6, 100 + 100 teacher epochs, on TFDS
                     cycle_gan/<name> (or a CycleGAN folder:
                     --config.data.name=cycle_gan_folder --config.data.path=DIR), FID in
                     pytorch-fid's Inception features.
"""

import ml_collections

from configs import base
from gankd_jax import data

# variant -> (dataset, teacher ngf, student ngf, lambda_cd, m = save_epoch_freq, epoch steps)
# An epoch is max(|trainA|, |trainB|) iterations at batch 1: horse2zebra 1067 / 1334 images,
# summer2winter_yosemite 1231 / 962.
REFERENCE_SETUPS = {
    "horse2zebra_s16": ("horse2zebra", 64, 16, 5e2, 10, 1334),
    "horse2zebra_s12": ("horse2zebra", 48, 12, 5e2, 12, 1334),
    "horse2zebra_s8": ("horse2zebra", 48, 8, 5e2, 8, 1334),
    "summer2winter_s16": ("summer2winter_yosemite", 64, 16, 1e2, 6, 1231),
}
VARIANTS = ("", *REFERENCE_SETUPS)
REFERENCE_EPOCHS = 200  # nepochs 100 + nepochs_decay 100 teacher epochs.


def _generator(ngf: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"name": "mobile_resnet", "ngf": ngf, "norm": "instance"})


def _num_steps(config):
  """Whole rounds covering the configured teacher epochs, as a lazy reference: it follows any
  later change of m, n_dis, the epochs or `cycle.epoch_steps` (set from the data at start when
  `cycle.epoch_of_data`), unless num_train_steps itself is set."""
  cycle, opt = config.cycle, config.optimizer
  m = cycle.get_ref("m")
  epochs = opt.get_ref("nepochs") + opt.get_ref("nepochs_decay")
  rounds = (epochs + m - 1) // m
  return rounds * (m + cycle.get_ref("n_dis") * m) * cycle.get_ref("epoch_steps")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = base.get_config()
  config.method = "omgd_cycle"
  config.data = data.unpaired_data_config()
  config.data.num_threads = 4
  config.batch_size = 1                      # The reference's; a teacher step is 6 G passes.
  config.log_every = 25
  config.keep_checkpoints = 1
  config.best_checkpoint_metric = "student/fid"  # Against real B, as the paper reports.

  # Rounds: m teacher epochs, then n_dis * m student epochs against the selected G_A.
  # epoch_steps: steps per epoch. epoch_of_data (the reference variants): set at start from the
  # training data, ceil(max(|trainA|, |trainB|) / batch_size), as the reference's epoch; the
  # value here is then the reference dataset's, for planning and model_stats. The default has a
  # shorter "epoch" of 100 images, so that its few minutes hold three rounds (three selections)
  # rather than part of one.
  config.cycle = ml_collections.ConfigDict({"m": 2, "n_dis": 1, "epoch_steps": 100,
                                            "epoch_of_data": False})
  # metric: fid (G_A is kept when its FID against real B improves) | none (the latest G_A).
  # rewrite_on_either: also keep G_A when G_B's FID against real A improves (the reference's
  # best_net_G_teacher_A.pth is rewritten then; False is the paper's intent).
  config.selection = ml_collections.ConfigDict({"metric": "fid", "rewrite_on_either": False})

  config.teacher = _generator(16)     # G_A and G_B.
  # The user's teachers: G_A starts from init_from, G_B from init_from_b (a PyTorch .pth such as
  # junyanz's latest_net_G_A.pth / latest_net_G_B.pth, or a variables .npz); "" starts fresh.
  config.teacher.init_from = ""
  config.teacher.init_from_b = ""
  config.student = _generator(8)
  config.discriminator = ml_collections.ConfigDict({"ndf": 32, "norm": "instance"})

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.lr = 2e-4
  config.optimizer.b1 = 0.5
  config.optimizer.b2 = 0.999
  config.optimizer.nepochs = 4               # Teacher epochs at lr, then ...
  config.optimizer.nepochs_decay = 2         # ... teacher epochs of linear decay to 0.

  config.loss = ml_collections.ConfigDict()
  config.loss.gan_mode = "lsgan"
  config.loss.lambda_a = 10.0                # Cycle A -> B -> A.
  config.loss.lambda_b = 10.0                # Cycle B -> A -> B.
  config.loss.lambda_identity = 0.5          # Times lambda_a / lambda_b.
  config.loss.pool_size = 50                 # History of fakes per discriminator.
  config.loss.lambda_ssim = 1e1              # Student: 1 - SSIM(S, T).
  config.loss.lambda_style = 1e4             # Student: Gram (VGG16) L1.
  config.loss.lambda_feature = 1e1           # Student: VGG16 relu2_2 L1.
  config.loss.lambda_tv = 1e-5               # Student: total variation.
  config.loss.lambda_cd = 5e2                # Student: channel distillation.
  # Not in OMGD (0 in the reference variants): L1 from the student to the teacher's output. On
  # in this small default, which runs without VGG weights offline: SSIM alone on [-1, 1] lets
  # the student's colours drift (configs/omgd.py has the measurements).
  config.loss.lambda_pixel = 50.0

  config.vgg = ml_collections.ConfigDict()
  config.vgg.weights = ""
  config.vgg.input_normalization = "none"

  config.eval.evaluators = base.evaluators("paired", "fid")
  config.eval.evaluators.fid.features = "digit_classifier"
  # FID (and the selection) against the target domain's train + eval real images, as the
  # reference's real statistics (gan-compression's real_stat npz files: train + test; its issue
  # #81). KID and precision/recall, when turned on, alike.
  for name in ("fid", "kid", "precision_recall"):
    config.eval.evaluators[name].reference = "train+eval"
  config.eval.batch_size = 32
  config.eval.num_sample_images = 6

  if variant:
    if variant not in REFERENCE_SETUPS:
      raise ValueError(f"unknown variant '{variant}' of configs/omgd_cycle.py; choose from "
                       f"{', '.join(REFERENCE_SETUPS)}")
    name, teacher_ngf, student_ngf, lambda_cd, m, epoch_steps = REFERENCE_SETUPS[variant]
    config.data.name = "cycle_gan"
    config.data.tfds_name = name
    config.data.crop_size = 256
    config.batch_size = 1
    config.teacher = _generator(teacher_ngf)
    config.student = _generator(student_ngf)
    config.discriminator.ndf = 64
    config.loss.lambda_cd = lambda_cd
    config.loss.lambda_pixel = 0.0
    config.cycle.update({"m": m, "n_dis": 4, "epoch_steps": epoch_steps, "epoch_of_data": True})
    config.optimizer.nepochs = 100
    config.optimizer.nepochs_decay = 100
    config.eval.evaluators.fid.features = "inception"
    config.eval.batch_size = 16
    config.eval.num_sample_images = 8
    config.log_every = 100
    config.checkpoint_every = 5000
    config.eval_every = 25000                  # The reference's save_latest_freq.
    config.num_train_steps = _num_steps(config)
  else:
    config.num_train_steps = _num_steps(config)
    # After every round (the student's progress) and, on their own, at every selection.
    c = config.cycle
    config.eval_every = config.checkpoint_every = (c.m + c.n_dis * c.m) * c.epoch_steps
  return config
