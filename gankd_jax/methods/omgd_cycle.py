"""OMGD for unpaired translation: CycleGAN teachers, best-FID teacher selection, rounds of
student distillation (Ren et al., ICCV 2021; bytedance/OMGD `distillers/cycleganbest_distiller.py`
driven by its `trainer.py`).

The run is a sequence of rounds; one round, as the reference's trainer does it:
  1. teacher stage, T = m teacher epochs of steps (an epoch: `cycle.epoch_steps` steps, i.e.
     ceil(max(|A|, |B|) / batch)), each step as `optimize_parameters`:
       G_A + G_B (one Adam): GAN(D_A(G_A(A))) + GAN(D_B(G_B(B))) + cycle + identity, D frozen;
       then D_A on (real B, pooled G_A(A)) and D_B on (real A, pooled G_B(B)) (one Adam), the
       fakes from the same forward, through a 50-image history pool each;
  2. selection: the loop evaluates at the stage's end (`must_evaluate`); `on_eval` keeps G_A as
     the distillation target `selected_g_a` when its FID against real B improved
     (`selection.rewrite_on_either=True`: also when G_B's FID against real A improved, the
     reference's quirk; `selection.metric=none`: always the latest G_A);
  3. student stage, S = n_dis * m epochs of steps: the student (no discriminator, no ground truth)
     against the selected G_A's output on real A:
       lambda_ssim (1 - SSIM) + lambda_style Gram-L1 + lambda_feature VGG-L1 + lambda_tv TV
       + lambda_cd channel distillation (second downsampling, residual blocks 3, 6, 9; 1x1
       conv + BN + ReLU connectors trained with the student), as `backward_G_Student`.
Every optimiser's learning rate is constant for `optimizer.nepochs` teacher epochs, then decays
linearly over `optimizer.nepochs_decay` (the reference's schedulers step once per teacher epoch,
after the student stage of a round's last epoch; the student's too).

Teachers of the user's (methods/teacher_file.py): `teacher.init_from=FILE` starts G_A from a
PyTorch generator .pth (junyanz's CycleGAN `latest_net_G_A.pth`, gan-compression's or OMGD's
mobile generators; imported by weights/generator_pth.py) or a variables .npz, and
`teacher.init_from_b=FILE` starts G_B likewise (`latest_net_G_B.pth`); a direction without a file
starts from fresh weights. Both are then trained online as above, and the imported G_A is the
distillation target until a selection takes another. The config's `teacher` fields must fit the
files (one-line error with the flags that do); teachers use instance norm here, as the reference.

Everything that decides what happens next lives in the state (pools, the selected G_A, the best
FIDs, the selection history), so a run killed at any moment resumes as if never stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from gankd_jax import image_pool, models
from gankd_jax.losses import cycle, distill, gan
from gankd_jax.methods import common, teacher_file
from gankd_jax.methods.base import WARNING, Method, NetState, Network, Note, PyTree
from gankd_jax.methods.omgd import Connectors, find_vgg_weights
from gankd_jax.models import vgg
from gankd_jax.preflight import generator_fields
from gankd_jax.weights import download

TEACHER, STUDENT = "teacher", "student"
SELECTION_METRICS = ("fid", "none")
DIRECTIONS = ("a", "b")
# The config field each teacher starts from when set (teacher_file.check_init_file).
INIT_FIELDS = {"g_a": "init_from", "g_b": "init_from_b"}
# "No FID (yet)" in the state: finite, as the loop checks every state leaf before a checkpoint.
NO_FID = float(np.finfo(np.float32).max)  # A->B (G_A, judged against real B) and B->A (G_B, against real A).


@flax.struct.dataclass
class CycleState:
  step: jax.Array
  rng: jax.Array                 # Raw key data (uint32): pools, dropout.
  teachers: NetState             # params {"g_a", "g_b"}: one Adam, as optimizer_G_teacher.
  discriminators: NetState       # params {"d_a", "d_b"}: one Adam, as optimizer_D_teacher.
  pool_a: image_pool.ImagePool   # G_B's fakes (domain A) shown to D_B.
  pool_b: image_pool.ImagePool   # G_A's fakes (domain B) shown to D_A.
  student: NetState              # params/batch_stats {"generator", "connectors"}.
  selected_g_a: PyTree           # The frozen distillation target: G_A's variables when chosen.
  best_fid: jax.Array            # (2,) best FID of G_A, G_B at the selections so far (NO_FID: none).
  history_fid: jax.Array         # (rounds, 2) FID of G_A, G_B at each round's selection (NO_FID: none).
  history_chosen: jax.Array      # (rounds,) int32: 1 G_A taken, 0 kept the earlier one, -1 not yet.


@dataclasses.dataclass(frozen=True)
class RoundSchedule:
  """A round: `teacher_steps` teacher steps, then `student_steps` student steps."""
  epoch_steps: int
  m: int
  n_dis: int

  @property
  def teacher_steps(self) -> int:
    return self.m * self.epoch_steps

  @property
  def student_steps(self) -> int:
    return self.n_dis * self.m * self.epoch_steps

  @property
  def round_steps(self) -> int:
    return self.teacher_steps + self.student_steps

  def phase(self, step: int) -> str:
    return TEACHER if step % self.round_steps < self.teacher_steps else STUDENT

  def selects(self, step: int) -> bool:
    """After `step` steps a teacher stage has just ended."""
    return step > 0 and step % self.round_steps == self.teacher_steps

  def round_of(self, step: int) -> int:
    return step // self.round_steps

  def num_rounds(self, num_steps: int) -> int:
    return max(1, math.ceil(num_steps / self.round_steps))

  def teacher_epochs(self, step: jax.Array) -> jax.Array:
    """Teacher epochs the schedulers have counted at `step` (the reference steps them after a
    round's student stage, so that stage still runs at its last teacher epoch's rate)."""
    r, pos = step // self.round_steps, step % self.round_steps
    return jnp.where(pos < self.teacher_steps, r * self.m + pos // self.epoch_steps,
                     r * self.m + self.m - 1)


def reference_linear_decay(lr: float, nepochs: int, nepochs_decay: int):
  """The reference's `linear` policy of the scheduler's epoch count k:
  lr (1 - max(0, k + 1 - nepochs) / (nepochs_decay + 1)), never below 0."""
  def schedule(k):
    factor = 1.0 - jnp.maximum(0, k + 1 - nepochs) / float(nepochs_decay + 1)
    return lr * jnp.maximum(factor, 0.0).astype(jnp.float32)
  return schedule


class OMGDCycle(Method):
  roles = ("teacher_a", "teacher_b", "teacher_selected", "student", "discriminator_a",
           "discriminator_b")
  generator_roles = ("teacher_a", "teacher_b", "teacher_selected", "student")

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    cyc = config.cycle
    for field in ("m", "n_dis", "epoch_steps"):
      if isinstance(cyc[field], bool) or not isinstance(cyc[field], int) or cyc[field] <= 0:
        raise ValueError(f"cycle.{field} must be a positive integer, got {cyc[field]!r}")
    self.schedule = RoundSchedule(cyc.epoch_steps, cyc.m, cyc.n_dis)
    self.loss_cfg = loss = config.loss
    if loss.gan_mode not in gan.GAN_KINDS:
      raise ValueError(f"loss.gan_mode: unknown '{loss.gan_mode}'; choose from {', '.join(gan.GAN_KINDS)}")
    if loss.pool_size < 0:
      raise ValueError(f"loss.pool_size must be >= 0, got {loss.pool_size}")
    if config.selection.metric not in SELECTION_METRICS:
      raise ValueError(f"selection.metric: unknown '{config.selection.metric}'; choose from "
                       f"{', '.join(SELECTION_METRICS)}")
    self.image_size = size = config.data.crop_size
    self.generators, fields_of = {}, {}
    for role in (TEACHER, STUDENT):
      fields = fields_of[role] = generator_fields(config[role], size, role)
      models.check_width(f"{role}.ngf", fields.get("ngf"))
      models.check_image_size(fields["name"], size, **{k: v for k, v in fields.items() if k != "name"})
      self.generators[role] = models.build_generator(**fields)
    for field in ("teacher.norm", "discriminator.norm"):
      group, key = field.split(".")
      if config[group].get(key, "instance") != "instance":
        raise ValueError(f"{field}={config[group][key]}: CycleGAN's teachers and discriminators "
                         "use instance norm here (as the reference)")
    self.init_files = {}
    explicit = tuple(k for k in ("num_downs", "n_blocks") if config.teacher.get(k) is not None)
    for name, key in INIT_FIELDS.items():
      path = config.teacher.get(key, "") or ""
      if path:
        teacher_file.check_init_file(
            path, fields_of[TEACHER], TEACHER, size, explicit, field=f"teacher.{key}",
            fixed={"norm": ("instance", "CycleGAN's teachers use instance norm, as the reference")})
        self.init_files[name] = path
    models.check_discriminator_size(size)
    models.check_width("discriminator.ndf", config.discriminator.get("ndf"))
    # define_D 'basic' (n_layers 3) on one image: every block shared, one branch.
    # The reference's plain PatchGAN (define_D 'basic': 3 strided layers, instance norm).
    self.discriminator = models.NLayerDiscriminator(ndf=config.discriminator.ndf, n_layers=3,
                                                    norm="instance")
    self.use_cd = loss.lambda_cd > 0
    if self.use_cd:
      teacher_channels = self.generators[TEACHER].feature_channels()
      if len(teacher_channels) != len(self.generators[STUDENT].feature_channels()):
        raise ValueError(f"loss.lambda_cd > 0 needs a student of the teacher's family "
                         f"({config.teacher.name} vs {config.student.name})")
      self.connectors = Connectors(tuple(teacher_channels))
    wants_vgg = loss.lambda_style > 0 or loss.lambda_feature > 0
    self.vgg_path = find_vgg_weights(config.vgg.weights) if wants_vgg else None
    self.vgg = vgg.VGG16Features(input_normalization=config.vgg.input_normalization)
    opt = config.optimizer
    self.learning_rate = reference_linear_decay(opt.lr, opt.nepochs, opt.nepochs_decay)
    self.optimizer = common.adam(opt.b1, opt.b2, self.learning_rate)
    self.num_rounds = self.schedule.num_rounds(config.num_train_steps)
    s = self.schedule
    self._notes = [Note(
        f"rounds of {s.teacher_steps} teacher steps (m={s.m} epochs of {s.epoch_steps}) then "
        f"{s.student_steps} student steps (n_dis={s.n_dis}); {self.num_rounds} round(s)")]
    if self.init_files:
      self._notes.append(Note(
          f"G_A from {self.init_files.get('g_a', 'fresh weights')}, G_B from "
          f"{self.init_files.get('g_b', 'fresh weights')}; both trained online from there"))
    if config.selection.metric == "none":
      self._notes.append(Note("selection.metric=none: the student distils from the latest G_A "
                              "at each round's end (no FID selection)", WARNING))
    elif config.selection.rewrite_on_either:
      self._notes.append(Note("selection.rewrite_on_either: G_A is also taken when G_B's FID "
                              "improves (the reference's quirk)"))
    if self.vgg_path:
      self._notes.append(Note(f"VGG16 perceptual losses on, weights from {self.vgg_path}"))
    elif wants_vgg:
      self._notes.append(Note(
          f"VGG16 weights not found (set --config.vgg.weights=/path/{download.VGG16.filename} or "
          f"put the file in {download.cache_dir()}/): the style and feature loss terms are off",
          WARNING))

  # ----------------------------------------------------------------------------- bookkeeping
  def notes(self) -> list[Note]:
    return list(self._notes)

  def active_losses(self) -> dict[str, float]:
    weights = {k: float(v) for k, v in self.loss_cfg.items() if k.startswith("lambda_")}
    if self.vgg_path is None:
      weights.pop("lambda_style")
      weights.pop("lambda_feature")
    return {k[len("lambda_"):]: v for k, v in weights.items() if v != 0}

  def phase(self, step: int) -> str:
    return self.schedule.phase(step)

  def must_evaluate(self, step: int) -> bool:
    return self.schedule.selects(step)

  def load_frozen(self, restoring: bool = False):
    """VGG16 weights, and the user's teachers to start from ("teacher_init": {"g_a", "g_b"}
    params; not needed when restoring)."""
    frozen = {"vgg": vgg.load_vgg16(self.vgg_path)} if self.vgg_path else {}
    if self.init_files and not restoring:
      frozen["teacher_init"] = {}
      for name, path in self.init_files.items():
        variables, notes = teacher_file.load_teacher(
            path, self.generators[TEACHER], self.image_size, TEACHER,
            field=f"teacher.{INIT_FIELDS[name]}")
        self._notes.extend(Note(text) for text in notes)
        frozen["teacher_init"][name] = variables["params"]
    return frozen

  # ----------------------------------------------------------------------------- state
  def init_state(self, rng: jax.Array, batch, frozen) -> CycleState:
    x = batch["A"][:1]
    keys = dict(zip(["state", "g_a", "g_b", "d_a", "d_b", "student", "connectors"],
                    jax.random.split(rng, 7)))
    teacher = {name: common.init_net(self.generators[TEACHER], keys[name], self.optimizer, x)
               for name in ("g_a", "g_b")}
    for name, params in frozen.get("teacher_init", {}).items():  # The user's weights.
      teacher[name] = teacher[name].replace(params=params)
    disc = {name: common.init_net(self.discriminator, keys[name], self.optimizer, x)
            for name in ("d_a", "d_b")}
    student = common.init_net(self.generators[STUDENT], keys["student"], self.optimizer, x)
    params, batch_stats = {"generator": student.params}, {"generator": student.batch_stats}
    if self.use_cd:
      feats = jax.eval_shape(lambda: self.generators[STUDENT].apply(
          student.variables(), x, train=False, return_features=True)[1])
      connectors = common.init_net(self.connectors, keys["connectors"], self.optimizer, feats)
      params["connectors"] = connectors.params
      batch_stats["connectors"] = connectors.batch_stats
    pool = lambda: image_pool.ImagePool.create(self.loss_cfg.pool_size, x.shape[1:])  # noqa: E731
    return CycleState(
        step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(keys["state"]),
        teachers=NetState.create({"params": {n: t.params for n, t in teacher.items()}},
                                 self.optimizer),
        discriminators=NetState.create({"params": {n: d.params for n, d in disc.items()}},
                                       self.optimizer),
        pool_a=pool(), pool_b=pool(),
        student=NetState.create({"params": params, "batch_stats": batch_stats}, self.optimizer),
        selected_g_a=jax.tree_util.tree_map(jnp.copy, {"params": teacher["g_a"].params}),
        best_fid=jnp.full((2,), NO_FID, jnp.float32),
        history_fid=jnp.full((self.num_rounds, 2), NO_FID, jnp.float32),
        history_chosen=jnp.full((self.num_rounds,), -1, jnp.int32))

  # ----------------------------------------------------------------------------- the steps
  def train_step(self, state: CycleState, batch, frozen, phase: str):
    if phase == TEACHER:
      return self._teacher_step(state, batch)
    return self._student_step(state, batch, frozen)

  def _teacher_step(self, state: CycleState, batch):
    """`optimize_parameters`: G_A + G_B with D frozen, then D_A and D_B on pooled fakes."""
    cfg = self.loss_cfg
    real_a, real_b = batch["A"], batch["B"]
    dropout_key, pool_a_key, pool_b_key = jax.random.split(common.step_rng(state), 3)
    clock = self.schedule.teacher_epochs(state.step)
    generator, discriminator = self.generators[TEACHER], self.discriminator

    def net(params, name):
      return lambda image: generator.apply({"params": params[name]}, image, train=True,
                                           rngs={"dropout": dropout_key})

    def judge(params, name):
      return lambda image: discriminator.apply({"params": params[name]}, image, train=True)

    def generators_loss(params):
      total, terms, images = cycle.generator_losses(
          net(params, "g_a"), net(params, "g_b"), judge(d_params, "d_a"), judge(d_params, "d_b"),
          real_a, real_b, gan_mode=cfg.gan_mode, lambda_a=cfg.lambda_a, lambda_b=cfg.lambda_b,
          lambda_identity=cfg.lambda_identity)
      return total, (terms, images)

    d_params = jax.lax.stop_gradient(state.discriminators.params)  # Frozen for this update.
    (g_total, (terms, images)), g_grads = jax.value_and_grad(generators_loss, has_aux=True)(
        state.teachers.params)
    teachers = state.teachers.apply_gradients(g_grads, state.teachers.batch_stats, step=clock)

    # D sees the fakes of the forward above (pre-update G_A, G_B), through the history pools.
    pool_b, fake_b = image_pool.query(state.pool_b, jax.lax.stop_gradient(images["fake_b"]),
                                      pool_b_key)
    pool_a, fake_a = image_pool.query(state.pool_a, jax.lax.stop_gradient(images["fake_a"]),
                                      pool_a_key)

    def discriminators_loss(params):
      d_a = cycle.discriminator_loss(judge(params, "d_a"), real_b, fake_b, gan_mode=cfg.gan_mode)
      d_b = cycle.discriminator_loss(judge(params, "d_b"), real_a, fake_a, gan_mode=cfg.gan_mode)
      return d_a + d_b, {"discriminators/d_a": d_a, "discriminators/d_b": d_b}

    (d_total, d_metrics), d_grads = jax.value_and_grad(discriminators_loss, has_aux=True)(
        state.discriminators.params)
    discriminators = state.discriminators.apply_gradients(
        d_grads, state.discriminators.batch_stats, step=clock)
    metrics = {"learning_rate": self.learning_rate(clock),
               **{f"teachers/{k}": v for k, v in terms.items()}, "teachers/total": g_total,
               **d_metrics, "discriminators/total": d_total}
    return state.replace(step=state.step + 1, teachers=teachers, discriminators=discriminators,
                         pool_a=pool_a, pool_b=pool_b), metrics

  def _student_loss(self, params, batch_stats, x, target, teacher_feats, frozen, rng):
    """`backward_G_Student`: output distillation from the selected G_A + channel distillation."""
    cfg = self.loss_cfg
    out, gen_stats = common.run_train_mode(
        self.generators[STUDENT], {"params": params["generator"],
                                   "batch_stats": batch_stats["generator"]},
        x, return_features=self.use_cd, rngs={"dropout": rng})
    fake, feats = out if self.use_cd else (out, None)
    new_stats = {"generator": gen_stats}
    features = None
    if "vgg" in frozen:
      features = lambda images: self.vgg.apply({"params": frozen["vgg"]}, images)  # noqa: E731
    terms = common.output_distillation_terms(fake, [target], cfg, features)
    if self.use_cd:
      mapped, new_stats["connectors"] = common.run_train_mode(
          self.connectors, {"params": params["connectors"],
                            "batch_stats": batch_stats["connectors"]}, feats)
      terms["cd"] = cfg.lambda_cd * distill.channel_distillation_loss(mapped, teacher_feats)
    total = sum(terms.values())
    return total, ({f"student/{k}": v for k, v in terms.items()}, new_stats)

  def _student_step(self, state: CycleState, batch, frozen):
    """One student step against the selected G_A (instance norm: its train and inference modes
    agree, so it runs in inference mode)."""
    x = batch["A"]
    teacher = self.generators[TEACHER].apply(state.selected_g_a, x, train=False,
                                             return_features=self.use_cd)
    target, teacher_feats = teacher if self.use_cd else (teacher, None)
    clock = self.schedule.teacher_epochs(state.step)
    (total, (metrics, stats)), grads = jax.value_and_grad(self._student_loss, has_aux=True)(
        state.student.params, state.student.batch_stats, x, jax.lax.stop_gradient(target),
        jax.lax.stop_gradient(teacher_feats), frozen, common.step_rng(state))
    student = state.student.apply_gradients(grads, stats, step=clock)
    metrics = {"learning_rate": self.learning_rate(clock), **metrics, "student/total": total}
    return state.replace(step=state.step + 1, student=student), metrics

  # ----------------------------------------------------------------------------- selection
  def on_eval(self, state: CycleState, results: dict[str, dict[str, float]]) -> CycleState:
    """At a teacher stage's end: G_A becomes the distillation target when its FID improved (or
    always, with selection.metric=none); the round's FIDs and choice go to the history."""
    step = int(jax.device_get(state.step))
    if not self.schedule.selects(step):
      return state
    fids = [float(results.get(f"teacher_{d}", {}).get("fid", NO_FID)) for d in DIRECTIONS]
    fids = [f if math.isfinite(f) else NO_FID for f in fids]
    best = [float(b) for b in jax.device_get(state.best_fid)]
    improved = [f < b for f, b in zip(fids, best)]
    if self.config.selection.metric == "none":
      chosen = True
    else:
      if fids[0] == NO_FID:
        logging.warning("step %d: no FID of teacher_a to select by; the selection is kept", step)
      chosen = improved[0] or (bool(self.config.selection.rewrite_on_either) and improved[1])
    new_best = [min(f, b) for f, b in zip(fids, best)]
    round_index = self.schedule.round_of(step)
    selected = state.selected_g_a
    if chosen:  # A copy: the state's buffers are donated to the next step, each once.
      selected = jax.tree_util.tree_map(jnp.copy, {"params": state.teachers.params["g_a"]})
    return state.replace(
        selected_g_a=selected,
        best_fid=jnp.asarray(new_best, jnp.float32),
        history_fid=state.history_fid.at[round_index].set(jnp.asarray(fids, jnp.float32)),
        history_chosen=state.history_chosen.at[round_index].set(int(chosen)))

  def report(self, state: CycleState) -> dict:
    """The selection history: round, step, FID per direction, whether G_A was taken."""
    fids = np.asarray(jax.device_get(state.history_fid), np.float64)
    chosen = np.asarray(jax.device_get(state.history_chosen))
    s = self.schedule
    value = lambda f: None if f >= NO_FID else round(float(f), 4)  # noqa: E731
    rows = [{"round": r, "step": r * s.round_steps + s.teacher_steps, "fid_a": value(fids[r, 0]),
             "fid_b": value(fids[r, 1]), "chosen": bool(chosen[r])}
            for r in range(len(chosen)) if chosen[r] >= 0]
    best = np.asarray(jax.device_get(state.best_fid), np.float64)
    return {"selection": rows, "selection_metric": self.config.selection.metric,
            "best_teacher_fid": {"a": value(best[0]), "b": value(best[1])}}

  # ----------------------------------------------------------------------------- inference
  def _variables(self, state: CycleState, role: str):
    if role in ("teacher_a", "teacher_b"):
      return {"params": state.teachers.params["g_" + role[-1]]}
    if role == "teacher_selected":
      return state.selected_g_a
    if role == "student":
      return {"params": state.student.params["generator"],
              "batch_stats": state.student.batch_stats["generator"]}
    return {"params": state.discriminators.params["d_" + role[-1]]}

  def generate(self, state: CycleState, batch, frozen):
    del frozen
    out = {}
    for role in self.generator_roles:
      module = self.generators[STUDENT if role == "student" else TEACHER]
      x = batch["B"] if role == "teacher_b" else batch["A"]
      out[role] = common.apply_eval(module, self._variables(state, role), x)
    return out

  def real_images(self, batch):
    return {"A": batch["A"], "B": batch["B"]}

  def compared_with(self, role):
    return "A" if role == "teacher_b" else "B"

  def counted_by(self, name):
    """Evaluation batches repeat the smaller domain: each image counts once."""
    return "mask_B" if name in ("teacher_b", "B") else "mask_A"

  def paired_targets(self, batch, outputs):
    """The student against the teacher it distils from, and against the latest G_A."""
    return {"student": {"teacher_selected": outputs["teacher_selected"],
                        "teacher_a": outputs["teacher_a"]}}

  def sample_columns(self, batch, outputs):
    """Input A | G_A | selected G_A | student, then input B | G_B."""
    return {"input A": batch["A"], "teacher A->B": outputs["teacher_a"],
            "selected teacher": outputs["teacher_selected"], "student": outputs["student"],
            "input B": batch["B"], "teacher B->A": outputs["teacher_b"]}

  def networks(self, state: CycleState, frozen=None) -> dict[str, Network]:
    shape = (self.image_size, self.image_size, 3)
    nets = {role: common.inference_network(
                self.generators[STUDENT if role == "student" else TEACHER],
                self._variables(state, role), shape) for role in self.generator_roles}
    for role in ("discriminator_a", "discriminator_b"):
      nets[role] = Network(functools.partial(_judge_eval, self.discriminator),
                           self._variables(state, role), shape)
    return nets


def _judge_eval(discriminator, variables, images):
  """The PatchGAN's logits in inference mode."""
  return discriminator.apply(variables, images, train=False)
