"""StyleGAN2 (Karras et al. 2020), trained as NVlabs/stylegan2-ada-pytorch trains it (no ADA).

The reference's training loop (training/training_loop.py, training/loss.py) runs, per minibatch,
up to four phases, each its own optimiser update, in this order; here they are one fused step:

  Gmain  every step            mean softplus(-D(G(z)))                   non-saturating logistic
  Greg   every `pl_interval`   pl_interval * mean pl_weight (|J_w^T y| - a)^2   path length, on
                               batch / pl_batch_shrink, y ~ N(0, I) / sqrt(H W), a the running
                               mean of |J_w^T y| (decay pl_decay)
  Dmain  every step            mean softplus(D(G(z))) + mean softplus(-D(x))
  Dreg   every `r1_interval`   r1_interval * mean r1_gamma / 2 |grad_x D(x)|^2   R1, lazy
  G_ema  <- G + beta (G_ema - G), beta = 0.5 ** (batch / ema_nimg),
            ema_nimg = ema_kimg * 1000, or min(that, images seen * ema_rampup) with a ramp-up

Each phase draws its own latents. G's mapping output is mixed with a second latent's from a
random cutoff with probability `style_mixing_prob`; every G forward of training moves `w_avg` (the
reference's train mode). Adam(lr, betas (0, 0.99), eps 1e-8) with the lazy-regularisation
rescaling lr * k / (k + 1), beta ** (k / (k + 1)) for interval k, one optimiser per network shared
by its main and regularisation phases. Gradients are sanitised before each update as the reference
does (NaN -> 0, +-Inf -> +-1e5). Training may start from a network pickle (`init_from`).
"""

from __future__ import annotations

import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gankd_jax import runs
from gankd_jax.methods import common
from gankd_jax.methods.base import Method, NetState, Network, Note
from gankd_jax.models import stylegan2

METHOD_NAME = "stylegan2"
GENERATOR, DISCRIMINATOR = "generator", "discriminator"
#: Evaluation noise: example batches draw their synthesis noise from (this seed, first index).
EVAL_NOISE_SEED = 20200303


@flax.struct.dataclass
class StyleGAN2State:
  step: jax.Array
  rng: jax.Array               # Raw key data (uint32).
  generator: NetState          # G; `batch_stats` holds its "buffers" (w_avg, noise_const).
  generator_ema: Any           # G_ema's variables {"params", "buffers"} (not trained).
  discriminator: NetState
  pl_mean: jax.Array           # Running mean path length (the reference's loss.pl_mean).


def check_config(config: ml_collections.ConfigDict) -> None:
  """One-line ValueErrors for fields out of range, before anything is built."""
  loss = config.loss
  for field in ("r1_interval", "pl_interval", "pl_batch_shrink"):
    value = loss[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"loss.{field} must be a positive integer, got {value!r}")
  for field in ("r1_gamma", "pl_weight"):
    if loss[field] < 0:
      raise ValueError(f"loss.{field} must be >= 0 (0 turns the term off), got {loss[field]}")
  if not 0.0 <= loss.pl_decay <= 1.0:
    raise ValueError(f"loss.pl_decay must be in [0, 1], got {loss.pl_decay}")
  if not 0.0 <= loss.style_mixing_prob <= 1.0:
    raise ValueError(f"loss.style_mixing_prob must be in [0, 1], got {loss.style_mixing_prob}")
  if config.ema.kimg < 0 or config.ema.rampup < 0:
    raise ValueError(f"ema.kimg and ema.rampup must be >= 0, got {config.ema.kimg} and "
                     f"{config.ema.rampup}")
  if config.batch_size // loss.pl_batch_shrink < 1 and loss.pl_weight:
    raise ValueError(f"loss.pl_batch_shrink={loss.pl_batch_shrink} leaves no example of "
                     f"batch_size={config.batch_size} for the path-length term")
  for field in ("z_dim", "w_dim", "mapping_layers"):
    value = config.generator[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"generator.{field} must be a positive integer, got {value!r}")


