"""NICKEL & DiME (Yeo, Jang, Yoo, ECCV 2024): a channel-pruned StyleGAN2 student trained with two
discriminators, distribution matching in embedding space and knowledge exchange through its own
discriminator. As SangyeopYeo/NICKEL_AND_DIME trains it (training/loss_DD.py,
training/training_loop_DD.py; facts in ../shared/notes/nickel_dime_stylegan2.md):

  G_T    the teacher generator (G_ema of a network pickle or of our StyleGAN2 run), frozen
  G_S    the teacher's synthesis channel-pruned (models/stylegan2_pruning.py), mapping copied
         and trainable, with an EMA; D_S random init, D_T the teacher's discriminator, trained on
  Gmain  softplus(-D_S(G_S z)) + softplus(-D_T(G_S z)) + DiME(G_S z) [+ output KD, an arm]
  Greg   the student's path length, every `pl_interval` (as StyleGAN2)
  Dmain  D_S: softplus(D_S(G_S z)) + softplus(-D_S(x)) + w NICKEL(F_T(z), D_S features of G_T z)
         D_T: softplus(D_T(G_S z)) + softplus(-D_T(x))        (student fakes against reals)
  Dreg   R1 on reals for D_S and D_T, every `r1_interval`
One fused step per (Greg, Dreg) phase updates G_S, D_S and D_T; Adam(0.0025, 0, 0.99) with the
lazy-regularisation rescaling, style mixing 0.9 with the same cutoff and second latent for the
teacher, NaN/Inf gradients sanitised, all as methods/stylegan2.py.

DiME (`dime.form`): "moments" is the reference's form, per micro-batch the raw first and second
moments of phi(G_S z) against targets from `dime.num_target_samples` teacher samples (computed
at start, deterministic, cached under $GANKD_CACHE); "mmd" is the kernel MMD between phi of the
student batch and of the teacher batch on the same latents; "none" turns it off. NICKEL compares
the teacher's synthesis block output at `nickel.resolution` with D_S's block output at that
resolution on the teacher image (a 1x1 adapter when their channels differ), by the MSE of the
high Haar bands (`nickel.levels`); its gradient reaches D_S only. Output KD (not in the paper;
an arm of experiments/nickel_dime.py, off by default): `output_kd.l1` times the L1 to G_T(z) on
the same latents plus `output_kd.perceptual` times the mean absolute difference of
`output_kd.network`'s features of the two images.

Loss weights (`loss_weights`) are constants of the compiled step, or with
`weights_as_step_inputs` inputs of it (`frozen["weights"]`): then every term the config can
compute is compiled and one of weight 0 is skipped at run time (`lax.cond`, reported as 0), so
runs that differ only in weights compile one step.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gankd_jax import runs
from gankd_jax.losses import nickel_dime
from gankd_jax.methods import common
from gankd_jax.methods.base import Method, NetState, Network, Note
from gankd_jax.methods import stylegan2 as sg_method
from gankd_jax.methods.stylegan2 import (EVAL_NOISE_SEED, StyleGAN2, discriminator_kwargs,
                                         generator_kwargs, r1_penalty, sanitize)
from gankd_jax.models import layers, stylegan2, stylegan2_pruning

METHOD_NAME = "nickel_dime"
STUDENT, TEACHER = "student", "teacher"
STUDENT_D, TEACHER_D = "student_discriminator", "teacher_discriminator"
DIME_FORMS = ("moments", "mmd", "none")
KD_PHI = "output_kd"  # The output-KD perceptual network's key among the cached embeddings.
# Teacher fields a run's config.json must share with this config (the architecture).
TEACHER_FIELDS = ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max",
                  "architecture", "conv_clamp")


@flax.struct.dataclass
class NickelDiMeState:
  step: jax.Array
  rng: jax.Array                   # Raw key data (uint32).
  generator: NetState              # G_S; `batch_stats` holds its buffers (w_avg, noise_const).
  generator_ema: Any               # G_S EMA variables {"params", "buffers"}.
  discriminator: NetState          # D_S: {"net": D params, "adapter": 1x1 conv or {}}.
  teacher_discriminator: NetState  # D_T, starting from the teacher's D.
  pl_mean: jax.Array


def _map(module, z, c, **kwargs):
  return module.mapping(z, c, **kwargs)


def _synthesize(module, ws, **kwargs):
  return module.synthesis(ws, **kwargs)


class Adapter(nn.Module):
  """1x1 conv from D_S's feature channels to the teacher's (only when they differ)."""
  features: int

  @nn.compact
  def __call__(self, x):
    return nn.Conv(self.features, (1, 1), conv_general_dilated=layers.mixed_conv, name="conv")(x)


# ------------------------------------------------------------------------------- embeddings
@dataclasses.dataclass(frozen=True)
class Embedding:
  """One DiME feature network phi: images in [-1, 1] -> (N, D)."""
  name: str
  apply: Any          # (variables, images) -> (N, D)
  variables: Any


def embedding_names() -> tuple[str, ...]:
  """The phi networks DiME can use, by name."""
  try:
    from gankd_jax.models import embedding  # pylint: disable=import-outside-toplevel
    return ("digit_classifier", *embedding.EMBEDDINGS)
  except ImportError:
    return ("digit_classifier",)


def load_embedding(name: str, entry: ml_collections.ConfigDict, field: str = "") -> Embedding:
  """phi by network name: `digit_classifier` (shipped weights, for digit data; with random_init
  its architecture seeded at random) or a network of gankd_jax.models.embedding's registry
  (resnet50 for DINO, clip_rn50, inception, vgg16). `field`: the config path named in errors
  (default dime.networks.NAME)."""
  field = field or f"dime.networks.{name}"
  if entry.network not in embedding_names():
    raise ValueError(f"{field}.network: unknown '{entry.network}'; choose from "
                     f"{', '.join(embedding_names())}")
  random_init, seed = bool(entry.get("random_init", False)), int(entry.get("seed", 0))
  if entry.network == "digit_classifier":
    if entry.normalization != "none":
      raise ValueError(f"{field}.normalization: digit_classifier takes [-1, 1] "
                       f"images as they are (none), not {entry.normalization}")
    if random_init and entry.weights:
      raise ValueError(f"{field}: both weights={entry.weights} and random_init were given")
    from gankd_jax.metrics import digit_classifier  # pylint: disable=import-outside-toplevel
    if random_init:  # Not the evaluation network: the shipped weights are FID's features.
      from gankd_jax.models import embedding  # pylint: disable=import-outside-toplevel
      variables = embedding.random_variables(jax.eval_shape(
          digit_classifier.DigitClassifier().init, jax.random.key(0),
          jnp.zeros((1, digit_classifier.INPUT_SIZE, digit_classifier.INPUT_SIZE, 1))), seed)
    else:
      variables = digit_classifier.load_weights(entry.weights or None)
    apply = lambda v, x: digit_classifier.apply(v, x)["features"]
  else:  # Resizes (CLIP: 224, bilinear) and normalises as the entry says.
    from gankd_jax.models import embedding  # pylint: disable=import-outside-toplevel
    apply, variables = embedding.make_embedding(
        entry.network, entry.weights or None, normalization=entry.normalization,
        random_init=random_init, seed=seed, flag=f"--config.{field}.weights")
  return Embedding(name, lambda v, x: apply(v, x).astype(jnp.float32), variables)


def check_config(config: ml_collections.ConfigDict) -> None:
  """One-line ValueErrors, before anything is read or built."""
  ratio = config.student.pruning_ratio
  if not 0.0 <= ratio < 1.0:
    raise ValueError(f"student.pruning_ratio must be in [0, 1), got {ratio}")
  if config.student.criterion not in stylegan2_pruning.CRITERIA:
    raise ValueError(f"student.criterion: unknown '{config.student.criterion}'; choose from "
                     f"{', '.join(stylegan2_pruning.CRITERIA)}")
  if config.teacher.network and config.teacher.workdir:
    raise ValueError("set one of teacher.network (a network pickle) and teacher.workdir (a "
                     "StyleGAN2 run of ours), not both")
  if config.dime.form not in DIME_FORMS:
    raise ValueError(f"dime.form: unknown '{config.dime.form}'; choose from {', '.join(DIME_FORMS)}")
  if config.dime.form == "moments" and config.batch_size % config.dime.micro_batch:
    raise ValueError(f"dime.micro_batch={config.dime.micro_batch} must divide batch_size="
                     f"{config.batch_size} (the moments are taken per micro-batch)")
  entries = [(f"dime.networks.{name}", entry) for name, entry in config.dime.networks.items()]
  for field, entry in entries + [("output_kd.network", config.output_kd.network)]:
    if entry.normalization not in ("none", "imagenet", "clip"):
      raise ValueError(f"{field}.normalization: unknown '{entry.normalization}'; "
                       "choose from none, imagenet, clip")
  for field in ("l1", "perceptual"):
    if config.output_kd[field] < 0:
      raise ValueError(f"output_kd.{field} must be >= 0, got {config.output_kd[field]}")
  resolution, size = config.nickel.resolution, config.data.image_size
  if config.nickel.weight or config.get("weights_as_step_inputs", False):
    if resolution < 8 or resolution > size // 2 or resolution & (resolution - 1):
      raise ValueError(f"nickel.resolution={resolution}: the generator has no block output "
                       f"there that D_S also has; choose a power of two in [8, {size // 2}]")
    if resolution >> config.nickel.levels < 1:
      raise ValueError(f"nickel.levels={config.nickel.levels} halves {resolution} px below 1 px")


class NickelDiMe(StyleGAN2):
  """G_S (pruned G_T), its EMA, D_S and D_T behind the loop's Method contract."""

  generator_roles = (STUDENT, TEACHER)
  roles = (STUDENT, TEACHER, STUDENT_D, TEACHER_D)
  resumable_fields = frozenset()

  def __init__(self, config: ml_collections.ConfigDict):  # pylint: disable=super-init-not-called
    # StyleGAN2.__init__ builds one generator from the config; here the student is the
    # teacher's architecture pruned, so only the shared checks and pieces are reused.
    Method.__init__(self, config)
    sg_method.check_config(config)
    check_config(config)
    self.loss_cfg = config.loss
    self.image_shape = tuple(runs.example_batch(config.data)["image"].shape[1:])
    self.teacher_kwargs = generator_kwargs(config, self.image_shape)
    self.teacher = stylegan2.generator_from_kwargs(self.teacher_kwargs)
    self.generator = stylegan2.generator_from_kwargs(stylegan2_pruning.student_kwargs(
        self.teacher_kwargs, config.student.pruning_ratio))
    self.discriminator = stylegan2.discriminator_from_kwargs(
        discriminator_kwargs(config, self.image_shape))
    self.z_dim = config.generator.z_dim
    self.g_optimizer = sg_method.lazy_adam(config.optimizer, self.loss_cfg.pl_interval)
    self.d_optimizer = sg_method.lazy_adam(config.optimizer, self.loss_cfg.r1_interval)
    self.init_from = ""
    self.nickel = config.nickel
    self.dime = config.dime
    self.weights_as_inputs = bool(config.get("weights_as_step_inputs", False))
    self._embeddings: dict[str, Embedding] = {}
    self._notes = [Note(
        f"NICKEL & DiME at {self.image_shape[0]} px: student pruned by "
        f"{config.student.pruning_ratio:g} ({config.student.criterion}), NICKEL "
        f"{self.nickel.weight:g} at {self.nickel.resolution} px, DiME {self.dime.form}")]
    if config.student.criterion == "content_aware":
      self._notes.append(Note("student.criterion content_aware needs a mask function; the "
                              "command line has none, so it fails: use saliency, its "
                              "data-agnostic form, or call stylegan2_pruning with mask_fn"))

  # ----------------------------------------------------------------------------- bookkeeping
  def active_losses(self) -> dict[str, float]:
    cfg, losses = self.loss_cfg, {"adversarial_student_d": 1.0, "adversarial_teacher_d": 1.0}
    losses.update({"r1": cfg.r1_gamma / 2, "path_length": cfg.pl_weight})
    losses.update({k: v for k, v in self.loss_weights().items() if not k.startswith("dime_")})
    if self.dime.form != "none":
      for name, entry in self.dime.networks.items():
        losses[f"dime_{name}"] = float(entry.first_weight + entry.second_weight)
    return {k: float(v) for k, v in losses.items() if v}

  def loss_weights(self) -> dict[str, float]:
    """The weight of every optional term by name (the config's): the step's constants, or its
    inputs `frozen["weights"]` with weights_as_step_inputs."""
    kd = self.config.output_kd
    weights = {"nickel": self.nickel.weight, "output_kd_l1": kd.l1,
               "output_kd_perceptual": kd.perceptual}
    for name, entry in self.dime.networks.items():
      weights.update({f"dime_{name}_first": entry.first_weight,
                      f"dime_{name}_second": entry.second_weight})
    return {k: float(v) for k, v in weights.items()}

  def _dime_weight_names(self) -> list[str]:
    return [f"dime_{name}_{moment}" for name in self.dime.networks
            for moment in ("first", "second")]

  def _compiled(self, term: str) -> bool:
    """Whether the step computes `term` ("dime" or a `loss_weights` name) at all."""
    if term == "dime":
      return self.dime.form != "none"
    return self.weights_as_inputs or bool(self.loss_weights()[term])

  def _weight(self, frozen, name: str):
    return frozen["weights"][name] if self.weights_as_inputs else self.loss_weights()[name]

  def _unless_zero(self, frozen, names, compute):
    """compute(), the value of terms weighted by `names`. With weights as step inputs, a run-time
    branch: zeros of its shapes when every one of those weights is 0, so the term costs nothing
    then (gradients flow through the branch taken)."""
    if not self.weights_as_inputs:
      return compute()
    active = functools.reduce(jnp.logical_or, [frozen["weights"][n] != 0 for n in names])
    zeros = lambda: jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                           jax.eval_shape(compute))
    return jax.lax.cond(active, compute, zeros)

  def _teacher_variables(self) -> tuple[Any, Any]:
    """(G_T variables, D_T variables) from the pickle or the run, checked against this config."""
    cfg = self.config.teacher
    if not (cfg.network or cfg.workdir):
      raise ValueError("no teacher: set --config.teacher.workdir=DIR (a run of "
                       "configs/stylegan2.py) or --config.teacher.network=FILE.pkl")
    if cfg.network:
      if not os.path.isfile(cfg.network):
        raise ValueError(f"teacher.network: no such network pickle: {cfg.network}")
      from gankd_jax.weights import network_pickle  # pylint: disable=import-outside-toplevel
      return (network_pickle.load_into(cfg.network, "G_ema", self.teacher),
              network_pickle.load_into(cfg.network, "D", self.discriminator))
    run_config = runs.read_run_config(cfg.workdir)
    if run_config.method != "stylegan2":
      raise ValueError(f"teacher.workdir={cfg.workdir} is a {run_config.method} run; the teacher "
                       "must be a stylegan2 run")
    if runs.image_size(run_config.data) != self.image_shape[0]:
      raise ValueError(f"teacher.workdir={cfg.workdir} generates {runs.image_size(run_config.data)}"
                       f" px images, this config {self.image_shape[0]} px (data.image_size)")
    for section, fields in (("generator", TEACHER_FIELDS),
                            ("discriminator", ("channel_base", "channel_max", "architecture"))):
      for field in fields:
        theirs, ours = run_config[section][field], self.config[section][field]
        if theirs != ours:
          raise ValueError(f"teacher.workdir={cfg.workdir} has {section}.{field}={theirs}, this "
                           f"config {ours}: set --config.{section}.{field}={theirs}")
    restored = runs.restore_run(cfg.workdir)
    state = jax.device_get(restored.state)
    return state.generator_ema, {"params": state.discriminator.params}

  def load_frozen(self, restoring: bool = False) -> Any:
    """G_T, the DiME networks and targets; unless restoring, also D_T's and G_S's start."""
    g_t, d_t = self._teacher_variables()
    g_t = jax.tree_util.tree_map(jnp.asarray, g_t)
    frozen = {"teacher": g_t, "phi": {}, "targets": {}}
    if self.dime.form != "none":
      for name, entry in self.dime.networks.items():
        embedding = self._embedding_cache(name, entry)  # Read once; the step reuses it.
        frozen["phi"][name] = embedding.variables
        if self.dime.form == "moments":
          frozen["targets"][name] = self._moment_targets(g_t, embedding)
    if self._compiled("output_kd_perceptual"):
      frozen["kd_phi"] = self._kd_embedding().variables
    if self.weights_as_inputs:
      frozen["weights"] = {k: jnp.asarray(v, jnp.float32) for k, v in self.loss_weights().items()}
    if not restoring:
      frozen["init"] = {"D_T": jax.tree_util.tree_map(jnp.asarray, d_t),
                        "G_S": self.pruned_student(jax.device_get(g_t))}
    return frozen

  def pruned_student(self, teacher_variables) -> Any:
    """G_S's starting variables: the teacher's kept slices under `student.criterion`."""
    cfg = self.config.student
    scores = stylegan2_pruning.score_channels(cfg.criterion, self.teacher, teacher_variables,
                                              seed=cfg.seed, num_samples=cfg.criterion_samples)
    masks = stylegan2_pruning.keep_masks(scores, cfg.pruning_ratio)
    return jax.tree_util.tree_map(jnp.asarray, stylegan2_pruning.prune_generator(
        teacher_variables, masks, self.image_shape[0]))

  def _embedding_cache(self, name, entry) -> Embedding:
    """phi `name`, read once (by load_frozen) and reused by the traced step."""
    if name not in self._embeddings:
      self._embeddings[name] = load_embedding(name, entry)
    return self._embeddings[name]

  def _kd_embedding(self) -> Embedding:
    """The output-KD arm's perceptual network (output_kd.network), read once like phi."""
    if KD_PHI not in self._embeddings:
      self._embeddings[KD_PHI] = load_embedding(KD_PHI, self.config.output_kd.network,
                                                field="output_kd.network")
    return self._embeddings[KD_PHI]

  def _moment_targets(self, g_t, embedding: Embedding) -> dict[str, jax.Array]:
    """First and second raw moments of phi over N teacher samples (seeded, style mixing off,
    random noise), cached by teacher, phi and N."""
    n, batch = self.dime.num_target_samples, 64
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(jax.device_get(g_t)):
      digest.update(np.asarray(leaf).tobytes())
    for leaf in jax.tree_util.tree_leaves(jax.device_get(embedding.variables)):
      digest.update(np.asarray(leaf).tobytes())
    digest.update(repr((n, self.dime.target_seed, self.dime.networks[embedding.name].to_dict()
                        )).encode())
    cache_dir = os.path.join(os.environ.get("GANKD_CACHE") or os.path.expanduser(
        "~/.cache/gankd_jax"), "dime_targets")
    path = os.path.join(cache_dir, f"{digest.hexdigest()[:24]}.npz")
    if os.path.isfile(path):
      with np.load(path) as cached:
        return {"first": jnp.asarray(cached["first"]), "second": jnp.asarray(cached["second"])}

    @jax.jit
    def sums(key):
      z_key, noise_key = jax.random.split(key)
      z = self._latents(z_key, batch)
      images = self.teacher.apply(g_t, z, self._labels(batch), noise_mode="random",
                                  rngs={"noise": noise_key})
      phi = embedding.apply(embedding.variables, images)
      return jnp.sum(phi, axis=0), jnp.sum(jnp.square(phi), axis=0)

    first = second = 0.0
    keys = jax.random.split(jax.random.PRNGKey(self.dime.target_seed), -(-n // batch))
    for key in keys:
      s1, s2 = sums(key)
      first, second = first + np.asarray(s1, np.float64), second + np.asarray(s2, np.float64)
    count = len(keys) * batch
    targets = {"first": (first / count).astype(np.float32),
               "second": (second / count).astype(np.float32)}
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **targets)
    os.replace(tmp, path)
    return {k: jnp.asarray(v) for k, v in targets.items()}

  # ----------------------------------------------------------------------------- state
  def _feature_channels(self) -> tuple[int, int]:
    """(teacher synthesis channels, D_S channels) at the NICKEL resolution."""
    res = self.nickel.resolution
    g_chans = stylegan2.channels_dict([res], self.config.generator.channel_base,
                                      self.config.generator.channel_max)[res]
    d_chans = stylegan2.channels_dict([res], self.config.discriminator.channel_base,
                                      self.config.discriminator.channel_max)[res]
    return g_chans, d_chans

  def init_state(self, rng: jax.Array, batch, frozen) -> NickelDiMeState:
    """G_S pruned from G_T (made by `load_frozen`), D_S random, D_T the teacher's D. Without
    them (restoring, model_stats) the same shapes."""
    keys = jax.random.split(rng, 4)
    if "init" in frozen:
      g_vars = frozen["init"]["G_S"]
    else:
      g_vars = self.generator.init({"params": keys[3], "noise": keys[3]},
                                   jnp.zeros((1, self.z_dim)), self._labels(1))
    c = self._labels(1)
    d_s = {"net": self.discriminator.init(keys[1], batch["image"][:1], c)["params"],
           "adapter": {}}
    g_chans, d_chans = self._feature_channels()
    if self._compiled("nickel") and g_chans != d_chans:
      res = self.nickel.resolution
      d_s["adapter"] = Adapter(g_chans).init(keys[2], jnp.zeros((1, res, res, d_chans)))["params"]
    d_t = frozen["init"]["D_T"]["params"] if "init" in frozen else jax.tree_util.tree_map(
        jnp.zeros_like, self.discriminator.init(keys[3], batch["image"][:1], c)["params"])
    net = lambda params, tx: NetState(params=params, batch_stats={}, opt_state=tx.init(params),
                                      tx=tx)
    generator = NetState(params=g_vars["params"], batch_stats=g_vars.get("buffers", {}),
                         opt_state=self.g_optimizer.init(g_vars["params"]), tx=self.g_optimizer)
    return NickelDiMeState(
        step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(keys[0]), generator=generator,
        generator_ema={"params": g_vars["params"], "buffers": g_vars.get("buffers", {})},
        discriminator=net(d_s, self.d_optimizer),
        teacher_discriminator=net(d_t, self.d_optimizer), pl_mean=jnp.zeros((), jnp.float32))

  # ----------------------------------------------------------------------------- pieces
  def _mixing(self, key, z, num_ws):
    """(second latent, cutoff): the draw of StyleGAN2._mapping, shared by G_S and G_T (the
    reference mixes the teacher with the same cutoff and second z); cutoff num_ws: no mixing."""
    cutoff_key, coin_key, z_key = jax.random.split(key, 3)
    cutoff = jax.random.randint(cutoff_key, (), 1, num_ws)
    cutoff = jnp.where(jax.random.uniform(coin_key) < self.loss_cfg.style_mixing_prob, cutoff,
                       num_ws)
    return jax.random.normal(z_key, z.shape, z.dtype), cutoff

  @staticmethod
  def _mix(ws, mixed, cutoff):
    return jnp.where(jnp.arange(ws.shape[1])[None, :, None] >= cutoff, mixed, ws)

  def _teacher_images(self, g_t, z, c, key, *, features: bool = False):
    """G_T(z) with the student's mixing draw (`key` as in `_run_generator`), no gradient."""
    map_key, noise_key = jax.random.split(key)
    z2, cutoff = self._mixing(map_key, z, self.teacher.num_ws)
    mapping = lambda latents: self.teacher.apply(g_t, latents, c, method=_map)
    ws = self._mix(mapping(z), mapping(z2), cutoff)
    out = self.teacher.apply(g_t, ws, noise_mode="random", return_features=features,
                             rngs={"noise": noise_key}, method=_synthesize)
    return jax.lax.stop_gradient(out)

  def _run_generator(self, params, buffers, z, c, key):
    """G_S(z) with style mixing, moving w_avg as the reference's train mode."""
    map_key, noise_key = jax.random.split(key)
    ws, updated = self.generator.apply({"params": params, "buffers": buffers}, z, c,
                                       update_emas=True, mutable=["buffers"], method=_map)
    buffers = updated["buffers"]
    z2, cutoff = self._mixing(map_key, z, self.generator.num_ws)
    mixed = self.generator.apply({"params": params, "buffers": buffers}, z2, c, method=_map)
    return self._synthesis_fn(params, buffers, noise_key)(self._mix(ws, mixed, cutoff)), buffers

  def _discriminate(self, params, images, c):
    return self.discriminator.apply({"params": params}, images, c)

  def _dime_loss(self, images, teacher_images, frozen):
    total, metrics = 0.0, {}
    for name, entry in self.dime.networks.items():
      embedding = self._embedding_cache(name, entry)
      phi = embedding.apply(frozen["phi"][name], images)
      if self.dime.form == "moments":
        targets = frozen["targets"][name]
        first = nickel_dime.moment_matching_loss(phi, targets["first"], targets["second"],
                                                 micro_batch=self.dime.micro_batch,
                                                 weights=(1.0, 0.0))
        second = nickel_dime.moment_matching_loss(phi, targets["first"], targets["second"],
                                                  micro_batch=self.dime.micro_batch,
                                                  weights=(0.0, 1.0))
        total += (self._weight(frozen, f"dime_{name}_first") * first
                  + self._weight(frozen, f"dime_{name}_second") * second)
        metrics.update({f"G/dime_{name}_first": first, f"G/dime_{name}_second": second})
      else:
        phi_t = embedding.apply(frozen["phi"][name], teacher_images)
        mmd = nickel_dime.mmd_rbf(phi, phi_t, self.dime.mmd_bandwidths)
        total += (self._weight(frozen, f"dime_{name}_first")
                  + self._weight(frozen, f"dime_{name}_second")) * mmd
        metrics[f"G/dime_{name}_mmd"] = mmd
    return total, metrics

  # ----------------------------------------------------------------------------- phases
  def _g_main(self, g: NetState, d_params, batch_size, key, step, *, d_t_params=None,
              frozen=None):
    z_key, run_key = jax.random.split(key)
    z, c = self._latents(z_key, batch_size), self._labels(batch_size)
    kd_terms = [t for t in ("output_kd_l1", "output_kd_perceptual") if self._compiled(t)]
    teacher_for = kd_terms + (self._dime_weight_names() if self.dime.form == "mmd" else [])
    teacher_images = self._unless_zero(frozen, teacher_for, lambda: self._teacher_images(
        frozen["teacher"], z, c, run_key)) if teacher_for else None

    def loss(params):
      images, buffers = self._run_generator(params, g.batch_stats, z, c, run_key)
      logits_s = self._discriminate(d_params["net"], images, c)
      logits_t = self._discriminate(d_t_params, images, c)
      adv_s, adv_t = jnp.mean(jax.nn.softplus(-logits_s)), jnp.mean(jax.nn.softplus(-logits_t))
      total, metrics = adv_s + adv_t, {"G/adversarial_student_d": adv_s,
                                       "G/adversarial_teacher_d": adv_t}
      if self._compiled("dime"):
        dime, dime_metrics = self._unless_zero(frozen, self._dime_weight_names(), lambda: (
            self._dime_loss(images, teacher_images, frozen)))
        total, metrics = total + dime, {**metrics, **dime_metrics, "G/dime": dime}
      if self._compiled("output_kd_l1"):
        l1 = self._unless_zero(frozen, ["output_kd_l1"],
                               lambda: jnp.mean(jnp.abs(images - teacher_images)))
        total = total + self._weight(frozen, "output_kd_l1") * l1
        metrics = {**metrics, "G/output_kd_l1": l1}
      if self._compiled("output_kd_perceptual"):
        # L1 between the student's and the teacher's features, same latents.
        phi = self._kd_embedding()
        distance = self._unless_zero(frozen, ["output_kd_perceptual"], lambda: jnp.mean(jnp.abs(
            phi.apply(frozen["kd_phi"], images) - phi.apply(frozen["kd_phi"], teacher_images))))
        total = total + self._weight(frozen, "output_kd_perceptual") * distance
        metrics = {**metrics, "G/output_kd_perceptual": distance}
      return total, (buffers, {**metrics, "G/loss": total, "scores/fake": jnp.mean(logits_s)})

    (_, (buffers, metrics)), grads = jax.value_and_grad(loss, has_aux=True)(g.params)
    return g.apply_gradients(sanitize(grads), buffers, step=step), metrics

  def _d_main_both(self, g: NetState, d_s: NetState, d_t: NetState, real, key, step, frozen):
    z_key, run_key = jax.random.split(key)
    batch_size = real.shape[0]
    z, c = self._latents(z_key, batch_size), self._labels(batch_size)
    fakes, buffers = self._run_generator(g.params, g.batch_stats, z, c, run_key)
    fakes = jax.lax.stop_gradient(fakes)
    res = self.nickel.resolution
    nickel_on = self._compiled("nickel")
    teacher_images, teacher_features = self._unless_zero(frozen, ["nickel"], lambda: (
        self._teacher_images(frozen["teacher"], z, c, run_key, features=True))
    ) if nickel_on else (None, None)

    def student_d_loss(params):
      fake_logits = self._discriminate(params["net"], fakes, c)
      real_logits = self._discriminate(params["net"], real, c)
      value = jnp.mean(jax.nn.softplus(fake_logits)) + jnp.mean(jax.nn.softplus(-real_logits))
      metrics = {"D_S/adversarial": value, "scores/real": jnp.mean(real_logits),
                 "scores/fake_d_s": jnp.mean(fake_logits)}
      if nickel_on:
        def nickel():
          _, features = self.discriminator.apply({"params": params["net"]}, teacher_images, c,
                                                 return_features=True)
          feature = features[res]
          if params["adapter"]:
            feature = Adapter(teacher_features[res].shape[-1]).apply(
                {"params": params["adapter"]}, feature)
          return nickel_dime.nickel_loss(teacher_features[res], feature, self.nickel.levels)
        distance = self._unless_zero(frozen, ["nickel"], nickel)
        value = value + self._weight(frozen, "nickel") * distance
        metrics["D_S/nickel"] = distance
      return value, {**metrics, "D_S/loss": value}

    def teacher_d_loss(params):
      fake_logits = self._discriminate(params, fakes, c)
      real_logits = self._discriminate(params, real, c)
      value = jnp.mean(jax.nn.softplus(fake_logits)) + jnp.mean(jax.nn.softplus(-real_logits))
      return value, {"D_T/loss": value, "scores/real_d_t": jnp.mean(real_logits)}

    (_, metrics), grads = jax.value_and_grad(student_d_loss, has_aux=True)(d_s.params)
    d_s = d_s.apply_gradients(sanitize(grads), {}, step=step)
    (_, t_metrics), grads = jax.value_and_grad(teacher_d_loss, has_aux=True)(d_t.params)
    d_t = d_t.apply_gradients(sanitize(grads), {}, step=step)
    return g.replace(batch_stats=buffers), d_s, d_t, {**metrics, **t_metrics}

  def _r1(self, d: NetState, real, step, net_of, prefix):
    cfg = self.loss_cfg
    c = self._labels(real.shape[0])

    def loss(params):
      penalty = r1_penalty(lambda x: self._discriminate(net_of(params), x, c), real)
      return jnp.mean(penalty * (cfg.r1_gamma / 2)) * cfg.r1_interval, jnp.mean(penalty)

    (_, penalty), grads = jax.value_and_grad(loss, has_aux=True)(d.params)
    return d.apply_gradients(sanitize(grads), {}, step=step), {f"{prefix}/r1_penalty": penalty}

  # ----------------------------------------------------------------------------- the step
  def train_step(self, state: NickelDiMeState, batch, frozen, phase):
    do_g_reg, do_d_reg = phase
    real = batch["image"]
    batch_size = real.shape[0]
    keys = jax.random.split(common.step_rng(state), 3)
    step = state.step
    g, d_s, d_t, pl_mean = (state.generator, state.discriminator, state.teacher_discriminator,
                            state.pl_mean)
    g, metrics = self._g_main(g, d_s.params, batch_size, keys[0], step, d_t_params=d_t.params,
                              frozen=frozen)
    if do_g_reg:
      g, pl_mean, reg_metrics = self._g_reg(g, pl_mean, batch_size, keys[1], step)
      metrics.update(reg_metrics)
    g, d_s, d_t, d_metrics = self._d_main_both(g, d_s, d_t, real, keys[2], step, frozen)
    metrics.update(d_metrics)
    if do_d_reg:
      d_s, m_s = self._r1(d_s, real, step, lambda p: p["net"], "D_S")
      d_t, m_t = self._r1(d_t, real, step, lambda p: p, "D_T")
      metrics.update({**m_s, **m_t})
    generator_ema = self._update_ema(state, g, batch_size)
    return state.replace(step=step + 1, generator=g, generator_ema=generator_ema,
                         discriminator=d_s, teacher_discriminator=d_t, pl_mean=pl_mean), metrics

  # ----------------------------------------------------------------------------- inference
  def generate(self, state: NickelDiMeState, batch, frozen):
    """G_S EMA and G_T on each example's fixed latent, with the same random noise."""
    index = batch["index"]
    z = common.eval_latents(index, self.z_dim)
    c = self._labels(z.shape[0])
    noise_key = jax.random.fold_in(jax.random.key(EVAL_NOISE_SEED), index[0])
    return {STUDENT: self._ema_images(state.generator_ema, z, noise_key),
            TEACHER: self.teacher.apply(frozen["teacher"], z, c, noise_mode="random",
                                        rngs={"noise": noise_key})}

  def paired_targets(self, batch, outputs):
    """The student against the teacher on the same latents (how close distillation came)."""
    return {STUDENT: {TEACHER: outputs[TEACHER]}}

  def sample_columns(self, batch, outputs):
    return {"teacher": outputs[TEACHER], "student": outputs[STUDENT]}

  def networks(self, state: NickelDiMeState, frozen=None) -> dict[str, Network]:
    def generator_apply(module):
      return lambda variables, z: module.apply(variables, z, self._labels(z.shape[0]),
                                               noise_mode="const")

    def discriminator_apply(variables, images):
      return self._discriminate(variables["params"], images, self._labels(images.shape[0]))

    teacher = frozen["teacher"] if frozen and "teacher" in frozen else jax.eval_shape(
        lambda: self.teacher.init({"params": jax.random.PRNGKey(0), "noise": jax.random.PRNGKey(0)},
                                  jnp.zeros((1, self.z_dim)), self._labels(1)))
    return {
        STUDENT: Network(generator_apply(self.generator), state.generator_ema, (self.z_dim,)),
        TEACHER: Network(generator_apply(self.teacher), teacher, (self.z_dim,)),
        STUDENT_D: Network(discriminator_apply, {"params": state.discriminator.params["net"]},
                           self.image_shape),
        TEACHER_D: Network(discriminator_apply, {"params": state.teacher_discriminator.params},
                           self.image_shape),
    }

