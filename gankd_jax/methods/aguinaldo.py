"""Compressing GANs using knowledge distillation (Aguinaldo et al. 2019, arXiv:1902.00159).

A large unconditional generator G_T (the teacher, a DCGAN trained as a WGAN-GP: the paper's
"W-DCGAN") is compressed into a student G_S of the same family with widths scaled by the depth
factor d. Modes (`config.mode`):

  teacher   train G_T and its critic as an ordinary GAN (WGAN-GP by default; `loss.gan`).
  mse       min_S E_z |G_T(z) - G_S(z)|^2: the same fresh z for both every step; no critic.
  joint     alpha * adversarial(G_S against a student critic D_S on real data)
            + (1 - alpha) * E_z |G_T(z) - G_S(z)|^2, on the same z (a convex combination).
  scratch   the student trained as an ordinary GAN (alpha = 1, no teacher): the baseline.

The teacher is read frozen from a teacher run (`teacher.workdir`: its config.json and latest
checkpoint), from a variables file (`teacher.weights`, runs.save_variables' format, the
architecture given by `family` and `teacher.d`) or, when both are empty, trained first in the same
run: steps [0, teacher.num_train_steps) train the teacher, the rest the student, so the one
checkpointed state resumes either stage.

Adversarial training (Gulrajani et al. 2017, Algorithm 1, the paper's teacher training): every
step is one critic update on one real batch; every `n_critic`-th step also updates the generator
(after the critic). So `num_train_steps` counts critic steps; generator updates are
steps / n_critic (mse: one generator update per step). For WGAN-GP: lambda_gp = 10,
n_critic = 5, Adam(1e-4, b1 = 0.5, b2 = 0.9) as in their reference code (gan_cifar.py /
gan_mnist.py); hinge / lsgan / vanilla (losses/gan.py) with n_critic = 1 are the alternatives.
"""

from __future__ import annotations

from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gankd_jax import models, runs
from gankd_jax.losses import gan
from gankd_jax.methods import common
from gankd_jax.methods.base import Method, NetState, Network, Note

METHOD_NAME = "aguinaldo"
MODES = ("teacher", "mse", "joint", "scratch")
GAN_LOSSES = (gan.WASSERSTEIN_GP, *gan.GAN_KINDS)
TEACHER_STAGE, STUDENT_STAGE = "teacher", "student"


@flax.struct.dataclass
class AguinaldoState:
  step: jax.Array
  rng: jax.Array                           # Raw key data (uint32).
  generator: NetState                      # The generator this run trains (mode teacher: G_T).
  discriminator: Optional[NetState]        # Its critic (None in mode mse).
  teacher: Optional[NetState]              # G_T trained in this run (None when frozen / unused).
  teacher_discriminator: Optional[NetState]


