"""OMGD: online multi-granularity distillation for paired image-to-image translation.

Variants (`--config=configs/omgd.py:NAME`):
  (none)      embedded grey->photo data at 64x64 (colourising crops of bundled photos), the
              U-Net family with instance norm, widths that train in about 11 minutes on a
              2-core CPU;
  unet64      the same with the reference's batch norm;
  resnet64    the same data with the ResNet family (mobile_resnet, instance norm as the reference);
  unet_s16, unet_s12, unet_s8, resnet_s16, resnet_s12, resnet_s8
              the paper's 256x256 setups (wide/deep/student ngf 64/16/16, 48/12/12, 48/12/8;
              ndf 128, or 96 for the smaller students) on a pix2pix folder
              (`--config.data.path=DIR`).
"""

import ml_collections

from configs import base
from gankd_jax import data

# variant -> (generator family, wide ngf, deep ngf, student ngf, ndf)
REFERENCE_SETUPS = {
    "unet_s16": ("unet", 64, 16, 16, 128),
    "unet_s12": ("unet", 48, 12, 12, 128),
    "unet_s8": ("unet", 48, 12, 8, 96),
    "resnet_s16": ("resnet", 64, 16, 16, 128),
    "resnet_s12": ("resnet", 48, 12, 12, 128),
    "resnet_s8": ("resnet", 48, 12, 8, 96),
}

# Per family: (wide teacher, deep teacher, student, norm, n_share, lambda_cd), from the
# reference scripts (scripts/{unet,resnet}_pix2pix/edges2shoes/distill*.sh).
FAMILIES = {
    "unet": ("unet", "unet_deepest", "unet", "batch", 5, 1e1),
    "resnet": ("mobile_resnet", "mobile_resnet_deepest", "mobile_resnet", "instance", 3, 1e2),
}


# The default: small enough to train in minutes on a 2-core CPU at 64x64. The U-Net family,
# because XLA:CPU runs its plain convolutions 2x faster than mobile_resnet's depthwise ones
# (measured at ngf 32/8/8: 0.55 s vs 1.05 s per fused step at batch 4), with instance norm
# instead of the reference's batch norm: batch-4 running statistics describe held-out images
# poorly (the batch-norm deep teacher printed flat red in evaluation), and instance norm behaves
# the same in training and evaluation. Student and deep teacher at ngf 16, not 8: an ngf-8
# student learns too slowly to follow the moving teachers within the default's budget (it
# explained under 10% of the wide teacher's held-out variance; at ngf 16, two thirds); the deep
# teacher as wide as the student, as in the reference setups. (These measurements, and the
# lambda_pixel ones below, were taken on the earlier embedded_edges2photo default.)
# (generator family, wide ngf, deep ngf, student ngf, ndf, norm).
DEFAULT_SETUP = ("unet", 32, 16, 16, 64, "instance")
# The default's size and data with the reference norms (the tests' small runs start from unet64).
EMBEDDED_SETUPS = {"unet64": ("unet", 32, 16, 16, 64, "batch"),
                   "resnet64": ("resnet", 32, 16, 16, 64, "instance")}
VARIANTS = ("", *EMBEDDED_SETUPS, *REFERENCE_SETUPS)


