"""Import PyTorch PatchGAN discriminators (`--netD n_layers` / `basic`, the reference
`NLayerDiscriminator`, e.g. CycleGAN's `latest_net_D_A.pth`) into our
`models.patchgan.NLayerDiscriminator`.

The reference module is one `nn.Sequential` named `model`: conv `model.0`, then per layer
i = 1..n_layers a conv `model.(3i - 1)` and its norm `model.(3i)` (LeakyReLUs hold no tensors),
and the logit conv `model.(3 n_layers + 2)`. Our layer `conv<i>` / `norm<i>` is the torch
`model.(3i - 1)` / `model.(3i)` (`conv0` is `model.0`). ndf, n_layers, input channels and the
norm (BatchNorm carries `weight`; InstanceNorm(affine=False) carries nothing) are read from the
keys and shapes. Convs OIHW -> HWIO; a `module.` prefix is stripped; `num_batches_tracked` and
old files' InstanceNorm running statistics are ignored.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from gankd_jax.models.patchgan import NLayerDiscriminator
from gankd_jax.weights.generator_pth import strip_module_prefix
from gankd_jax.weights.torch_pth import load_state_dict

_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                  "var": "running_var"}


@dataclasses.dataclass(frozen=True)
class DiscriminatorSpec:
  """A torch NLayerDiscriminator's architecture, as read from its state dict."""

  ndf: int
  n_layers: int
  norm: str
  input_nc: int = 3

  def build(self) -> NLayerDiscriminator:
    return NLayerDiscriminator(ndf=self.ndf, n_layers=self.n_layers, norm=self.norm)


def torch_prefix(flax_module: str) -> str:
  """`conv<i>` / `norm<i>` -> the torch module `model.<k>`."""
  kind, index = flax_module[:4], int(flax_module[4:])
  if kind == "conv":
    return "model.0" if index == 0 else f"model.{3 * index - 1}"
  return f"model.{3 * index}"


def detect_spec(state: dict[str, np.ndarray], source: str = "checkpoint") -> DiscriminatorSpec:
  """The architecture of a (prefix-stripped) NLayerDiscriminator state dict."""
  first = np.shape(state.get("model.0.weight", ()))
  if len(first) != 4 or first[2:] != (4, 4):
    raise ValueError(f"{source} is not a PatchGAN discriminator: it has no 4x4 conv "
                     f"model.0.weight (got {first or 'none'})")
  convs = 1
  while f"model.{3 * convs - 1}.weight" in state:
    convs += 1
  if convs < 3:
    raise ValueError(f"{source} is not a PatchGAN discriminator: it has {convs} convs, "
                     "needs at least 3")
  norm = "batch" if "model.3.weight" in state else "instance"
  return DiscriminatorSpec(ndf=int(first[0]), n_layers=convs - 2, norm=norm,
                           input_nc=int(first[1]))


def variables_from_state_dict(state: dict[str, np.ndarray], spec: DiscriminatorSpec,
                              source: str = "checkpoint") -> dict:
  """Flax variables of `spec.build()` from a prefix-stripped torch state dict."""
  module = spec.build()
  size = 4 * 2 ** spec.n_layers  # Large enough for a non-empty logits map.
  abstract = jax.eval_shape(lambda: module.init(
      jax.random.PRNGKey(0), jnp.zeros((1, size, size, spec.input_nc)), train=False))
  variables: dict = {}
  used = set()
  for collection in ("params", "batch_stats"):
    for flax_module, leaves in abstract.get(collection, {}).items():
      for path, leaf in jax.tree_util.tree_flatten_with_path(leaves)[0]:
        names = [p.key for p in path]
        key = f"{torch_prefix(flax_module)}.{_LEAF_TO_TORCH[names[-1]]}"
        shape = tuple(leaf.shape)
        if names[-1] == "kernel":
          shape = (shape[3], shape[2], shape[0], shape[1])
        value = np.asarray(state[key]) if key in state else None
        if value is None or tuple(value.shape) != shape:
          got = "lacks it" if value is None else f"has shape {tuple(value.shape)}"
          raise ValueError(f"{source}: NLayerDiscriminator ndf={spec.ndf} n_layers={spec.n_layers} "
                           f"needs tensor {key} {shape}, the file {got}")
        value = value.astype(np.float32)
        if names[-1] == "kernel":
          value = value.transpose(2, 3, 1, 0)
        tree = variables.setdefault(collection, {}).setdefault(flax_module, {})
        for name in names[:-1]:
          tree = tree.setdefault(name, {})
        tree[names[-1]] = np.ascontiguousarray(value)
        used.add(key)
  for key in state:
    leaf = key.rpartition(".")[2]
    harmless = leaf == "num_batches_tracked" or (
        spec.norm == "instance" and leaf in ("running_mean", "running_var"))
    if key not in used and not harmless:
      raise ValueError(f"{source}: tensor {key} {np.shape(state[key])} has no place in an "
                       f"NLayerDiscriminator ndf={spec.ndf} n_layers={spec.n_layers}")
  return variables


def load_discriminator(path: str | os.PathLike) -> tuple[NLayerDiscriminator, dict,
                                                          DiscriminatorSpec]:
  """(module, variables, spec) of a PyTorch NLayerDiscriminator checkpoint (.pth)."""
  source = os.fspath(path)
  state = strip_module_prefix(load_state_dict(source))
  spec = detect_spec(state, source)
  return spec.build(), variables_from_state_dict(state, spec, source), spec
