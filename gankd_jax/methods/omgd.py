"""OMGD: Online Multi-Granularity Distillation (Ren et al., ICCV 2021) for paired translation.

One fused step, as in the reference `MultiTeacherDistiller.optimize_parameters`:
  1. forward the wide teacher, the deep teacher and the student on the same input x;
  2. every `n_dis` steps, from that same forward (pre-update parameters):
       D (partially shared PatchGAN, one branch per teacher): 0.5 (real + fake) per branch;
       each teacher: lambda_gan * GAN(D_branch(x, T(x))) + lambda_recon * L1(T(x), y);
  3. every step, the student (no discriminator, no ground truth), for each teacher output T:
       lambda_ssim (1 - SSIM(S, T)) + lambda_style sum_l L1(Gram phi_l(S), Gram phi_l(T))
       + lambda_feature L1(phi_relu2_2(S), phi_relu2_2(T)) + lambda_tv TV(S)
     plus lambda_cd * channel distillation against the wide teacher's intermediate maps, through
     learned 1x1 connectors trained with the student.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gankd_jax import models
from gankd_jax.losses import distill, gan, image, perceptual
from gankd_jax.methods.base import (Method, NetState, Network, adam_with_global_schedule,
                                    apply_update, linear_decay_schedule)
from gankd_jax.models import vgg
from gankd_jax.models.init import init_variables

TEACHER_ROLES = ("teacher_wide", "teacher_deep")
VGG_FILENAME = "vgg16-397923af.pth"  # torchvision's file name for the ImageNet VGG16 weights.


@flax.struct.dataclass
class OMGDState:
  step: jax.Array
  rng: jax.Array  # Raw key data (uint32), for dropout when a generator has it.
  teacher_wide: NetState
  teacher_deep: NetState
  student: NetState  # params/batch_stats: {"generator": ..., "connectors": ...}
  discriminator: NetState


class Connectors(nn.Module):
  """One learned 1x1 connector per distilled layer (student channels -> wide-teacher channels)."""
  teacher_channels: tuple[int, ...]

  @nn.compact
  def __call__(self, student_feats, *, train: bool = True):
    return [distill.ChannelConnector(c, name=f"connector_{i}")(f, train=train)
            for i, (c, f) in enumerate(zip(self.teacher_channels, student_feats))]


def find_vgg_weights(configured: str) -> str | None:
  """The VGG16 weights file: the configured path, else torchvision's or our cache, else None."""
  if configured:
    if not os.path.isfile(configured):
      raise ValueError(f"vgg.weights: no such file: {configured}")
    return configured
  cache_dirs = [os.environ.get("GANKD_CACHE", os.path.expanduser("~/.cache/gankd_jax")),
                os.path.expanduser("~/.cache/torch/hub/checkpoints")]
  for directory in cache_dirs:
    candidate = os.path.join(directory, VGG_FILENAME)
    if os.path.isfile(candidate):
      return candidate
  return None


def step_rng(state: OMGDState) -> jax.Array:
  """This step's key: the same on resume, whatever the device count."""
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def generator_fields(generator_config: ml_collections.ConfigDict, image_size: int, role: str) -> dict:
  """Constructor fields of a generator; a U-Net's depth defaults to log2(image size) (pix2pix)."""
  fields = generator_config.to_dict()
  if fields.get("name", "").startswith("unet") and "num_downs" not in fields:
    depth = int(image_size).bit_length() - 1
    if image_size <= 0 or 2 ** depth != image_size:
      raise ValueError(f"data.crop_size={image_size}: the {role} U-Net needs a power-of-two image "
                       f"size (its depth is log2 of the size), or set {role}.num_downs")
    fields["num_downs"] = depth
  return fields


