"""StyleGAN2 teachers, trained as stylegan2-ada-pytorch's train.py trains them (no ADA), in
float32 everywhere (the reference runs its top 4 resolutions in float16, `num_fp16_res=4`;
`conv_clamp` 256 is kept).

Variants (`--config=configs/stylegan2.py:NAME`):
  small     (default) a small StyleGAN2 on the embedded digits (32x32 grey) that learns on two
            CPU cores within minutes; the teacher the NICKEL & DiME default distils.
  paper256  the reference's `--cfg=paper256` (FFHQ / LSUN at 256 px): channel_base 16384,
            channel_max 512, 8 mapping layers, R1 gamma 1, EMA 20 kimg, minibatch-std group 8;
            batch 8, the reference's per-GPU batch (its optimiser step averages 8 GPUs' = 64
            images: `--config.batch_size=64` for that; group and path-length batch stay
            per 8 only on 8 devices), x-flips on (the published FFHQ runs' `--mirror=1`), on
            `--config.data.path=FOLDER`.
  cifar     the reference's `--cfg=cifar` at 32 px: 2 mapping layers, gamma 0.01, EMA 500 kimg
            with ramp-up 0.05, no path length, no style mixing, 'orig' discriminator.
Every variant takes `--config.init_from=FILE.pkl` (a network pickle to fine-tune) and any
unconditional data source (`data.name=image_folder|mnist|cifar10|celeb_a`, `data.image_size`: a
power of two).
"""

import ml_collections

from configs import base
from gankd_jax import data

VARIANTS = ("small", "paper256", "cifar")


def get_config(variant: str = "small") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant '{variant}' of configs/stylegan2.py; choose from "
                     f"{', '.join(VARIANTS)}")
  config = base.get_config()
  config.method = "stylegan2"
  config.init_from = ""              # A stylegan2-ada-pytorch network pickle to start from.
  config.data = data.unconditional_data_config()  # Embedded digits at 32x32.

  config.generator = ml_collections.ConfigDict()
  config.generator.z_dim = 512
  config.generator.w_dim = 512
  config.generator.mapping_layers = 8
  config.generator.channel_base = 16384
  config.generator.channel_max = 512
  config.generator.architecture = "skip"   # orig | skip | resnet
  config.generator.conv_clamp = 256        # 0: no clamp (the reference's None).
  config.discriminator = ml_collections.ConfigDict()
  config.discriminator.channel_base = 16384
  config.discriminator.channel_max = 512
  config.discriminator.architecture = "resnet"
  config.discriminator.conv_clamp = 256
  config.discriminator.mbstd_group_size = 8
  config.discriminator.mbstd_num_channels = 1

  config.loss = ml_collections.ConfigDict()
  config.loss.r1_gamma = 1.0
  config.loss.r1_interval = 16             # The reference's D_reg_interval (lazy R1).
  config.loss.pl_weight = 2.0
  config.loss.pl_interval = 4              # G_reg_interval.
  config.loss.pl_decay = 0.01
  config.loss.pl_batch_shrink = 2
  config.loss.style_mixing_prob = 0.9

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.lr = 0.0025
  config.optimizer.b1 = 0.0
  config.optimizer.b2 = 0.99
  config.optimizer.eps = 1e-8
  config.ema = ml_collections.ConfigDict()
  config.ema.kimg = 20.0                   # G_ema half-life in thousands of images.
  config.ema.rampup = 0.0                  # 0: none; else ema_nimg <= images seen * rampup.

  config.batch_size = 8
  config.num_train_steps = 100_000
  config.log_every = 100
  config.eval_every = 5000
  config.checkpoint_every = 5000
  config.eval.evaluators = base.evaluators()
  config.eval.evaluators.fid.every = 0
  config.eval.batch_size = 64
  config.eval.num_sample_images = 16

  if variant == "small":
    # Digits: FID on the embedded digit classifier's features (no download).
    # train.py's `auto` config at 32 px on one GPU (batch 32, R1 gamma 0.0002 * 32^2 / 32, EMA
    # 10 kimg with ramp-up 0.05, 2 mapping layers), at a width two CPU cores train in minutes:
    # 64 channels up to 16 px, 32 at 32 px, z and w 64 (auto: 512 everywhere).
    config.generator.update(z_dim=64, w_dim=64, mapping_layers=2, channel_base=1024,
                            channel_max=64)
    config.discriminator.update(channel_base=1024, channel_max=64, mbstd_group_size=4)
    config.loss.r1_gamma = 0.0002 * 32 ** 2 / 32
    config.ema.kimg = 10.0
    config.ema.rampup = 0.05
    config.batch_size = 32
    config.num_train_steps = 1500          # ~20 min on 2 CPU cores; 3000 for a better teacher.
    config.log_every = 50
    config.eval_every = 500
    config.checkpoint_every = 500
    config.eval.evaluators.fid.features = "digit_classifier"
  elif variant == "cifar":
    config.data.name = "cifar10"
    config.generator.update(mapping_layers=2, channel_base=32768)
    config.discriminator.update(channel_base=32768, architecture="orig", mbstd_group_size=32)
    config.loss.update(r1_gamma=0.01, pl_weight=0.0, style_mixing_prob=0.0)
    config.ema.kimg = 500.0
    config.ema.rampup = 0.05
    config.batch_size = 64
  else:  # paper256
    config.data.name = "image_folder"
    config.data.image_size = 256
    config.data.flip = True
  return config