def generator_kwargs(config: ml_collections.ConfigDict, image_shape) -> dict[str, Any]:
  """The reference Generator's constructor arguments (its `_init_kwargs`) for this config."""
  cfg = config.generator
  return {
      "z_dim": cfg.z_dim, "c_dim": 0, "w_dim": cfg.w_dim,
      "img_resolution": image_shape[0], "img_channels": image_shape[2],
      "mapping_kwargs": {"num_layers": cfg.mapping_layers},
      "synthesis_kwargs": {"channel_base": cfg.channel_base, "channel_max": cfg.channel_max,
                           "architecture": cfg.architecture,
                           "conv_clamp": cfg.conv_clamp or None},
  }


def discriminator_kwargs(config: ml_collections.ConfigDict, image_shape) -> dict[str, Any]:
  """The reference Discriminator's constructor arguments for this config."""
  cfg = config.discriminator
  return {
      "c_dim": 0, "img_resolution": image_shape[0], "img_channels": image_shape[2],
      "architecture": cfg.architecture, "channel_base": cfg.channel_base,
      "channel_max": cfg.channel_max, "conv_clamp": cfg.conv_clamp or None,
      "epilogue_kwargs": {"mbstd_group_size": cfg.mbstd_group_size,
                          "mbstd_num_channels": cfg.mbstd_num_channels},
  }


def lazy_adam(optimizer: ml_collections.ConfigDict, interval: int) -> optax.GradientTransformation:
  """Adam rescaled for a main phase plus a regularisation phase every `interval` steps."""
  ratio = interval / (interval + 1)
  return optax.chain(
      optax.scale_by_adam(b1=optimizer.b1 ** ratio, b2=optimizer.b2 ** ratio, eps=optimizer.eps),
      optax.scale(-optimizer.lr * ratio))


def sanitize(grads):
  """The reference's `misc.nan_to_num(grad, nan=0, posinf=1e5, neginf=-1e5)`."""
  return jax.tree_util.tree_map(lambda g: jnp.nan_to_num(g, nan=0.0, posinf=1e5, neginf=-1e5),
                                grads)


def path_lengths(synthesis, ws: jax.Array, key: jax.Array) -> jax.Array:
  """|J_w^T y| per example: y ~ N(0, I) / sqrt(H W) over the images `synthesis(ws)` gives;
  squared over w_dim, averaged over the ws, square root (loss.py's Gpl)."""
  images, pullback = jax.vjp(synthesis, ws)
  noise = jax.random.normal(key, images.shape, images.dtype) / np.sqrt(
      images.shape[1] * images.shape[2])
  (grads,) = pullback(noise)
  return jnp.sqrt(jnp.mean(jnp.sum(jnp.square(grads), axis=2), axis=1))


def path_length_penalty(lengths: jax.Array, pl_mean: jax.Array, decay: float
                        ) -> tuple[jax.Array, jax.Array]:
  """((lengths - a)^2 per example, a): a = pl_mean moved towards the batch mean by `decay`. As in
  the reference, `a` is not detached: the penalty's gradient flows through the batch mean too."""
  new_mean = pl_mean + decay * (jnp.mean(lengths) - pl_mean)
  return jnp.square(lengths - new_mean), new_mean


def r1_penalty(discriminator, real: jax.Array) -> jax.Array:
  """|grad_x sum D(x)|^2 per example (the reference's r1_penalty)."""
  grads = jax.grad(lambda x: jnp.sum(discriminator(x)))(real)
  return jnp.sum(jnp.square(grads), axis=tuple(range(1, grads.ndim)))


def ema_beta(step: jax.Array, batch_size: int, ema_kimg: float, rampup: float) -> jax.Array:
  """0.5 ** (batch / ema_nimg), ema_nimg ramped up with the images seen before this step."""
  ema_nimg = jnp.asarray(ema_kimg * 1000.0, jnp.float32)
  if rampup:
    ema_nimg = jnp.minimum(ema_nimg, step.astype(jnp.float32) * batch_size * rampup)
  return 0.5 ** (batch_size / jnp.maximum(ema_nimg, 1e-8))


def _mapping(module, z, c, **kwargs):
  return module.mapping(z, c, **kwargs)


def _synthesis(module, ws, **kwargs):
  return module.synthesis(ws, **kwargs)


