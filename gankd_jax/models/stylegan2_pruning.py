"""Channel pruning of a StyleGAN2 synthesis network: a NICKEL & DiME student from its teacher.

The reference (SangyeopYeo/NICKEL_AND_DIME: prune.py, utils/pruning_util.py, utils/mask_util.py)
prunes every feature map of the synthesis network by the same ratio p and initialises the student
with the teacher's kept slices:

- Feature maps, in order: `b4.const`, then the output of every conv (`b4.conv1`, `b8.conv0`,
  `b8.conv1`, ...): 2 per resolution. Each has its own mask, keeping the ceil((1 - p) C) channels
  of highest score (the reference removes the int(p C) lowest).
- A map's score belongs to the layer that *reads* it: the next conv's input channels (for the
  last map, the last block's toRGB). So the scores of map k are taken from consumer k, the k-th
  of [b4.conv1, b8.conv0, b8.conv1, ..., b{R}.conv1, b{R}.torgb].
- Kept slices: conv `weight[out_mask][:, in_mask]`, `bias[out_mask]`, its style affine's rows
  `[in_mask]`; toRGB `weight[:, mask]` and affine rows `[mask]`; `const[mask0]`; a resnet skip
  `weight[out_mask][:, in_mask]`. Mapping, noise strengths and buffers are copied unchanged.

Criteria (`score_channels(criterion, ...)`):
  l1            mean |W| of the consumer's weights reading each channel (weight magnitude);
  random        a seeded random score (the usual baseline);
  saliency      data-agnostic: mean |dL/dW| per input channel of each consumer, L = sum of |noisy
                - G(z)| over pixels replaced by salt-and-pepper noise with probability
                `noise_prob` anywhere in the image, summed over `num_samples` samples of the
                teacher (the reference's content-aware score without its face mask);
  content_aware the reference's criterion (CAGC): the same gradient, with noise only inside a
                mask that a user's `mask_fn(images) -> (N, H, W) bool` gives (the reference uses
                a BiSeNet face parser, which is not shipped here).
With p = 0 every mask keeps every channel and the student equals the teacher.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gankd_jax.models import stylegan2

CRITERIA = ("l1", "random", "saliency", "content_aware")
PyTree = Any
MaskFn = Callable[[jax.Array], jax.Array]


def feature_maps(img_resolution: int) -> list[tuple[int, str]]:
  """The prunable feature maps in the reference's order: (resolution, "const" | conv name)."""
  maps = [(4, "const"), (4, "conv1")]
  res = 8
  while res <= img_resolution:
    maps += [(res, "conv0"), (res, "conv1")]
    res *= 2
  return maps


def consumers(img_resolution: int) -> list[tuple[int, str]]:
  """The layer whose input channels score each feature map (same order as `feature_maps`)."""
  return feature_maps(img_resolution)[1:] + [(img_resolution, "torgb")]


def _synthesis(params: PyTree) -> PyTree:
  return params["synthesis"] if "synthesis" in params else params


def _consumer_weight(params: PyTree, res: int, name: str) -> np.ndarray:
  """(O, I, kh, kw) weights reading the map; scores are over the input axis."""
  return np.asarray(_synthesis(params)[f"b{res}"][name]["weight"])


def l1_scores(params: PyTree, img_resolution: int) -> list[np.ndarray]:
  """Weight magnitude: mean |W| over (out, kh, kw) of each consumer, per input channel."""
  return [np.abs(_consumer_weight(params, res, name)).mean(axis=(0, 2, 3))
          for res, name in consumers(img_resolution)]


def random_scores(params: PyTree, img_resolution: int, seed: int) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  return [rng.random(_consumer_weight(params, res, name).shape[1])
          for res, name in consumers(img_resolution)]