def _set_networks(config, family: str, ngf_wide: int, ngf_deep: int, ngf_student: int, ndf: int,
                  norm: str | None = None):
  wide, deep, student, reference_norm, n_share, lambda_cd = FAMILIES[family]
  norm = norm or reference_norm
  # num_downs: a U-Net's depth; None: log2 of data.crop_size (pix2pix). Other families ignore it.
  generator = lambda name, ngf: ml_collections.ConfigDict(
      {"name": name, "ngf": ngf, "norm": norm,
       "num_downs": ml_collections.FieldReference(None, field_type=int)})
  config.teacher_wide = generator(wide, ngf_wide)
  # A teacher from the user (README "Compress your pix2pix model"; methods/teacher_file.py):
  # init_from: a PyTorch generator .pth or a variables .npz the wide teacher starts from;
  # frozen: keep it fixed (offline distillation: student losses only, no D, no deep teacher);
  # module: "pkg.module:Attr", a Flax generator of the user's (teacher protocol) instead of
  # `name`; n_blocks: a ResNet family's block count (None: the module's 9).
  config.teacher_wide.init_from = ""
  config.teacher_wide.frozen = False
  config.teacher_wide.module = ""
  config.teacher_wide.n_blocks = ml_collections.FieldReference(None, field_type=int)
  config.teacher_deep = generator(deep, ngf_deep)
  # The deep teacher starts from a file too (e.g. OMGD's unet_deepest_256 or
  # mobile_deepest_resnet .pth), trained online from there.
  config.teacher_deep.init_from = ""
  config.student = generator(student, ngf_student)
  config.discriminator = ml_collections.ConfigDict(
      {"ndf": ndf, "n_share": n_share, "norm": norm})
  config.loss.lambda_cd = lambda_cd


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = base.get_config()
  config.method = "omgd"
  config.num_train_steps = 1000               # ~11 minutes on a 2-core CPU.
  config.log_every = 50
  config.eval_every = 250
  config.checkpoint_every = 250
  config.best_checkpoint_metric = "student/psnr"  # The student against the ground truth.

  # Embedded grey->photo pairs at 64x64 (no download; data.name=embedded_edges2photo gives
  # edge maps as A instead); a data.path selects pix2pix_folder.
  config.data = data.default_data_config()
  config.data.num_threads = 4

  config.n_dis = 1                           # Update D and teachers every n_dis steps.
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.lr = 2e-4
  config.optimizer.b1 = 0.5
  config.optimizer.b2 = 0.999
  config.optimizer.constant_steps = -1       # -1: half of num_train_steps.
  config.optimizer.decay_steps = -1          # -1: the rest of num_train_steps.

  config.loss = ml_collections.ConfigDict()
  config.loss.gan_mode = "hinge"             # hinge | lsgan | vanilla
  config.loss.lambda_gan = 1.0               # Teachers: adversarial term.
  config.loss.lambda_recon = 100.0           # Teachers: L1 to the target.
  config.loss.lambda_ssim = 1e1              # Student, per teacher: 1 - SSIM(S, T).
  config.loss.lambda_style = 1e4             # Student, per teacher: Gram (VGG16) L1.
  config.loss.lambda_feature = 1e1           # Student, per teacher: VGG16 relu2_2 L1.
  config.loss.lambda_tv = 1e-5               # Student, per teacher: total variation.
  config.loss.lambda_cd = 0.0                # Student: channel distillation (wide teacher); set per family.
  # Not in OMGD: L1 from the student to each teacher's output. On in this small default, which
  # runs without VGG weights offline: the student's only image loss is then SSIM, which OMGD
  # computes on [-1, 1] images, where an off-colour or colour-inverted output also scores well
  # (luminance and structure terms both negative); default runs without it drifted to flat
  # magenta students. 50 rather than 10: the student's colours then keep up with the moving
  # teachers (default run, held-out student vs wide teacher L1 at the end: 0.088 at 10, 0.070 at
  # 50). 0 in the paper's setups (the variants below).
  config.loss.lambda_pixel = 50.0

  config.vgg = ml_collections.ConfigDict()
  config.vgg.weights = ""                    # torchvision vgg16-397923af.pth; "" searches caches.
  config.vgg.input_normalization = "none"    # none: (x+1)/2 as the reference; or imagenet.

  _set_networks(config, *DEFAULT_SETUP)

  if variant in EMBEDDED_SETUPS:
    _set_networks(config, *EMBEDDED_SETUPS[variant])
  elif variant:
    if variant not in REFERENCE_SETUPS:
      raise ValueError(f"unknown variant '{variant}' of configs/omgd.py; choose from "
                       f"{', '.join([*EMBEDDED_SETUPS, *REFERENCE_SETUPS])}")
    _set_networks(config, *REFERENCE_SETUPS[variant])
    config.loss.lambda_pixel = 0.0
    config.data.name = "pix2pix_folder"
    config.data.crop_size = 256
    config.num_train_steps = 200 * 50000 // 4   # edges2shoes: 100 + 100 epochs at batch 4.
    config.eval_every = 10000
    config.checkpoint_every = 5000
  return config
