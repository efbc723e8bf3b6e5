"""What methods share: step keys, network states, inference apply, evaluation latents, the fused
adversarial gradients, and OMGD-style output distillation as a pure loss.

Nothing here knows a particular method; a method file combines these with its own losses.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from gankd_jax.losses import image, perceptual
from gankd_jax.methods.base import NetState, Network, PyTree, scale_by_global_schedule
from gankd_jax.models.init import init_variables

#: Unconditional evaluation: example i of the evaluation split is generated from the latent
#: drawn from (this seed, i), in every method and command, so FIDs compare across runs.
EVAL_LATENT_SEED = 20190201


# --------------------------------------------------------------------------------- keys, states
def step_rng(state) -> jax.Array:
  """This step's key from `state.rng` (raw key data) and `state.step`: the same on resume,
  whatever the device count."""
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def init_net(module: nn.Module, key: jax.Array, tx: optax.GradientTransformation, *args,
             **kwargs) -> NetState:
  """A network initialised as the reference code does (models/init.py), with its optimiser."""
  return NetState.create(init_variables(module, key, *args, train=False, **kwargs), tx)


def eval_latents(index: jax.Array, nz: int) -> jax.Array:
  """One latent per evaluation example, a function of its index only."""
  base = jax.random.key(EVAL_LATENT_SEED)
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(base, i), (nz,)))(index)


def apply_eval(module: nn.Module, variables: PyTree, x: jax.Array) -> jax.Array:
  """Inference-mode forward (running statistics, no dropout)."""
  return module.apply(variables, x, train=False)


def inference_network(module: nn.Module, variables: PyTree, input_shape) -> Network:
  return Network(functools.partial(apply_eval, module), variables, tuple(input_shape))


def run_train_mode(module: nn.Module, variables: PyTree, *args, rngs=None, **kwargs):
  """Train-mode forward updating running statistics: (output, new batch_stats)."""
  out, updated = module.apply(variables, *args, train=True, mutable=["batch_stats"],
                              rngs=rngs or {}, **kwargs)
  return out, updated.get("batch_stats", {})


# --------------------------------------------------------------------------------- optimisers
def adam(b1: float, b2: float, learning_rate: optax.Schedule) -> optax.GradientTransformation:
  """Adam whose learning rate follows the run's global step (`scale_by_global_schedule`).

  b1 and b2 are held as arrays in the optimiser state (`inject_hyperparams`), as this project's
  earlier optimiser held them: XLA folds Python-constant betas differently, and the runs of
  before and after must agree bit for bit.
  """
  return optax.chain(optax.inject_hyperparams(optax.scale_by_adam)(b1=b1, b2=b2),
                     scale_by_global_schedule(learning_rate))


def constant(learning_rate: float) -> optax.Schedule:
  return lambda step: jnp.asarray(learning_rate, jnp.float32)


# --------------------------------------------------------------------------------- schedules
def linear_decay(config: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
  """pix2pix's 'linear' policy: `lr` for `constant_steps`, then linearly to 0 over
  `decay_steps` (each -1: half of the run / the rest)."""
  constant = config.constant_steps if config.constant_steps >= 0 else num_train_steps // 2
  decay = config.decay_steps if config.decay_steps >= 0 else num_train_steps - constant
  return optax.linear_schedule(config.lr, 0.0, transition_steps=max(decay, 1),
                               transition_begin=constant)


# --------------------------------------------------------------------------------- adversarial
@flax.struct.dataclass
class AdversarialGradients:
  fakes: PyTree            # The generators' outputs (forward with the pre-update parameters).
  generator_aux: PyTree    # What the generators' forward returned beside them.
  generator_grads: PyTree
  discriminator_grads: PyTree
  discriminator_stats: PyTree  # D's running statistics after its pass on the real images.
  metrics: dict[str, jax.Array]


def adversarial_gradients(
    generators: Callable[[PyTree], tuple[PyTree, PyTree]], generator_params: PyTree,
    discriminate_fakes: Callable[[PyTree, PyTree], tuple[PyTree, PyTree]],
    discriminate_reals: Callable[[PyTree], tuple[PyTree, PyTree]], discriminator_params: PyTree,
    generator_loss: Callable[[PyTree, PyTree], tuple[jax.Array, dict]],
    discriminator_loss: Callable[[PyTree, PyTree], tuple[jax.Array, dict]],
) -> AdversarialGradients:
  """Generator and discriminator gradients from ONE forward of each network.

  A PyTorch GAN step forwards D on the fakes twice (for the generators' loss and, detached, for
  D's own) and then backpropagates twice; those forwards are identical, so here each network
  runs once and two backward passes (`jax.vjp`) take the two losses' gradients from it.

    generators(params) -> (fakes, aux)
    discriminate_fakes(d_params, fakes) -> (fake_logits, aux)
    discriminate_reals(d_params) -> (real_logits, new running statistics)
    generator_loss(fake_logits, fakes) -> (loss, metrics)       (e.g. GAN + reconstruction)
    discriminator_loss(real_logits, fake_logits) -> (loss, metrics)
  """
  fakes, generators_vjp, generator_aux = jax.vjp(generators, generator_params, has_aux=True)
  fake_logits, fakes_vjp, _ = jax.vjp(discriminate_fakes, discriminator_params, fakes,
                                      has_aux=True)
  real_logits, real_vjp, d_stats = jax.vjp(discriminate_reals, discriminator_params, has_aux=True)

  (g_total, g_metrics), (dg_dlogits, dg_dfakes) = jax.value_and_grad(
      generator_loss, argnums=(0, 1), has_aux=True)(fake_logits, fakes)
  (d_total, d_metrics), (dd_dreal, dd_dfake) = jax.value_and_grad(
      discriminator_loss, argnums=(0, 1), has_aux=True)(real_logits, fake_logits)

  d_grads_fake, _ = fakes_vjp(dd_dfake)  # D sees the fakes as constants (`.detach()`).
  (d_grads_real,) = real_vjp(dd_dreal)
  d_grads = jax.tree_util.tree_map(jnp.add, d_grads_fake, d_grads_real)
  _, adversarial_dfakes = fakes_vjp(dg_dlogits)  # Through the fixed D into the images.
  (g_grads,) = generators_vjp(jax.tree_util.tree_map(jnp.add, dg_dfakes, adversarial_dfakes))
  metrics = {**g_metrics, **d_metrics, "generators/total": g_total,
             "discriminator/total": d_total}
  return AdversarialGradients(fakes, generator_aux, g_grads, d_grads, d_stats, metrics)


# --------------------------------------------------------------------------------- distillation
def output_distillation_terms(student: jax.Array, targets: Sequence[jax.Array],
                              weights: ml_collections.ConfigDict,
                              features: Callable[[jax.Array], Any] | None) -> dict[str, jax.Array]:
  """OMGD's distillation of a student's output image from each teacher's (no ground truth, no
  discriminator), weighted by `weights.lambda_*`; `features`: VGG16 features, or None to leave
  the style / feature terms out (weights absent).

  Per teacher output T, with student output S:
    lambda_ssim (1 - SSIM(S, T)) + lambda_style sum_l L1(Gram phi_l(S), Gram phi_l(T))
    + lambda_feature L1(phi_relu2_2(S), phi_relu2_2(T)) + lambda_tv TV(S)
    [+ lambda_pixel L1(S, T): ours, not OMGD's; 0 in the paper's setups]
  The reference adds the TV term once per teacher.
  """
  terms = {"ssim": 0.0}  # Summed by the caller in this order.
  if features is not None:
    terms.update(style=0.0, feature=0.0)
    student_features = features(student)
    student_grams = perceptual.gram_matrices(student_features)
  terms["tv"] = 0.0
  if weights.get("lambda_pixel", 0.0):
    terms["pixel"] = 0.0
  for target in targets:
    terms["ssim"] += weights.lambda_ssim * (1.0 - image.ssim(student, target))
    if "pixel" in terms:
      terms["pixel"] += weights.lambda_pixel * jnp.mean(jnp.abs(student - target))
    if features is not None:
      target_features = features(target)
      terms["style"] += weights.lambda_style * perceptual.gram_style_loss(
          student_grams, perceptual.gram_matrices(target_features, side="teacher"))
      terms["feature"] += weights.lambda_feature * perceptual.feature_loss(student_features,
                                                                           target_features)
    terms["tv"] += weights.lambda_tv * image.total_variation(student)
  return terms
