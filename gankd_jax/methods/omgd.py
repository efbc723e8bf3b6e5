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

A teacher of the user's (methods/teacher_file.py): `teacher_wide.init_from=FILE` starts the
online wide teacher from a PyTorch generator .pth or a variables .npz; `teacher_wide.module` makes
it a Flax generator of the user's. `teacher_wide.frozen=True` is offline distillation from that
fixed teacher: step 3 only, against the wide teacher's output (run in inference mode), with no
discriminator and no deep teacher: the deep teacher is trained online by the discriminator only,
which a fixed teacher leaves nothing to learn against, so it is off rather than a second
untrained target. The fixed teacher is a frozen input (`load_frozen`), never in the checkpoint.
`teacher_deep.init_from=FILE` starts the deep teacher likewise (online only).
"""

from __future__ import annotations

import os

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gankd_jax import models
from gankd_jax.losses import distill, gan, image
from gankd_jax.methods import common, teacher_file
from gankd_jax.methods.base import WARNING, Method, NetState, Network, Note
from gankd_jax.models import vgg
from gankd_jax.preflight import generator_fields
from gankd_jax.weights import download

TEACHER_ROLES = ("teacher_wide", "teacher_deep")


@flax.struct.dataclass
class OMGDState:
  step: jax.Array
  rng: jax.Array  # Raw key data (uint32), for dropout when a generator has it.
  teacher_wide: NetState
  teacher_deep: NetState
  student: NetState  # params/batch_stats: {"generator": ..., "connectors": ...}
  discriminator: NetState


@flax.struct.dataclass
class OfflineState:
  """`teacher_wide.frozen`: the student alone trains (its connectors inside, as in OMGDState)."""
  step: jax.Array
  rng: jax.Array
  student: NetState


class Connectors(nn.Module):
  """One learned 1x1 connector per distilled layer (student channels -> wide-teacher channels)."""
  teacher_channels: tuple[int, ...]

  @nn.compact
  def __call__(self, student_feats, *, train: bool = True):
    return [distill.ChannelConnector(c, name=f"connector_{i}")(f, train=train)
            for i, (c, f) in enumerate(zip(self.teacher_channels, student_feats))]


def find_vgg_weights(configured: str) -> str | None:
  """The VGG16 weights file: the configured path, else the cache (weights/download.py), else None.
  Never downloads: a default run behaves the same with and without a network."""
  if configured:
    if not os.path.isfile(configured):
      raise ValueError(f"vgg.weights: no such file: {configured}")
    return configured
  return download.find_cached(download.VGG16)


class OMGD(Method):
  roles = ("teacher_wide", "teacher_deep", "student", "discriminator")
  generator_roles = (*TEACHER_ROLES, "student")
  # The schedule's shape may be pinned or moved when a run resumes (README: "Resuming").
  resumable_fields = frozenset({"optimizer.constant_steps", "optimizer.decay_steps"})

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.loss_cfg = config.loss
    if config.n_dis <= 0:
      raise ValueError(f"n_dis must be >= 1, got {config.n_dis}")
    if config.loss.gan_mode not in gan.GAN_KINDS:
      raise ValueError(f"loss.gan_mode: unknown '{config.loss.gan_mode}'; choose from {', '.join(gan.GAN_KINDS)}")
    self.image_size = size = config.data.crop_size
    wide = config.teacher_wide
    self.init_from = wide.get("init_from", "") or ""
    self.frozen_teacher = bool(wide.get("frozen", False))
    user_module = wide.get("module", "") or ""
    if self.frozen_teacher:
      if not self.init_from:
        raise ValueError("teacher_wide.frozen=True distils from a fixed teacher: set "
                         "--config.teacher_wide.init_from=FILE (a generator .pth or variables .npz)")
      self.roles = ("teacher_wide", "student")
      self.generator_roles = self.roles
    self.teacher_roles = tuple(r for r in TEACHER_ROLES if r in self.generator_roles)
    deep_from = config.teacher_deep.get("init_from", "") or ""
    if deep_from and self.frozen_teacher:
      raise ValueError("teacher_deep.init_from: the deep teacher is off when "
                       "teacher_wide.frozen=True (offline distillation); unset one of them")
    # Teachers that start from a file (methods/teacher_file.py).
    self.init_files = {role: path for role, path in
                       (("teacher_wide", self.init_from), ("teacher_deep", deep_from)) if path}
    self.generators = {}
    for role in self.generator_roles:
      fields = generator_fields(config[role], size, role)
      if role == "teacher_wide" and user_module:
        self.generators[role] = teacher_file.import_module(user_module, "teacher_wide.module")
        continue
      models.check_width(f"{role}.ngf", fields.get("ngf"))  # Names the network.
      models.check_image_size(fields["name"], size, **{k: v for k, v in fields.items() if k != "name"})
      self.generators[role] = models.build_generator(**fields)
      if role in self.init_files:
        teacher_file.check_init_file(
            self.init_files[role], fields, role, size,
            tuple(k for k in ("num_downs", "n_blocks") if config[role].get(k) is not None))
    if self.init_from and not os.path.isfile(self.init_from):
      raise ValueError(f"teacher_wide.init_from: no such file: {self.init_from}")
    if user_module and self.init_from and teacher_file.is_pth(self.init_from):
      raise ValueError(f"teacher_wide.init_from={self.init_from}: a PyTorch file imports into "
                       "our generator families only; with teacher_wide.module set, give a "
                       "variables .npz (runs.save_variables)")
    models.check_discriminator_size(size)
    models.check_width("discriminator.ndf", config.discriminator.get("ndf"))
    self.discriminator = models.build_discriminator(**config.discriminator)
    self.use_cd = config.loss.lambda_cd > 0
    if self.use_cd:
      teacher_channels = teacher_file.feature_channels(self.generators["teacher_wide"],
                                                       "teacher_wide")
      if len(teacher_channels) != len(self.generators["student"].feature_channels()):
        raise ValueError(f"loss.lambda_cd > 0 needs a student of the wide teacher's family "
                         f"({config.teacher_wide.name} vs {config.student.name})")
      self.connectors = Connectors(tuple(teacher_channels))

    wants_vgg = config.loss.lambda_style > 0 or config.loss.lambda_feature > 0
    self.vgg_path = find_vgg_weights(config.vgg.weights) if wants_vgg else None
    if self.vgg_path:
      self._notes = [Note(f"VGG16 perceptual losses on, weights from {self.vgg_path}")]
    elif wants_vgg:
      self._notes = [Note(
          f"VGG16 weights not found (set --config.vgg.weights=/path/{download.VGG16.filename} or "
          f"put the file in {download.cache_dir()}/): the style and feature loss terms are off",
          WARNING)]
    else:
      self._notes = []
    if self.init_from:
      how = ("fixed (offline distillation: no discriminator, no deep teacher)"
             if self.frozen_teacher else "trained online from there")
      self._notes.append(Note(f"wide teacher from {self.init_from}, {how}"))
    if deep_from:
      self._notes.append(Note(f"deep teacher from {deep_from}, trained online from there"))
    self.vgg = vgg.VGG16Features(input_normalization=config.vgg.input_normalization)

    self.learning_rate = common.linear_decay(config.optimizer, config.num_train_steps)
    self.optimizer = common.adam(config.optimizer.b1, config.optimizer.b2, self.learning_rate)

  # ----------------------------------------------------------------------------- bookkeeping
  def notes(self) -> list[Note]:
    return list(self._notes)

  def active_losses(self) -> dict[str, float]:
    weights = {k: float(v) for k, v in self.loss_cfg.items() if k.startswith("lambda_")}
    if self.frozen_teacher:  # The teachers' terms: no teacher trains.
      weights.pop("lambda_gan")
      weights.pop("lambda_recon")
    if self.vgg_path is None:  # Off for want of weights (or set to 0).
      weights.pop("lambda_style")
      weights.pop("lambda_feature")
    return {k[len("lambda_"):]: v for k, v in weights.items() if v != 0}

  def phase(self, step: int) -> bool:
    """True on steps that also update the discriminator and the teachers."""
    return not self.frozen_teacher and step % self.config.n_dis == 0

  def load_frozen(self, restoring: bool = False):
    """VGG16 weights, and the user's teachers: fixed ("teacher_wide") or to start from
    ("teacher_wide_init", "teacher_deep_init"; not needed when restoring)."""
    frozen = {"vgg": vgg.load_vgg16(self.vgg_path)} if self.vgg_path else {}
    for role, path in self.init_files.items():
      fixed = self.frozen_teacher and role == "teacher_wide"
      if fixed or not restoring:
        variables, notes = teacher_file.load_teacher(path, self.generators[role],
                                                     self.image_size, role)
        self._notes.extend(Note(text) for text in notes)
        frozen[role if fixed else f"{role}_init"] = variables
    return frozen

  # ----------------------------------------------------------------------------- state
  def init_state(self, rng: jax.Array, batch, frozen) -> OMGDState:
    """Every network initialised as the reference's `init_net` does (models/init.py)."""
    x = batch["A"][:1]
    keys = dict(zip(["state", *OMGD.roles, "connectors"], jax.random.split(rng, len(OMGD.roles) + 2)))
    nets = {}
    if not self.frozen_teacher:
      nets = {role: common.init_net(self.generators[role], keys[role], self.optimizer, x)
              for role in TEACHER_ROLES}
      for role in TEACHER_ROLES:
        if f"{role}_init" in frozen:  # The user's weights, with a fresh optimiser.
          nets[role] = NetState.create(frozen[f"{role}_init"], self.optimizer)
      nets["discriminator"] = common.init_net(self.discriminator, keys["discriminator"],
                                              self.optimizer, jnp.concatenate([x, x], axis=-1))
    student = common.init_net(self.generators["student"], keys["student"], self.optimizer, x)
    params, batch_stats = {"generator": student.params}, {"generator": student.batch_stats}
    if self.use_cd:
      feats = jax.eval_shape(lambda: self.generators["student"].apply(
          student.variables(), x, train=False, return_features=True)[1])
      connectors = common.init_net(self.connectors, keys["connectors"], self.optimizer, feats)
      params["connectors"] = connectors.params
      batch_stats["connectors"] = connectors.batch_stats
    nets["student"] = NetState.create({"params": params, "batch_stats": batch_stats},
                                      self.optimizer)
    if self.frozen_teacher:
      return OfflineState(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(keys["state"]),
                          student=nets["student"])
    return OMGDState(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(keys["state"]), **nets)

  # ----------------------------------------------------------------------------- forwards
  def _run_generator(self, role, params, batch_stats, x, rng, *, features=False):
    """Train-mode forward; returns (output, features or None, new batch_stats)."""
    dropout_rng = jax.random.fold_in(rng, OMGD.roles.index(role))
    out, stats = common.run_train_mode(
        self.generators[role], {"params": params, "batch_stats": batch_stats}, x,
        return_features=features, rngs={"dropout": dropout_rng})
    y, feats = out if features else (out, None)
    return y, feats, stats

  def _run_discriminator(self, params, batch_stats, pair, branches):
    return common.run_train_mode(self.discriminator, {"params": params, "batch_stats": batch_stats},
                                 pair, branches=branches)

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

  def _adversarial_gradients(self, state: OMGDState, x, y) -> common.AdversarialGradients:
    """Both teachers' and the partially shared D's gradients from one forward of each."""
    d = state.discriminator
    rng = common.step_rng(state)

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

    def discriminate_reals(d_params):
      return self._run_discriminator(d_params, d.batch_stats, jnp.concatenate([x, y], -1),
                                     tuple(range(len(TEACHER_ROLES))))

    return common.adversarial_gradients(
        teachers_forward, {role: getattr(state, role).params for role in TEACHER_ROLES},
        discriminate_fakes, discriminate_reals, d.params,
        lambda logits, fakes: self._teacher_losses(logits, fakes, y), self._discriminator_losses)

  def _student_loss(self, student_params, student_stats, x, targets, wide_feats, frozen, rng):
    """KD from both teacher outputs (no D, no ground truth) + channel distillation."""
    cfg = self.loss_cfg
    fake, feats, gen_stats = self._run_generator(
        "student", student_params["generator"], student_stats["generator"], x, rng,
        features=self.use_cd)
    new_stats = {"generator": gen_stats}
    features = None
    if "vgg" in frozen:
      features = lambda images: self.vgg.apply({"params": frozen["vgg"]}, images)  # noqa: E731
    terms = common.output_distillation_terms(fake, targets, cfg, features)
    if self.use_cd:
      mapped, new_stats["connectors"] = common.run_train_mode(
          self.connectors,
          {"params": student_params["connectors"], "batch_stats": student_stats["connectors"]},
          feats)
      terms["cd"] = cfg.lambda_cd * distill.channel_distillation_loss(mapped, wide_feats)
    total = sum(terms.values())
    return total, ({f"student/{k}": v for k, v in terms.items()}, new_stats, fake)

  # ----------------------------------------------------------------------------- the step
  def _offline_step(self, state: OfflineState, batch, frozen):
    """`teacher_wide.frozen`: the student against the fixed teacher's inference-mode output."""
    x = batch["A"]
    teacher = self.generators["teacher_wide"].apply(
        frozen["teacher_wide"], x, train=False, return_features=self.use_cd)
    target, wide_feats = teacher if self.use_cd else (teacher, None)
    (student_total, (metrics, student_stats, _)), student_grads = jax.value_and_grad(
        self._student_loss, has_aux=True)(
            state.student.params, state.student.batch_stats, x, [target], wide_feats, frozen,
            common.step_rng(state))
    metrics = {"learning_rate": self.learning_rate(state.step), **metrics,
               "student/total": student_total}
    student = state.student.apply_gradients(student_grads, student_stats, step=state.step)
    return state.replace(step=state.step + 1, student=student), metrics

  def train_step(self, state: OMGDState, batch, frozen, phase: bool):
    if self.frozen_teacher:
      return self._offline_step(state, batch, frozen)
    x, y = batch["A"], batch["B"]
    step = state.step
    metrics = {"learning_rate": self.learning_rate(step)}
    update_teachers = phase

    if update_teachers:
      adversarial = self._adversarial_gradients(state, x, y)
      metrics.update(adversarial.metrics)
      metrics["teachers/total"] = metrics.pop("generators/total")
      outputs = {role: (adversarial.fakes[role], *adversarial.generator_aux[role])
                 for role in TEACHER_ROLES}
      new_teachers = {role: getattr(state, role).apply_gradients(
                          adversarial.generator_grads[role], outputs[role][2], step=step)
                      for role in TEACHER_ROLES}
      new_discriminator = state.discriminator.apply_gradients(
          adversarial.discriminator_grads, adversarial.discriminator_stats, step=step)
    else:
      outputs = {}
      for role in TEACHER_ROLES:
        net = getattr(state, role)
        outputs[role] = self._run_generator(role, net.params, net.batch_stats, x,
                                            common.step_rng(state),
                                            features=self.use_cd and role == "teacher_wide")
      new_teachers = {role: getattr(state, role).replace(batch_stats=outputs[role][2])
                      for role in TEACHER_ROLES}
      new_discriminator = state.discriminator

    targets = [jax.lax.stop_gradient(outputs[role][0]) for role in TEACHER_ROLES]
    wide_feats = jax.lax.stop_gradient(outputs["teacher_wide"][1])
    (student_total, (student_metrics, student_stats, _)), student_grads = jax.value_and_grad(
        self._student_loss, has_aux=True)(
            state.student.params, state.student.batch_stats, x, targets, wide_feats, frozen,
            common.step_rng(state))
    metrics.update(student_metrics, **{"student/total": student_total})
    new_student = state.student.apply_gradients(student_grads, student_stats, step=step)

    new_state = OMGDState(step=step + 1, rng=state.rng, student=new_student,
                          discriminator=new_discriminator, **new_teachers)
    return new_state, metrics

  # ----------------------------------------------------------------------------- inference
  def _inference_variables(self, state: OMGDState, role: str, frozen=None):
    if self.frozen_teacher and role == "teacher_wide":
      return frozen["teacher_wide"]
    net = getattr(state, role)
    if role == "student":
      return {"params": net.params["generator"], "batch_stats": net.batch_stats["generator"]}
    return net.variables()

  def generate(self, state: OMGDState, batch, frozen):
    return {role: common.apply_eval(self.generators[role],
                                    self._inference_variables(state, role, frozen), batch["A"])
            for role in self.generator_roles}

  def real_images(self, batch):
    return batch["B"]

  def paired_targets(self, batch, outputs):
    """Every generator against the ground truth; the student also against each teacher."""
    targets = {role: {"target": batch["B"]} for role in self.generator_roles}
    targets["student"].update({role: outputs[role] for role in self.teacher_roles})
    return targets

  def sample_columns(self, batch, outputs):
    """Input | wide teacher | deep teacher | student | target."""
    return {"input": batch["A"], **super().sample_columns(batch, outputs), "target": batch["B"]}

  def role_label(self, role):
    return {"teacher_wide": "wide teacher", "teacher_deep": "deep teacher"}.get(role, role)

  def networks(self, state: OMGDState, frozen=None) -> dict[str, Network]:
    size = self.image_size
    nets = {role: common.inference_network(self.generators[role],
                                           self._inference_variables(state, role, frozen),
                                           (size, size, 3))
            for role in self.generator_roles}
    if self.frozen_teacher:
      return nets
    nets["discriminator"] = common.inference_network(
        self.discriminator, state.discriminator.variables(), (size, size, 6))
    return nets