class StyleGAN2(Method):
  """G, G_ema and D of one StyleGAN2 behind the loop's Method contract."""

  generator_roles = (GENERATOR,)
  roles = (GENERATOR, DISCRIMINATOR)
  resumable_fields = frozenset({"init_from"})

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    check_config(config)
    self.loss_cfg = config.loss
    self.image_shape = tuple(runs.example_batch(config.data)["image"].shape[1:])
    self.generator = stylegan2.generator_from_kwargs(generator_kwargs(config, self.image_shape))
    self.discriminator = stylegan2.discriminator_from_kwargs(
        discriminator_kwargs(config, self.image_shape))
    self.z_dim = config.generator.z_dim
    self.g_optimizer = lazy_adam(config.optimizer, self.loss_cfg.pl_interval)
    self.d_optimizer = lazy_adam(config.optimizer, self.loss_cfg.r1_interval)
    self.init_from = config.get("init_from", "")
    self._notes = [Note(
        f"stylegan2 at {self.image_shape[0]} px: {self.generator.num_ws} ws, R1 gamma "
        f"{self.loss_cfg.r1_gamma} every {self.loss_cfg.r1_interval}, path length "
        f"{self.loss_cfg.pl_weight} every {self.loss_cfg.pl_interval}, EMA {config.ema.kimg} kimg")]
    if self.init_from:
      self._notes.append(Note(f"G, G_ema and D start from the network pickle {self.init_from}"))

  # ----------------------------------------------------------------------------- bookkeeping
  def notes(self) -> list[Note]:
    return list(self._notes)

  def active_losses(self) -> dict[str, float]:
    cfg = self.loss_cfg
    weights = {"adversarial": 1.0, "r1": cfg.r1_gamma / 2, "path_length": cfg.pl_weight}
    return {k: float(v) for k, v in weights.items() if v}

  def phase(self, step: int) -> tuple[bool, bool]:
    """(Greg runs, Dreg runs) at this step: the reference's `batch_idx % interval == 0`."""
    cfg = self.loss_cfg
    return (bool(cfg.pl_weight) and step % cfg.pl_interval == 0,
            bool(cfg.r1_gamma) and step % cfg.r1_interval == 0)

  def load_frozen(self, restoring: bool = False) -> Any:
    """Nothing is frozen; with `init_from`, the pickle's G, G_ema and D to start from (not read
    when restoring: evaluating a run and `generate` do not need the pickle; the training loop,
    resuming, reads it again)."""
    if not self.init_from or restoring:
      return {}
    if not os.path.isfile(self.init_from):
      raise ValueError(f"init_from: no such network pickle: {self.init_from}")
    from gankd_jax.weights import network_pickle  # pylint: disable=import-outside-toplevel
    start = {}
    for name, module in (("G", self.generator), ("G_ema", self.generator),
                         ("D", self.discriminator)):
      start[name] = jax.tree_util.tree_map(jnp.asarray, network_pickle.load_into(
          self.init_from, name, module))
    return {"init": start}

  # ----------------------------------------------------------------------------- state
  def _latents(self, key, batch_size):
    return jax.random.normal(key, (batch_size, self.z_dim), jnp.float32)

  def _labels(self, batch_size):
    return jnp.zeros((batch_size, 0), jnp.float32)

  def init_state(self, rng: jax.Array, batch, frozen) -> StyleGAN2State:
    """The reference's init (randn weights, zero biases, noise strength 0), or a pickle's."""
    keys = jax.random.split(rng, 4)
    if "init" in frozen:
      g_vars, ema_vars, d_vars = (frozen["init"][name] for name in ("G", "G_ema", "D"))
    else:
      z, c = jnp.zeros((1, self.z_dim)), self._labels(1)
      g_vars = self.generator.init({"params": keys[1], "noise": keys[2]}, z, c)
      d_vars = self.discriminator.init(keys[3], batch["image"][:1], c)
      ema_vars = g_vars
    generator = NetState(params=g_vars["params"], batch_stats=g_vars.get("buffers", {}),
                         opt_state=self.g_optimizer.init(g_vars["params"]), tx=self.g_optimizer)
    discriminator = NetState(params=d_vars["params"], batch_stats={},
                             opt_state=self.d_optimizer.init(d_vars["params"]),
                             tx=self.d_optimizer)
    return StyleGAN2State(
        step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(keys[0]), generator=generator,
        generator_ema={"params": ema_vars["params"], "buffers": ema_vars.get("buffers", {})},
        discriminator=discriminator, pl_mean=jnp.zeros((), jnp.float32))

  # ----------------------------------------------------------------------------- pieces
  def _mapping(self, params, buffers, z, c, key):
    """ws with style mixing, moving w_avg (train mode): (ws, new buffers)."""
    variables = {"params": params, "buffers": buffers}
    ws, updated = self.generator.apply(variables, z, c, update_emas=True, method=_mapping,
                                       mutable=["buffers"])
    buffers = updated["buffers"]
    prob = self.loss_cfg.style_mixing_prob
    if prob > 0:
      cutoff_key, coin_key, z_key = jax.random.split(key, 3)
      num_ws = ws.shape[1]
      cutoff = jax.random.randint(cutoff_key, (), 1, num_ws)
      cutoff = jnp.where(jax.random.uniform(coin_key) < prob, cutoff, num_ws)
      mixed = self.generator.apply({"params": params, "buffers": buffers},
                                   jax.random.normal(z_key, z.shape, z.dtype), c,
                                   update_emas=False, method=_mapping)
      ws = jnp.where(jnp.arange(num_ws)[None, :, None] >= cutoff, mixed, ws)
    return ws, buffers

  def _synthesis_fn(self, params, buffers, key):
    """ws -> images with random noise from `key`."""
    return lambda ws: self.generator.apply({"params": params, "buffers": buffers}, ws,
                                           noise_mode="random", method=_synthesis,
                                           rngs={"noise": key})

  def _run_generator(self, params, buffers, z, c, key):
    map_key, noise_key = jax.random.split(key)
    ws, buffers = self._mapping(params, buffers, z, c, map_key)
    return self._synthesis_fn(params, buffers, noise_key)(ws), buffers

  def _discriminate(self, params, images, c):
    return self.discriminator.apply({"params": params}, images, c)

  # ----------------------------------------------------------------------------- phases
  def _g_main(self, g: NetState, d_params, batch_size, key, step):
    z_key, run_key = jax.random.split(key)
    z, c = self._latents(z_key, batch_size), self._labels(batch_size)

    def loss(params):
      images, buffers = self._run_generator(params, g.batch_stats, z, c, run_key)
      logits = self._discriminate(d_params, images, c)
      return jnp.mean(jax.nn.softplus(-logits)), (buffers, logits)

    (value, (buffers, logits)), grads = jax.value_and_grad(loss, has_aux=True)(g.params)
    g = g.apply_gradients(sanitize(grads), buffers, step=step)
    return g, {"G/loss": value, "scores/fake": jnp.mean(logits)}

  def _g_reg(self, g: NetState, pl_mean, batch_size, key, step):
    cfg = self.loss_cfg
    z_key, map_key, noise_key, pl_key = jax.random.split(key, 4)
    size = batch_size // cfg.pl_batch_shrink
    z, c = self._latents(z_key, batch_size)[:size], self._labels(size)

    def loss(params):
      ws, buffers = self._mapping(params, g.batch_stats, z, c, map_key)
      lengths = path_lengths(self._synthesis_fn(params, buffers, noise_key), ws, pl_key)
      penalty, new_mean = path_length_penalty(lengths, pl_mean, cfg.pl_decay)
      return jnp.mean(penalty * cfg.pl_weight) * cfg.pl_interval, (
          buffers, jax.lax.stop_gradient(new_mean), jnp.mean(penalty))

    (_, (buffers, new_mean, penalty)), grads = jax.value_and_grad(loss, has_aux=True)(g.params)
    g = g.apply_gradients(sanitize(grads), buffers, step=step)
    return g, new_mean, {"G/pl_penalty": penalty, "pl_mean": new_mean}

  def _d_main(self, g: NetState, d: NetState, real, key, step):
    z_key, run_key = jax.random.split(key)
    batch_size = real.shape[0]
    z, c = self._latents(z_key, batch_size), self._labels(batch_size)
    fakes, buffers = self._run_generator(g.params, g.batch_stats, z, c, run_key)
    fakes = jax.lax.stop_gradient(fakes)

    def loss(params):
      fake_logits = self._discriminate(params, fakes, c)
      real_logits = self._discriminate(params, real, c)
      value = jnp.mean(jax.nn.softplus(fake_logits)) + jnp.mean(jax.nn.softplus(-real_logits))
      return value, real_logits

    (value, real_logits), grads = jax.value_and_grad(loss, has_aux=True)(d.params)
    d = d.apply_gradients(sanitize(grads), {}, step=step)
    return g.replace(batch_stats=buffers), d, {"D/loss": value,
                                               "scores/real": jnp.mean(real_logits)}

  def _d_reg(self, d: NetState, real, step):
    cfg = self.loss_cfg
    c = self._labels(real.shape[0])

    def loss(params):
      penalty = r1_penalty(lambda x: self._discriminate(params, x, c), real)
      return jnp.mean(penalty * (cfg.r1_gamma / 2)) * cfg.r1_interval, jnp.mean(penalty)

    (_, penalty), grads = jax.value_and_grad(loss, has_aux=True)(d.params)
    return d.apply_gradients(sanitize(grads), {}, step=step), {"D/r1_penalty": penalty}

  def _update_ema(self, state: StyleGAN2State, g: NetState, batch_size: int):
    beta = ema_beta(state.step, batch_size, self.config.ema.kimg, self.config.ema.rampup)
    params = optax.incremental_update(g.params, state.generator_ema["params"], 1.0 - beta)
    return {"params": params, "buffers": g.batch_stats}  # Buffers copied, as the reference.

  # ----------------------------------------------------------------------------- the step
  def train_step(self, state: StyleGAN2State, batch, frozen, phase):
    del frozen
    do_g_reg, do_d_reg = phase
    real = batch["image"]
    batch_size = real.shape[0]
    keys = jax.random.split(common.step_rng(state), 3)
    step = state.step
    g, d, pl_mean = state.generator, state.discriminator, state.pl_mean
    g, metrics = self._g_main(g, d.params, batch_size, keys[0], step)
    if do_g_reg:
      g, pl_mean, reg_metrics = self._g_reg(g, pl_mean, batch_size, keys[1], step)
      metrics.update(reg_metrics)
    g, d, d_metrics = self._d_main(g, d, real, keys[2], step)
    metrics.update(d_metrics)
    if do_d_reg:
      d, reg_metrics = self._d_reg(d, real, step)
      metrics.update(reg_metrics)
    generator_ema = self._update_ema(state, g, batch_size)
    return state.replace(step=step + 1, generator=g, generator_ema=generator_ema,
                         discriminator=d, pl_mean=pl_mean), metrics

  # ----------------------------------------------------------------------------- inference
  def _ema_images(self, variables, z, noise_key):
    return self.generator.apply(variables, z, self._labels(z.shape[0]), noise_mode="random",
                                rngs={"noise": noise_key})

  def generate(self, state: StyleGAN2State, batch, frozen):
    """G_ema on each example's fixed latent with random noise, as the reference's metrics run
    it; the noise is drawn per evaluation batch (from its first index), so FIDs repeat exactly
    at the same `eval.batch_size`."""
    index = batch["index"]
    z = common.eval_latents(index, self.z_dim)
    noise_key = jax.random.fold_in(jax.random.key(EVAL_NOISE_SEED), index[0])
    return {GENERATOR: self._ema_images(state.generator_ema, z, noise_key)}

  def real_images(self, batch):
    return batch["image"]

  def sample_columns(self, batch, outputs):
    """Real images (unrelated to the row's latent, for reference) | G_ema(z)."""
    return {"real": batch["image"], "G_ema": outputs[GENERATOR]}

  def networks(self, state: StyleGAN2State, frozen=None) -> dict[str, Network]:
    def generator_apply(variables, z):
      return self.generator.apply(variables, z, self._labels(z.shape[0]), noise_mode="const")

    def discriminator_apply(variables, images):
      return self._discriminate(variables["params"], images, self._labels(images.shape[0]))

    return {GENERATOR: Network(generator_apply, state.generator_ema, (self.z_dim,)),
            DISCRIMINATOR: Network(discriminator_apply,
                                   {"params": state.discriminator.params}, self.image_shape)}