class OMGD(Method):
  roles = ("teacher_wide", "teacher_deep", "student", "discriminator")

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.loss_cfg = config.loss
    if config.n_dis <= 0:
      raise ValueError(f"n_dis must be >= 1, got {config.n_dis}")
    if config.loss.gan_mode not in gan.GAN_KINDS:
      raise ValueError(f"loss.gan_mode: unknown '{config.loss.gan_mode}'; choose from {', '.join(gan.GAN_KINDS)}")
    size = config.data.crop_size
    self.generators = {}
    for role in (*TEACHER_ROLES, "student"):
      fields = generator_fields(config[role], size, role)
      models.check_image_size(fields["name"], size, **{k: v for k, v in fields.items() if k != "name"})
      self.generators[role] = models.build_generator(**fields)
    models.check_discriminator_size(size)
    self.discriminator = models.build_discriminator(**config.discriminator)
    self.use_cd = config.loss.lambda_cd > 0
    if self.use_cd:
      teacher_channels = self.generators["teacher_wide"].feature_channels()
      if len(teacher_channels) != len(self.generators["student"].feature_channels()):
        raise ValueError(f"loss.lambda_cd > 0 needs a student of the wide teacher's family "
                         f"({config.teacher_wide.name} vs {config.student.name})")
      self.connectors = Connectors(tuple(teacher_channels))

    self._notes = []
    self.vgg_params = None
    wants_vgg = config.loss.lambda_style > 0 or config.loss.lambda_feature > 0
    vgg_path = find_vgg_weights(config.vgg.weights) if wants_vgg else None
    if vgg_path:
      self.vgg_params = vgg.load_vgg16(vgg_path)
      self._notes.append(f"VGG16 perceptual losses on, weights from {vgg_path}")
    elif wants_vgg:
      self._notes.append(
          f"VGG16 weights not found (set --config.vgg.weights=/path/{VGG_FILENAME} or put the file in "
          "~/.cache/gankd_jax/): the style and feature loss terms are off")
    self.vgg = vgg.VGG16Features(input_normalization=config.vgg.input_normalization)

    steps = config.num_train_steps
    constant = config.optimizer.constant_steps if config.optimizer.constant_steps >= 0 else steps // 2
    decay = config.optimizer.decay_steps if config.optimizer.decay_steps >= 0 else steps - constant
    self.learning_rate = linear_decay_schedule(config.optimizer.lr, constant, decay)
    self.optimizer = adam_with_global_schedule(config.optimizer.b1, config.optimizer.b2)

  # ----------------------------------------------------------------------------- bookkeeping
  def notes(self) -> list[str]:
    return list(self._notes)

  def active_losses(self) -> dict[str, float]:
    weights = {k: float(v) for k, v in self.loss_cfg.items() if k.startswith("lambda_")}
    if self.vgg_params is None:  # Off for want of weights (or set to 0).
      weights.pop("lambda_style")
      weights.pop("lambda_feature")
    return {k[len("lambda_"):]: v for k, v in weights.items() if v != 0}

  def phase(self, step: int) -> bool:
    """True on steps that also update the discriminator and the teachers."""
    return step % self.config.n_dis == 0

  def frozen_variables(self) -> Any:
    return {"vgg": self.vgg_params} if self.vgg_params is not None else {}

  # ----------------------------------------------------------------------------- state
  def _net_state(self, variables) -> NetState:
    params = variables["params"]
    return NetState(params, variables.get("batch_stats", {}), self.optimizer.init(params))

  def init_state(self, rng: jax.Array, batch) -> OMGDState:
    """Every network initialised as the reference's `init_net` does (models/init.py)."""
    x = batch["A"][:1]
    keys = dict(zip(["state", *self.roles, "connectors"], jax.random.split(rng, len(self.roles) + 2)))
    nets = {role: init_variables(self.generators[role], keys[role], x, train=False)
            for role in (*TEACHER_ROLES, "student")}
    nets["discriminator"] = init_variables(self.discriminator, keys["discriminator"],
                                           jnp.concatenate([x, x], axis=-1), train=False)
    student = {"params": {"generator": nets["student"]["params"]},
               "batch_stats": {"generator": nets["student"].get("batch_stats", {})}}
    if self.use_cd:
      feats = jax.eval_shape(lambda: self.generators["student"].apply(
          nets["student"], x, train=False, return_features=True)[1])
      connectors = init_variables(self.connectors, keys["connectors"], feats, train=False)
      student["params"]["connectors"] = connectors["params"]
      student["batch_stats"]["connectors"] = connectors.get("batch_stats", {})
    return OMGDState(
        step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(keys["state"]),
        teacher_wide=self._net_state(nets["teacher_wide"]),
        teacher_deep=self._net_state(nets["teacher_deep"]),
        student=self._net_state(student),
        discriminator=self._net_state(nets["discriminator"]))

  # ----------------------------------------------------------------------------- forwards
  def _run_generator(self, role, params, batch_stats, x, rng, *, features=False):
    """Train-mode forward; returns (output, features or None, new batch_stats)."""
    dropout_rng = jax.random.fold_in(rng, self.roles.index(role))
    out, updated = self.generators[role].apply(
        {"params": params, "batch_stats": batch_stats}, x, train=True,
        return_features=features, mutable=["batch_stats"], rngs={"dropout": dropout_rng})
    y, feats = out if features else (out, None)
    return y, feats, updated.get("batch_stats", {})

  def _run_discriminator(self, params, batch_stats, pair, branches):
    logits, updated = self.discriminator.apply(
        {"params": params, "batch_stats": batch_stats}, pair, train=True, branches=branches,
        mutable=["batch_stats"])
    return logits, updated.get("batch_stats", {})

  # ----------------------------------------------------------------------------- losses
  def _teacher_losses(self, fake_logits, fakes, y):
    """Each teacher: lambda_gan * GAN(D_branch(x, T(x))) + lambda_recon * L1(T(x), y)."""
    cfg = self.loss_cfg
    total, metrics = 0.0, {}
    for role in TEACHER_ROLES:
      adversarial = gan.generator_loss(cfg.gan_mode, fake_logits[role])
      recon = image.l1(fakes[role], y)
      total += cfg.lambda_gan * adversarial + cfg.lambda_recon * recon
      metrics[f"{role}/gan"] = adversarial
      metrics[f"{role}/recon_l1"] = recon
    return total, metrics

  def _discriminator_losses(self, real_logits, fake_logits):
    """Per branch 0.5 (real + fake), summed over branches (`backward_D_teacher`)."""
    total, metrics = 0.0, {}
    for role, real in zip(TEACHER_ROLES, real_logits):
      loss = gan.discriminator_loss(self.loss_cfg.gan_mode, real, fake_logits[role])
      total += loss
      metrics[f"discriminator/{role}"] = loss
    return total, metrics

  def _adversarial_gradients(self, state: OMGDState, x, y):
    """Teacher and discriminator gradients from ONE forward of each network.

    The reference forwards D on each fake pair twice (for the teachers' loss and for D's own)
    and on the real pair once per branch; those forwards are identical, so here each runs once
    and two backward passes (jax.vjp) take the two losses' gradients from it.
    """
    d = state.discriminator
    rng = step_rng(state)

    def teachers_forward(params):
      fakes, aux = {}, {}
      for role in TEACHER_ROLES:
        fakes[role], feats, stats = self._run_generator(
            role, params[role], getattr(state, role).batch_stats, x, rng,
            features=self.use_cd and role == "teacher_wide")
        aux[role] = (feats, stats)
      return fakes, aux

    def discriminate_fakes(d_params, fakes):
      logits, stats = {}, d.batch_stats
      for branch, role in enumerate(TEACHER_ROLES):
        (logits[role],), stats = self._run_discriminator(
            d_params, stats, jnp.concatenate([x, fakes[role]], -1), (branch,))
      return logits, stats

    teacher_params = {role: getattr(state, role).params for role in TEACHER_ROLES}
    fakes, teachers_vjp, teacher_aux = jax.vjp(teachers_forward, teacher_params, has_aux=True)
    fake_logits, fakes_vjp, _ = jax.vjp(discriminate_fakes, d.params, fakes, has_aux=True)
    real_logits, real_vjp, d_stats = jax.vjp(
        lambda p: self._run_discriminator(p, d.batch_stats, jnp.concatenate([x, y], -1),
                                          tuple(range(len(TEACHER_ROLES)))),
        d.params, has_aux=True)

    (teacher_total, teacher_metrics), (dt_dlogits, dt_dfakes) = jax.value_and_grad(
        self._teacher_losses, argnums=(0, 1), has_aux=True)(fake_logits, fakes, y)
    (d_total, d_metrics), (dd_dreal, dd_dfake) = jax.value_and_grad(
        self._discriminator_losses, argnums=(0, 1), has_aux=True)(real_logits, fake_logits)

    d_grads_fake, _ = fakes_vjp(dd_dfake)  # D sees the fakes as constants (`.detach()`).
    (d_grads_real,) = real_vjp(dd_dreal)
    d_grads = jax.tree_util.tree_map(jnp.add, d_grads_fake, d_grads_real)
    _, adversarial_dfakes = fakes_vjp(dt_dlogits)  # Through the fixed D into the images.
    (teacher_grads,) = teachers_vjp(jax.tree_util.tree_map(jnp.add, dt_dfakes, adversarial_dfakes))

    metrics = {**teacher_metrics, **d_metrics, "teachers/total": teacher_total,
               "discriminator/total": d_total}
    outputs = {role: (fakes[role], *teacher_aux[role]) for role in TEACHER_ROLES}
    return outputs, teacher_grads, (d_grads, d_stats), metrics

  def _student_loss(self, student_params, student_stats, x, targets, wide_feats, frozen, rng):
    """KD from both teacher outputs (no D, no ground truth) + channel distillation."""
    cfg = self.loss_cfg
    fake, feats, gen_stats = self._run_generator(
        "student", student_params["generator"], student_stats["generator"], x, rng,
        features=self.use_cd)
    new_stats = {"generator": gen_stats}
    use_vgg = "vgg" in frozen
    if use_vgg:
      student_vgg = self.vgg.apply({"params": frozen["vgg"]}, fake)
    terms = {"ssim": 0.0, "style": 0.0, "feature": 0.0, "tv": 0.0}
    if cfg.lambda_pixel:
      terms["pixel"] = 0.0
    for target in targets:
      terms["ssim"] += cfg.lambda_ssim * (1.0 - image.ssim(fake, target))
      if cfg.lambda_pixel:  # Not in OMGD (see configs/omgd.py); 0 in the paper's setups.
        terms["pixel"] += cfg.lambda_pixel * jnp.mean(jnp.abs(fake - target))
      if use_vgg:
        target_vgg = self.vgg.apply({"params": frozen["vgg"]}, target)
        terms["style"] += cfg.lambda_style * perceptual.style_loss(student_vgg, target_vgg)
        terms["feature"] += cfg.lambda_feature * perceptual.feature_loss(student_vgg, target_vgg)
      # The reference adds the TV term once per teacher.
      terms["tv"] += cfg.lambda_tv * image.total_variation(fake)
    if self.use_cd:
      mapped, connector_vars = self.connectors.apply(
          {"params": student_params["connectors"], "batch_stats": student_stats["connectors"]},
          feats, train=True, mutable=["batch_stats"])
      new_stats["connectors"] = connector_vars.get("batch_stats", {})
      terms["cd"] = cfg.lambda_cd * distill.channel_distillation_loss(mapped, wide_feats)
    total = sum(terms.values())
    metrics = {f"student/{k}": v for k, v in terms.items() if k in ("ssim", "cd", "tv", "pixel") or use_vgg}
    return total, (metrics, new_stats, fake)

  # ----------------------------------------------------------------------------- the step
  def train_step(self, state: OMGDState, batch, frozen, phase: bool):
    x, y = batch["A"], batch["B"]
    lr = self.learning_rate(state.step)
    metrics = {"learning_rate": lr}
    update_teachers = phase

    if update_teachers:
      outputs, teacher_grads, (d_grads, d_stats), adversarial_metrics = self._adversarial_gradients(
          state, x, y)
      metrics.update(adversarial_metrics)
      new_teachers = {role: apply_update(getattr(state, role), teacher_grads[role],
                                         outputs[role][2], self.optimizer, lr)
                      for role in TEACHER_ROLES}
      new_discriminator = apply_update(state.discriminator, d_grads, d_stats, self.optimizer, lr)
    else:
      outputs = {}
      for role in TEACHER_ROLES:
        net = getattr(state, role)
        outputs[role] = self._run_generator(role, net.params, net.batch_stats, x, step_rng(state),
                                            features=self.use_cd and role == "teacher_wide")
      new_teachers = {role: getattr(state, role).replace(batch_stats=outputs[role][2])
                      for role in TEACHER_ROLES}
      new_discriminator = state.discriminator

    targets = [jax.lax.stop_gradient(outputs[role][0]) for role in TEACHER_ROLES]
    wide_feats = jax.lax.stop_gradient(outputs["teacher_wide"][1])
    (student_total, (student_metrics, student_stats, _)), student_grads = jax.value_and_grad(
        self._student_loss, has_aux=True)(
            state.student.params, state.student.batch_stats, x, targets, wide_feats, frozen,
            step_rng(state))
    metrics.update(student_metrics, **{"student/total": student_total})
    new_student = apply_update(state.student, student_grads, student_stats, self.optimizer, lr)

    new_state = OMGDState(step=state.step + 1, rng=state.rng, student=new_student,
                          discriminator=new_discriminator, **new_teachers)
    return new_state, metrics

  # ----------------------------------------------------------------------------- inference
  def _inference_variables(self, state: OMGDState, role: str):
    net = getattr(state, role)
    if role == "student":
      return {"params": net.params["generator"], "batch_stats": net.batch_stats["generator"]}
    return net.variables()

  def generate(self, state: OMGDState, batch, frozen=None):
    return {role: self.generators[role].apply(self._inference_variables(state, role), batch["A"],
                                              train=False)
            for role in (*TEACHER_ROLES, "student")}

  def sample_columns(self, batch, outputs):
    """Input | teachers | student | target."""
    return [batch["A"], *super().sample_columns(batch, outputs), batch["B"]]

  def networks(self, state: OMGDState) -> dict[str, Network]:
    size = self.config.data.crop_size
    nets = {}
    for role in (*TEACHER_ROLES, "student"):
      module = self.generators[role]
      nets[role] = Network(functools.partial(_apply_eval, module),
                           self._inference_variables(state, role), (size, size, 3))
    nets["discriminator"] = Network(functools.partial(_apply_eval, self.discriminator),
                                    state.discriminator.variables(), (size, size, 6))
    return nets


def _apply_eval(module: nn.Module, variables, x):
  return module.apply(variables, x, train=False)