def salt_and_pepper(shape: tuple[int, ...], key: jax.Array, noise_prob: float,
                    mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """Which pixels of (N, H, W, C) images the noise replaces, with probability `noise_prob`
  (inside `mask` when given), and the value there: -1 or +1 for all channels at once. Drawn per
  image, as the reference does."""
  n, h, w, _ = shape
  k_sign, k_hit = jax.random.split(key)
  value = jax.random.randint(k_sign, (n, h, w, 1), 0, 2).astype(jnp.float32) * 2 - 1
  hit = jax.random.uniform(k_hit, (n, h, w, 1)) < noise_prob
  if mask is not None:
    hit = hit & mask[..., None].astype(bool)
  return hit, value


def gradient_scores(generator, variables: PyTree, key: jax.Array, *, num_samples: int = 400,
                    batch_size: int = 8, noise_prob: float = 0.05,
                    mask_fn: Optional[MaskFn] = None) -> list[np.ndarray]:
  """The reference's CAGC score (mask_fn given) or its data-agnostic form (mask_fn None):
  sum over batches of mean |dL/dW| per consumer input channel, L = sum |noisy - G(z)|."""
  params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  resolution = generator.img_resolution
  c = jnp.zeros((batch_size, generator.c_dim))

  @jax.jit
  def batch_scores(params, key):
    k_z, k_noise, k_synth = jax.random.split(key, 3)
    z = jax.random.normal(k_z, (batch_size, generator.z_dim))

    def synthesize(params):
      return generator.apply({"params": params, **rest}, z, c, rngs={"noise": k_synth})

    images = synthesize(params)
    mask = None if mask_fn is None else mask_fn(images)
    hit, value = salt_and_pepper(images.shape, k_noise, noise_prob, mask)

    # The noisy image equals G(z) except where noise replaced pixels, so only those count (the
    # reference's |noisy - G(z)| is 0 elsewhere and contributes no gradient).
    def loss(params):
      return jnp.sum(jnp.where(hit, jnp.abs(value - synthesize(params)), 0.0))

    grads = _synthesis(jax.grad(loss)(params))
    return [jnp.abs(grads[f"b{res}"][name]["weight"]).mean(axis=(0, 2, 3))
            for res, name in consumers(resolution)]

  num_batches = max(1, num_samples // batch_size)
  totals = None
  for key_b in jax.random.split(key, num_batches):
    scores = [np.asarray(s, np.float64) for s in batch_scores(params, key_b)]
    totals = scores if totals is None else [t + s for t, s in zip(totals, scores)]
  return totals


def score_channels(criterion: str, generator, variables: PyTree, *, seed: int = 0,
                   mask_fn: Optional[MaskFn] = None, **gradient_kwargs) -> list[np.ndarray]:
  """Scores of every feature map's channels by `criterion` (see the module doc)."""
  if criterion not in CRITERIA:
    raise ValueError(f"unknown pruning criterion '{criterion}'; choose from {', '.join(CRITERIA)}")
  resolution = generator.img_resolution
  if criterion == "l1":
    return l1_scores(variables["params"], resolution)
  if criterion == "random":
    return random_scores(variables["params"], resolution, seed)
  if criterion == "content_aware" and mask_fn is None:
    raise ValueError("pruning criterion 'content_aware' needs a mask function (the reference "
                     "uses a BiSeNet face parser, not shipped here): pass mask_fn, or use "
                     "criterion 'saliency', its data-agnostic form")
  return gradient_scores(generator, variables, jax.random.PRNGKey(seed),
                         mask_fn=mask_fn if criterion == "content_aware" else None,
                         **gradient_kwargs)


def keep_masks(scores: list[np.ndarray], pruning_ratio: float) -> list[np.ndarray]:
  """Per map, True for the ceil((1 - p) C) highest-scoring channels (ties: the lower index,
  as a stable argsort removes the lowest first)."""
  if not 0.0 <= pruning_ratio < 1.0:
    raise ValueError(f"pruning_ratio must be in [0, 1), got {pruning_ratio}")
  masks = []
  for score in scores:
    score = np.asarray(score)
    keep = stylegan2.pruned_channels(score.shape[0], pruning_ratio)
    mask = np.ones(score.shape[0], bool)
    mask[np.argsort(score, kind="stable")[:score.shape[0] - keep]] = False
    masks.append(mask)
  return masks


def _slice_layer(layer: PyTree, in_mask: np.ndarray, out_mask: Optional[np.ndarray]) -> PyTree:
  """A conv / toRGB layer's variables with input channels `in_mask` (and outputs `out_mask`)."""
  out = dict(layer)
  weight = np.asarray(layer["weight"])[:, in_mask]
  if out_mask is not None:
    weight = weight[out_mask]
    out["bias"] = np.asarray(layer["bias"])[out_mask]
  out["weight"] = weight
  if "affine" in layer:
    out["affine"] = {"weight": np.asarray(layer["affine"]["weight"])[in_mask],
                     "bias": np.asarray(layer["affine"]["bias"])[in_mask]}
  return out


def prune_synthesis_params(synthesis: PyTree, masks: list[np.ndarray],
                           img_resolution: int) -> PyTree:
  """The student's synthesis params: the teacher's kept slices (see the module doc)."""
  maps = feature_maps(img_resolution)
  index = {m: i for i, m in enumerate(maps)}
  pruned = {name: dict(block) for name, block in synthesis.items()}
  pruned["b4"]["const"] = np.asarray(synthesis["b4"]["const"])[masks[0]]
  for res, name in maps[1:]:
    out_idx = index[res, name]
    pruned[f"b{res}"][name] = _slice_layer(synthesis[f"b{res}"][name], masks[out_idx - 1],
                                           masks[out_idx])
  for res in (r for r, name in maps if name == "conv1"):
    block = synthesis[f"b{res}"]
    if "torgb" in block:
      pruned[f"b{res}"]["torgb"] = _slice_layer(block["torgb"], masks[index[res, "conv1"]], None)
    if "skip" in block:  # resnet architecture: input of conv0, output of conv1.
      pruned[f"b{res}"]["skip"] = _slice_layer(block["skip"], masks[index[res, "conv0"] - 1],
                                               masks[index[res, "conv1"]])
  return jax.tree_util.tree_map(jnp.asarray, pruned)


def student_kwargs(teacher_kwargs: dict, pruning_ratio: float) -> dict:
  """The student's constructor kwargs: the teacher's with synthesis pruning_ratio set."""
  kwargs = dict(teacher_kwargs)
  synthesis = dict(kwargs.get("synthesis_kwargs") or {})
  if synthesis.get("pruning_ratio", 0.0):
    raise ValueError(f"the teacher is already pruned (synthesis pruning_ratio="
                     f"{synthesis['pruning_ratio']}); prune an unpruned teacher")
  synthesis["pruning_ratio"] = float(pruning_ratio)
  kwargs["synthesis_kwargs"] = synthesis
  return kwargs


def prune_generator(teacher_variables: PyTree, masks: list[np.ndarray],
                    img_resolution: int) -> PyTree:
  """The student's variables: pruned synthesis, everything else (mapping, buffers) copied."""
  params = dict(teacher_variables["params"])
  params["synthesis"] = prune_synthesis_params(params["synthesis"], masks, img_resolution)
  return {**teacher_variables, "params": params}
