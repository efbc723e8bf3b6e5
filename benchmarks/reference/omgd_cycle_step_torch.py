"""Reference side of the CycleGAN-OMGD step timing: bytedance/OMGD's `cycleganbest` distiller.

Run it from a PyTorch environment (benchmarks/README.md) with a checkout of bytedance/OMGD; it
imports OMGD's own modules from that checkout (none of its code is in this repository):

  python benchmarks/reference/omgd_cycle_step_torch.py OMGD_CHECKOUT [SIZE] [TEACHER_NGF] [STUDENT_NGF]
  -> RESULT {"teacher_median": s, "student_median": s}

The networks and steps are the ones of scripts/cycle_gan/horse2zebra/distill.sh (SIZE 256,
teachers and student mobile_resnet_9blocks ngf 64 / 16, PatchGAN ndf 64, instance norm, lsgan,
batch 1, pool of 50, AGD weights 1e1,1e4,1e1,1e-5, lambda_CD 5e2), as
`CycleganBestDistiller.optimize_parameters` (teacher step: G_A + G_B, then D_A + D_B) and
`optimize_student_parameters` (student step: `backward_G_Student` + Adam) do them, on CPU with 2
threads. VGG16 has random weights (pretrained ones cannot be fetched here; the cost is the same).
Compare with `benchmarks/omgd_step.py --config=configs/omgd_cycle.py:horse2zebra_s16 --json`.
"""
import functools
import json
import math
import sys
import time
import types

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

omgd = sys.argv[1]
size = int(sys.argv[2]) if len(sys.argv) > 2 else 256
teacher_ngf = int(sys.argv[3]) if len(sys.argv) > 3 else 64
student_ngf = int(sys.argv[4]) if len(sys.argv) > 4 else 16
sys.path.insert(0, omgd)
# models/networks.py imports the training options' whole tree; the modules only need BaseNetwork.
stand_in = types.ModuleType("models.networks")
stand_in.BaseNetwork = nn.Module
sys.modules["models.networks"] = stand_in
import torchvision  # noqa: E402

_vgg16 = torchvision.models.vgg16
torchvision.models.vgg16 = lambda pretrained=False, **k: _vgg16(weights=None)
from models.modules import pytorch_ssim  # noqa: E402
from models.modules.discriminators import NLayerDiscriminator  # noqa: E402
from models.modules.resnet_architecture.mobile_resnet_generator import MobileResnetGenerator  # noqa: E402
from utils.image_pool import ImagePool  # noqa: E402
from utils.vgg_feature import VGGFeature  # noqa: E402

torch.set_num_threads(2)
torch.manual_seed(0)
instance = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
G_A, G_B = (MobileResnetGenerator(3, 3, teacher_ngf, norm_layer=instance, n_blocks=9) for _ in range(2))
S = MobileResnetGenerator(3, 3, student_ngf, norm_layer=instance, n_blocks=9)
D_A, D_B = (NLayerDiscriminator(3, 64, 3, norm_layer=instance) for _ in range(2))
vgg = VGGFeature()
lambda_ssim, lambda_style, lambda_feature, lambda_tv, lambda_cd = 1e1, 1e4, 1e1, 1e-5, 5e2
mapping_layers = ["model.9", "model.12", "model.15", "model.18"]


def connector(t_channel, s_channel):  # BaseCycleganBestDistiller.build_feature_connector
  conv = nn.Conv2d(s_channel, t_channel, 1, bias=False)
  conv.weight.data.normal_(0, math.sqrt(2.0 / t_channel))
  return nn.Sequential(conv, nn.BatchNorm2d(t_channel), nn.ReLU(True))


connectors = [connector(4 * teacher_ngf, 4 * student_ngf) for _ in mapping_layers]
Tacts, Sacts = {}, {}
for net, mem in ((G_A, Tacts), (S, Sacts)):
  for name, module in net.named_modules():
    if name in mapping_layers:
      module.register_forward_hook(lambda m, i, out, mem=mem, name=name: mem.__setitem__(name, out))


def adam(params):
  return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))


opt_S = adam(list(S.parameters()) + [p for c in connectors for p in c.parameters()])
opt_G = adam(list(G_A.parameters()) + list(G_B.parameters()))
opt_D = adam(list(D_A.parameters()) + list(D_B.parameters()))
pool_A, pool_B = ImagePool(50), ImagePool(50)


def lsgan(pred, real):
  return F.mse_loss(pred, torch.full_like(pred, 1.0 if real else 0.0))


def gram(x):
  b, c, h, w = x.size()
  f = x.view(b, c, h * w)
  return f.bmm(f.transpose(1, 2)) / (c * h * w)


real_A = torch.rand(1, 3, size, size) * 2 - 1
real_B = torch.rand(1, 3, size, size) * 2 - 1


def teacher_step():
  fake_B = G_A(real_A)
  rec_A = G_B(fake_B)
  fake_A = G_B(real_B)
  rec_B = G_A(fake_A)
  opt_D.zero_grad()
  opt_G.zero_grad()
  for p in list(D_A.parameters()) + list(D_B.parameters()):
    p.requires_grad_(False)
  idt_A, idt_B = G_A(real_B), G_B(real_A)
  loss_G = (lsgan(D_A(fake_B), True) + lsgan(D_B(fake_A), True)
            + 10 * F.l1_loss(rec_A, real_A) + 10 * F.l1_loss(rec_B, real_B)
            + 10 * 0.5 * F.l1_loss(idt_A, real_B) + 10 * 0.5 * F.l1_loss(idt_B, real_A))
  loss_G.backward()
  opt_G.step()
  for p in list(D_A.parameters()) + list(D_B.parameters()):
    p.requires_grad_(True)
  for D, real, fake in ((D_A, real_B, pool_B.query(fake_B)), (D_B, real_A, pool_A.query(fake_A))):
    ((lsgan(D(real), True) + lsgan(D(fake.detach()), False)) * 0.5).backward()
  opt_D.step()


def student_step():
  opt_S.zero_grad()
  teacher_image = G_A(real_A).detach()
  fake = S(real_A)
  loss = lambda_ssim * (1 - pytorch_ssim.SSIM()(fake, teacher_image))
  Tf, Sf = vgg(teacher_image), vgg(fake)
  loss = loss + sum(lambda_style * F.l1_loss(gram(s), gram(t)) for s, t in zip(Sf, Tf))
  loss = loss + lambda_feature * F.l1_loss(Sf[1], Tf[1])
  loss = loss + lambda_tv * (torch.sum(torch.abs(fake[:, :, :, 1:] - fake[:, :, :, :-1]))
                             + torch.sum(torch.abs(fake[:, :, 1:, :] - fake[:, :, :-1, :])))
  cd = sum(torch.mean((c(Sacts[n]).mean(dim=(2, 3)) - Tacts[n].detach().mean(dim=(2, 3))) ** 2)
           for c, n in zip(connectors, mapping_layers))
  (loss + lambda_cd * cd).backward()
  opt_S.step()


def timed(step, reps=5):
  step()
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


print("RESULT " + json.dumps({"teacher_median": timed(teacher_step),
                              "student_median": timed(student_step)}))