def mse(a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean squared error over every pixel (the paper's |G_T(z) - G_S(z)|^2, mean-reduced)."""
  return jnp.mean(jnp.square(a - b))


def check_config(config: ml_collections.ConfigDict) -> None:
  """One-line ValueErrors for fields out of range, before anything is built."""
  if config.mode not in MODES:
    raise ValueError(f"mode: unknown '{config.mode}'; choose from {', '.join(MODES)}")
  if config.loss.gan not in GAN_LOSSES:
    raise ValueError(f"loss.gan: unknown '{config.loss.gan}'; choose from {', '.join(GAN_LOSSES)}")
  alpha = config.loss.alpha
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"loss.alpha must be in [0, 1] (weight of the adversarial term), got {alpha}")
  if config.loss.n_critic < 1:
    raise ValueError(f"loss.n_critic must be >= 1, got {config.loss.n_critic}")
  if config.loss.lambda_gp < 0:
    raise ValueError(f"loss.lambda_gp must be >= 0, got {config.loss.lambda_gp}")
  for field in ("teacher.d", "student.d", "discriminator.d"):
    group, key = field.split(".")
    value = config[group][key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (
        value == 0 and field == "student.d"):
      raise ValueError(f"{field} (the depth scale factor) must be a positive integer, got {value!r}")
  if config.nz <= 0:
    raise ValueError(f"nz (latent size) must be positive, got {config.nz}")
  if (config.loss.gan == gan.WASSERSTEIN_GP and config.discriminator.norm == "batch"
      and config.mode != "mse"):
    raise ValueError("discriminator.norm='batch' cannot be used with loss.gan='wgan_gp' (the "
                     "gradient penalty is per example); use 'layer', 'instance' or 'none'")


def check_teacher_run(workdir: str, stored: ml_collections.ConfigDict,
                      config: ml_collections.ConfigDict) -> None:
  """The teacher run's config `stored` checked against this run (one line naming what differs)."""
  where = f"teacher.workdir {workdir}"
  if stored.get("method") != METHOD_NAME or stored.get("mode") != "teacher":
    kind = f"'{stored.get('method')}' run" + (f" in mode '{stored.get('mode')}'" if "mode" in stored else "")
    raise ValueError(f"{where} holds a {kind}, not an aguinaldo teacher run (mode 'teacher')")
  ours, theirs = runs.example_batch(config.data)["image"].shape[1:], runs.example_batch(
      stored.data)["image"].shape[1:]
  checks = [
      ("architecture", stored.family, config.family),
      ("latent size nz", stored.nz, config.nz),
      ("image size", f"{theirs[0]}x{theirs[1]}", f"{ours[0]}x{ours[1]}"),
      ("image channels", theirs[2], ours[2]),
  ]
  if config.teacher.d:
    checks.append(("teacher depth scale d", stored.teacher.d, config.teacher.d))
  for what, there, here in checks:
    if there != here:
      raise ValueError(f"{where} holds a teacher of another {what} ({there} there, {here} in "
                       "this run)")


class Aguinaldo(Method):
  """The four modes of the module docstring behind the loop's Method contract."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    check_config(config)
    self.mode = config.mode
    self.loss_cfg = config.loss
    self.image_shape = tuple(runs.example_batch(config.data)["image"].shape[1:])
    models.check_latent_image_size(config.family, self.image_shape[0])
    size, channels = self.image_shape[0], self.image_shape[2]

    self.teacher_steps = 0
    teacher_d = config.teacher.d
    uses_teacher = self.mode in ("mse", "joint")
    self.teacher_source = runs.TeacherSource.from_config(config.teacher) if uses_teacher else None
    if self.teacher_source and self.teacher_source.workdir:
      stored = self.teacher_source.run_config()
      check_teacher_run(self.teacher_source.workdir, stored, config)
      self.teacher_source.require_checkpoint()
      teacher_d = stored.teacher.d
    elif uses_teacher and not self.teacher_source:
      self.teacher_steps = int(config.teacher.num_train_steps)
      if self.teacher_steps <= 0 or self.teacher_steps >= config.num_train_steps:
        raise ValueError(
            f"teacher.workdir and teacher.weights are empty, so the teacher trains first in "
            f"this run: teacher.num_train_steps ({self.teacher_steps}) must be in (0, "
            f"num_train_steps={config.num_train_steps}); set --config.teacher.workdir=DIR (a "
            f"teacher run), --config.teacher.weights=FILE.npz or --config.num_train_steps="
            f"{max(self.teacher_steps, 0) + config.num_train_steps}")
    if teacher_d <= 0 and self.mode != "scratch":
      raise ValueError("teacher.d (the depth scale factor) must be a positive integer, got 0")

    def generator(d):
      return models.build_latent_generator(config.family, d=d, image_size=size,
                                           channels=channels, nz=config.nz)
    trained_d = teacher_d if self.mode == "teacher" else config.student.d
    self.generator = generator(trained_d)
    self.teacher_generator = generator(teacher_d) if uses_teacher else None
    disc_d = config.discriminator.d or teacher_d or config.student.d
    self.discriminator = models.build_image_discriminator(
        config.family, d=disc_d, image_size=size, norm=config.discriminator.norm)
    self.adversarial = self.mode in ("teacher", "joint", "scratch")
    # Constant learning rate (WGAN-GP's and DCGAN's recipes).
    self.optimizer = common.adam(config.optimizer.b1, config.optimizer.b2,
                                 common.constant(config.optimizer.lr))

    self.generator_roles = {"teacher": ("teacher",), "scratch": ("student",)}.get(
        self.mode, ("teacher", "student"))
    self.roles = (*self.generator_roles, "discriminator")
    self._notes = [Note(f"aguinaldo mode '{self.mode}': generator d={trained_d}"
                        + (f", teacher d={teacher_d}" if uses_teacher else "")
                        + (f", critic d={disc_d} ({config.loss.gan})" if self.adversarial else ""))]
    if uses_teacher:
      self._notes.append(Note(
          f"teacher from {self.teacher_source.describe()}" if self.teacher_source else
          f"teacher trained first in this run ({self.teacher_steps} steps)"))

  # ----------------------------------------------------------------------------- bookkeeping
  def notes(self) -> list[Note]:
    return list(self._notes)

  def active_losses(self) -> dict[str, float]:
    cfg = self.loss_cfg
    if self.mode == "mse":
      return {"mse": 1.0}
    weights = {"adversarial": cfg.alpha if self.mode == "joint" else 1.0}
    if self.mode == "joint":
      weights["mse"] = 1.0 - cfg.alpha
    if cfg.gan == gan.WASSERSTEIN_GP:
      weights["gradient_penalty"] = float(cfg.lambda_gp)
    return {k: float(v) for k, v in weights.items() if v != 0}

  def _stage_step(self, step: int) -> tuple[str, int]:
    if step < self.teacher_steps:
      return TEACHER_STAGE, step
    return STUDENT_STAGE, step - self.teacher_steps

  def phase(self, step: int) -> tuple[str, bool]:
    """(stage, whether the generator updates at this step)."""
    stage, local = self._stage_step(step)
    if stage == STUDENT_STAGE and not self.adversarial:
      return stage, True
    return stage, local % self.loss_cfg.n_critic == self.loss_cfg.n_critic - 1

  def load_frozen(self, restoring: bool = False) -> Any:
    """The frozen teacher's variables (none when the teacher trains in this run)."""
    del restoring  # The teacher is needed by every step.
    if self.teacher_source is None:
      return {}
    z = jax.ShapeDtypeStruct((1, self.config.nz), jnp.float32)
    expected = jax.eval_shape(lambda: common.init_net(
        self.teacher_generator, jax.random.key(0), self.optimizer, z).variables())
    return {"teacher": self.teacher_source.load(expected)}

  # ----------------------------------------------------------------------------- state
  def _init_pair(self, generator, key, example_image):
    g_key, d_key = jax.random.split(key)
    z = jnp.zeros((1, self.config.nz), jnp.float32)
    g = common.init_net(generator, g_key, self.optimizer, z)
    d = common.init_net(self.discriminator, d_key, self.optimizer, example_image)
    return g, d

  def init_state(self, rng: jax.Array, batch, frozen) -> AguinaldoState:
    """DCGAN's N(0, 0.02) init (models/init.py) for every network."""
    del frozen  # The student starts from scratch, not from its teacher's weights.
    keys = jax.random.split(rng, 3)
    image = batch["image"][:1]
    generator, discriminator = self._init_pair(self.generator, keys[1], image)
    teacher = teacher_d = None
    if self.teacher_steps:
      teacher, teacher_d = self._init_pair(self.teacher_generator, keys[2], image)
    return AguinaldoState(
        step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(keys[0]), generator=generator,
        discriminator=discriminator if self.adversarial else None, teacher=teacher,
        teacher_discriminator=teacher_d)

  # ----------------------------------------------------------------------------- pieces
  def _generate_train(self, module, net: NetState, z):
    """Train-mode forward (BatchNorm on batch statistics); returns (images, new batch_stats)."""
    return common.run_train_mode(module, net.variables(), z)

  def _critic(self, params, batch_stats, images):
    return common.run_train_mode(self.discriminator,
                                 {"params": params, "batch_stats": batch_stats}, images)

  def _critic_loss(self, d_params, d_stats, real, fake, rng):
    """The critic's loss on one real and one fake batch (+ gradient penalty for WGAN-GP)."""
    cfg = self.loss_cfg
    if self.config.discriminator.norm == "batch":
      # As DCGAN: real and fake batches in separate passes, so BatchNorm never mixes their
      # statistics (a mixed batch lets D separate them by batch statistics alone, and the
      # generator step, which shows D fakes only, then sees another D).
      real_logits, stats = self._critic(d_params, d_stats, real)
      fake_logits, stats = self._critic(d_params, stats, fake)
    else:  # Per-example critic: one pass over both.
      both, stats = self._critic(d_params, d_stats, jnp.concatenate([real, fake]))
      real_logits, fake_logits = jnp.split(both, 2)
    if cfg.gan == gan.WASSERSTEIN_GP:
      loss = gan.wasserstein_critic_loss(real_logits, fake_logits)
      penalty = gan.gradient_penalty(lambda x: self._critic(d_params, d_stats, x)[0], real, fake, rng)
      metrics = {"wasserstein": -loss, "gradient_penalty": penalty}
      return loss + cfg.lambda_gp * penalty, (metrics, stats)
    loss = gan.discriminator_loss(cfg.gan, real_logits, fake_logits)
    return loss, ({}, stats)

  def _adversarial_loss(self, fake_logits):
    if self.loss_cfg.gan == gan.WASSERSTEIN_GP:
      return gan.wasserstein_generator_loss(fake_logits)
    return gan.generator_loss(self.loss_cfg.gan, fake_logits)

  def _adversarial_update(self, module, g: NetState, d: NetState, real, rng, step, update_generator,
                          alpha=1.0, teacher_vars=None, prefix=""):
    """One critic update on (real, G(z)); with `update_generator`, then one generator update
    against the updated critic: alpha * adversarial + (1 - alpha) * MSE to the teacher."""
    z_key, gp_key, zg_key = jax.random.split(rng, 3)
    nz, batch = self.config.nz, real.shape[0]
    fake, g_stats = self._generate_train(module, g, jax.random.normal(z_key, (batch, nz)))
    (d_loss, (d_metrics, d_stats)), d_grads = jax.value_and_grad(self._critic_loss, has_aux=True)(
        d.params, d.batch_stats, real, jax.lax.stop_gradient(fake), gp_key)
    d = d.apply_gradients(d_grads, d_stats, step=step)
    metrics = {f"{prefix}critic/total": d_loss, **{f"{prefix}critic/{k}": v for k, v in d_metrics.items()}}
    g = g.replace(batch_stats=g_stats)
    if not update_generator:
      return g, d, metrics

    z = jax.random.normal(zg_key, (batch, nz))
    target = None
    if teacher_vars is not None:
      target = jax.lax.stop_gradient(self.teacher_generator.apply(teacher_vars, z, train=False))

    def generator_loss(params):
      images, stats = self._generate_train(module, g.replace(params=params), z)
      logits, _ = self._critic(d.params, d.batch_stats, images)
      adversarial = self._adversarial_loss(logits)
      terms = {"adversarial": adversarial}
      total = alpha * adversarial
      if target is not None:
        terms["mse"] = mse(images, target)
        total = total + (1.0 - alpha) * terms["mse"]
      return total, (terms, stats)

    (g_loss, (terms, stats)), g_grads = jax.value_and_grad(generator_loss, has_aux=True)(g.params)
    g = g.apply_gradients(g_grads, stats, step=step)
    name = "teacher" if prefix or self.mode == "teacher" else "student"
    metrics.update({f"{name}/total": g_loss, **{f"{name}/{k}": v for k, v in terms.items()}})
    return g, d, metrics

  def _mse_update(self, g: NetState, teacher_vars, rng, batch_size, step):
    """min_S E_z |G_T(z) - G_S(z)|^2 on a fresh z (no data, no critic)."""
    z = jax.random.normal(rng, (batch_size, self.config.nz))
    target = jax.lax.stop_gradient(self.teacher_generator.apply(teacher_vars, z, train=False))

    def loss(params):
      images, stats = self._generate_train(self.generator, g.replace(params=params), z)
      return mse(images, target), stats

    (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(g.params)
    return g.apply_gradients(grads, stats, step=step), {"student/mse": value,
                                                        "student/total": value}

  # ----------------------------------------------------------------------------- the step
  def _teacher_variables(self, state: AguinaldoState, frozen):
    if "teacher" in frozen:
      return frozen["teacher"]
    if state.teacher is not None:
      return state.teacher.variables()
    return None

  def train_step(self, state: AguinaldoState, batch, frozen, phase):
    stage, update_generator = phase
    real = batch["image"]
    step = state.step
    rng = common.step_rng(state)
    if stage == TEACHER_STAGE:
      teacher, teacher_d, metrics = self._adversarial_update(
          self.teacher_generator, state.teacher, state.teacher_discriminator, real, rng, step,
          update_generator, prefix="teacher_")
      return state.replace(step=state.step + 1, teacher=teacher, teacher_discriminator=teacher_d), metrics

    teacher_vars = self._teacher_variables(state, frozen)
    if self.mode == "mse":
      generator, metrics = self._mse_update(state.generator, teacher_vars, rng, real.shape[0], step)
      return state.replace(step=state.step + 1, generator=generator), metrics
    alpha = self.loss_cfg.alpha if self.mode == "joint" else 1.0
    generator, discriminator, metrics = self._adversarial_update(
        self.generator, state.generator, state.discriminator, real, rng, step, update_generator,
        alpha=alpha, teacher_vars=teacher_vars if self.mode == "joint" else None)
    return state.replace(step=state.step + 1, generator=generator,
                         discriminator=discriminator), metrics

  # ----------------------------------------------------------------------------- inference
  def _generators(self, state: AguinaldoState, frozen) -> dict[str, tuple[nn.Module, Any]]:
    """(module, inference variables) of every generator role present."""
    if self.mode == "teacher":
      return {"teacher": (self.generator, state.generator.variables())}
    out = {"student": (self.generator, state.generator.variables())}
    teacher = self._teacher_variables(state, frozen)
    if teacher is not None:
      out["teacher"] = (self.teacher_generator, teacher)
    return out

  def generate(self, state: AguinaldoState, batch, frozen):
    z = common.eval_latents(batch["index"], self.config.nz)
    return {role: common.apply_eval(module, variables, z)
            for role, (module, variables) in self._generators(state, frozen).items()}

  def real_images(self, batch):
    return batch["image"]

  def sample_columns(self, batch, outputs):
    """Real images (unrelated to the row's latent, for reference) | teacher(z) | student(z)."""
    return {"real": batch["image"], **super().sample_columns(batch, outputs)}

  def networks(self, state: AguinaldoState, frozen=None) -> dict[str, Network]:
    nets = {role: common.inference_network(module, variables, (self.config.nz,))
            for role, (module, variables) in self._generators(state, frozen or {}).items()}
    if state.discriminator is not None:
      nets["discriminator"] = common.inference_network(
          self.discriminator, state.discriminator.variables(), self.image_shape)
    return nets
