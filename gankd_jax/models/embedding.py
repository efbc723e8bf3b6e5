"""DiME's embedding networks `phi`, pluggable by name: ResNet-50, CLIP RN50, Inception, VGG16.

NICKEL & DiME matches moments of a pretrained network's embeddings of student images. The reference
(`training_loop_DD.py`, `loss_DD.py`) uses two networks, both fed the generator's [-1, 1] images
*without* any mean/std normalisation:
  * `resnet50`: torchvision's ResNet-50 with `fc = Identity` (2048-d pooled features), loading
    DINO's `dino_resnet50_pretrain.pth` (the "teacher" entry, "module." / "backbone." prefixes
    removed, `strict=False`, so the absent `fc` is fine); fed the raw 256 px image.
    Bottleneck v1.5 (stride on the 3x3 conv), BatchNorm in inference mode, eps 1e-5.
  * `clip_rn50`: OpenAI CLIP's image tower `ModifiedResNet` (3-conv stem with a 2x2 average pool,
    anti-aliased Bottlenecks (2x2 average pool before the strided 1x1 and on the shortcut),
    `AttentionPool2d`: mean token + positional embedding, multi-head attention with
    heads = width * 32 / 64, read at the mean token; 1024-d for RN50), fed the image resized to
    224 px as `F.interpolate(bilinear, align_corners=False)` (no antialias). It loads OpenAI's
    `RN50.pt` (a TorchScript archive: its `__torch__.*` module objects are read as inert records
    and their tensors collected) or an open_clip RN50 state dict (`visual.*`). The reference runs
    it in fp16 on CUDA (`clip.load`); we run float32.
The existing `inception` (pool3, 2048-d) and `vgg16` (fc2 + ReLU, 4096-d) are wrapped too.

Every `phi` takes NHWC images in [-1, 1] and applies, in order: the bilinear resize to its input
size (if it has one), the input normalisation named by a config field (`"none"`: as is, the
reference's choice; `"imagenet"` / `"clip"`: to [0, 1], then that mean/std; resize and
normalisation commute, both being affine per pixel with rows summing to one), then the network.
`inception`'s `"none"` is exactly FID's Inception input convention, `vgg16`'s `"imagenet"` its own.

Architecture sizes are module fields, so the tests run the same code at tiny widths against the
reference's outputs. Modules carry torch's names (`layer1.0.conv1`, `attnpool.q_proj`), so weights
convert by the per-leaf rules of `gankd_jax.weights.convert`. Missing weights raise a one-line
ValueError naming the file and the `--config.dime.<name>_weights` flag; a randomly initialised
`phi` exists only when asked for (`random_init=True`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gankd_jax.models import inception as inception_lib
from gankd_jax.models import vgg16_fc2 as vgg16_fc2_lib
from gankd_jax.models.inception import HIGHEST, resize_bilinear
from gankd_jax.models.layers import dot_general, mixed_conv
from gankd_jax.models.vgg import IMAGENET_MEAN, IMAGENET_STD
from gankd_jax.weights import convert
from gankd_jax.weights.torch_pth import PickledObject, load_pth, load_tensors

BN_EPSILON = 1e-5  # torch BatchNorm2d's default, used by torchvision and CLIP alike.
NORMALIZATIONS = ("none", "imagenet", "clip")
# OpenAI CLIP's preprocessing mean/std (clip/clip.py `_transform`).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESNET50_ARCHITECTURE = "torchvision ResNet-50"
CLIP_ARCHITECTURE = "CLIP ModifiedResNet (RN50)"
# Globals a checkpoint may call besides the tensor ones, read as inert records (never run):
# TorchScript module objects and list/type-tag helpers (OpenAI's RN50.pt), DINO's argparse `args`.
_STUB_MODULES = ("__torch__", "torch.jit._pickle", "argparse")


# ------------------------------------------------------------------------------------ input
def normalize_input(images: jax.Array, normalization: str) -> jax.Array:
  """[-1, 1] images -> the network's input: `"none"` as is, `"imagenet"` / `"clip"` mapped to
  [0, 1] and standardised with that mean/std."""
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"unknown embedding input normalization {normalization!r}; expected one of "
                     f"{', '.join(NORMALIZATIONS)}")
  x = jnp.asarray(images, jnp.float32)
  if normalization == "none":
    return x
  mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalization == "imagenet" else (CLIP_MEAN, CLIP_STD)
  return ((x + 1.0) / 2.0 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def resize_square(images: jax.Array, size: int) -> jax.Array:
  """NHWC images resized to size x size as `F.interpolate(size=size, mode='bilinear',
  align_corners=False)` (no antialias: the reference's CLIP input at 224 px)."""
  return resize_bilinear(jnp.asarray(images, jnp.float32), int(size), int(size))


# ------------------------------------------------------------------------------------ layers
def _conv(features: int, kernel: int, stride: int, padding: int, name: str, precision) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)), use_bias=False,
                 precision=precision, conv_general_dilated=mixed_conv, name=name)


def _bn(name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name=name)


def _avg_pool(x: jax.Array, size: int) -> jax.Array:
  """torch AvgPool2d(size): size x size windows, stride size, odd rests dropped."""
  return x if size == 1 else nn.avg_pool(x, (size, size), strides=(size, size), padding="VALID")


def _stage_plan(layers: Sequence[int], width: int) -> list[tuple[int, int, int, bool]]:
  """(stage, planes, stride, downsample) per block: planes width * 2^stage, the first block of
  stages 2-4 strided, a projection shortcut where the shape changes (torchvision and CLIP alike)."""
  plan, inplanes = [], width
  for stage, blocks in enumerate(layers):
    planes = width * 2 ** stage
    for block in range(blocks):
      stride = 2 if stage > 0 and block == 0 else 1
      plan.append((stage, planes, stride, stride != 1 or inplanes != planes * 4))
      inplanes = planes * 4
  return plan


# ------------------------------------------------------------------------------------ ResNet-50
class TorchvisionBottleneck(nn.Module):
  """torchvision `Bottleneck` (v1.5): 1x1 -> 3x3 (stride here) -> 1x1 (x4), BN after each."""

  planes: int
  stride: int = 1
  downsample: bool = False
  precision: Any = HIGHEST

  @nn.compact
  def __call__(self, x):
    p = self.precision
    out = nn.relu(_bn("bn1")(_conv(self.planes, 1, 1, 0, "conv1", p)(x)))
    out = nn.relu(_bn("bn2")(_conv(self.planes, 3, self.stride, 1, "conv2", p)(out)))
    out = _bn("bn3")(_conv(self.planes * 4, 1, 1, 0, "conv3", p)(out))
    if self.downsample:
      x = _bn("downsample.1")(_conv(self.planes * 4, 1, self.stride, 0, "downsample.0", p)(x))
    return nn.relu(out + x)


class ResNet50(nn.Module):
  """torchvision ResNet (Bottleneck) with `fc = Identity`: NHWC -> (N, 32 * width) pooled
  features; `layers=(3, 4, 6, 3), width=64` is ResNet-50 (2048-d)."""

  layers: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  precision: Any = HIGHEST

  @nn.compact
  def __call__(self, images):
    p = self.precision
    x = nn.relu(_bn("bn1")(_conv(self.width, 7, 2, 3, "conv1", p)(jnp.asarray(images, jnp.float32))))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # -inf padding, as torch
    index: dict[int, int] = {}
    for stage, planes, stride, downsample in _stage_plan(self.layers, self.width):
      block = index[stage] = index.get(stage, -1) + 1
      x = TorchvisionBottleneck(planes, stride, downsample, p, name=f"layer{stage + 1}.{block}")(x)
    return jnp.mean(x, axis=(1, 2))


# ------------------------------------------------------------------------------------ CLIP RN50
class ClipBottleneck(nn.Module):
  """CLIP's anti-aliased Bottleneck: convs unstrided, a stride x stride average pool after the
  3x3 and before the shortcut's 1x1 projection."""

  planes: int
  stride: int = 1
  downsample: bool = False
  precision: Any = HIGHEST

  @nn.compact
  def __call__(self, x):
    p = self.precision
    out = nn.relu(_bn("bn1")(_conv(self.planes, 1, 1, 0, "conv1", p)(x)))
    out = nn.relu(_bn("bn2")(_conv(self.planes, 3, 1, 1, "conv2", p)(out)))
    out = _bn("bn3")(_conv(self.planes * 4, 1, 1, 0, "conv3", p)(_avg_pool(out, self.stride)))
    if self.downsample:
      x = _bn("downsample.1")(_conv(self.planes * 4, 1, 1, 0, "downsample.0", p)(_avg_pool(x, self.stride)))
    return nn.relu(out + x)


class AttentionPool2d(nn.Module):
  """CLIP's attention pooling: tokens = [mean, pixels] + positional embedding; multi-head
  attention (torch's `multi_head_attention_forward`, separate q/k/v projections, q scaled by
  head_dim^-0.5) read at the mean token only (the reference returns `x[0]`), then `c_proj`."""

  spatial_dim: int
  embed_dim: int
  num_heads: int
  output_dim: int
  precision: Any = HIGHEST

  @nn.compact
  def __call__(self, x):
    n, h, w, c = x.shape
    if (h, w) != (self.spatial_dim, self.spatial_dim) or c != self.embed_dim:
      raise ValueError(f"AttentionPool2d expects {self.spatial_dim}x{self.spatial_dim}x{self.embed_dim} "
                       f"maps, got {h}x{w}x{c}")
    if c % self.num_heads:
      raise ValueError(f"AttentionPool2d: embed_dim {c} is not divisible by num_heads {self.num_heads}")
    tokens = x.reshape(n, h * w, c)
    tokens = jnp.concatenate([jnp.mean(tokens, axis=1, keepdims=True), tokens], axis=1)
    positional = self.param("positional_embedding", nn.initializers.normal(self.embed_dim ** -0.5),
                            (h * w + 1, c))
    tokens = tokens + positional
    dense = lambda features, name: nn.Dense(features, precision=self.precision,
                                            dot_general=dot_general, name=name)
    key = dense(c, "k_proj")(tokens)  # Definition order as torch's: k, q, v, c.
    query = dense(c, "q_proj")(tokens[:, :1])
    value = dense(c, "v_proj")(tokens)
    head_dim = c // self.num_heads
    split = lambda t: t.reshape(n, t.shape[1], self.num_heads, head_dim)
    logits = jnp.einsum("nqhd,nkhd->nhqk", split(query) * head_dim ** -0.5, split(key),
                        precision=self.precision)
    attended = jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(logits, axis=-1), split(value),
                          precision=self.precision)
    return dense(self.output_dim, "c_proj")(attended.reshape(n, c))


class ModifiedResNet(nn.Module):
  """OpenAI CLIP's image tower: NHWC `input_resolution`^2 images -> (N, output_dim).

  RN50: layers (3, 4, 6, 3), width 64, output 1024, heads width * 32 / 64 = 32, 224 px."""

  layers: Sequence[int] = (3, 4, 6, 3)
  output_dim: int = 1024
  heads: int | None = None  # None: width * 32 // 64, as CLIP's `build_model`.
  input_resolution: int = 224
  width: int = 64
  precision: Any = HIGHEST

  @nn.compact
  def __call__(self, images):
    if tuple(images.shape[1:3]) != (self.input_resolution, self.input_resolution):
      raise ValueError(f"CLIP ModifiedResNet expects {self.input_resolution}x{self.input_resolution} "
                       f"images, got {images.shape[1]}x{images.shape[2]} (resize with resize_square)")
    p, half = self.precision, self.width // 2
    x = jnp.asarray(images, jnp.float32)
    for index, (features, stride) in enumerate(((half, 2), (half, 1), (self.width, 1)), start=1):
      x = nn.relu(_bn(f"bn{index}")(_conv(features, 3, stride, 1, f"conv{index}", p)(x)))
    x = _avg_pool(x, 2)
    index: dict[int, int] = {}
    for stage, planes, stride, downsample in _stage_plan(self.layers, self.width):
      block = index[stage] = index.get(stage, -1) + 1
      x = ClipBottleneck(planes, stride, downsample, p, name=f"layer{stage + 1}.{block}")(x)
    heads = self.heads or self.width * 32 // 64
    return AttentionPool2d(self.input_resolution // 32, self.width * 32, heads, self.output_dim, p,
                           name="attnpool")(x)


# ------------------------------------------------------------------------------------ weights
def abstract_variables(model: nn.Module, input_size: int) -> dict:
  """The model's variable shapes (nothing allocated), in definition order (torch's order)."""
  order = []

  def init(key):
    variables = model.init(key, jnp.zeros((1, input_size, input_size, 3), jnp.float32))
    order.extend(flax.traverse_util.flatten_dict(variables).keys())  # Trace-time side channel.
    return variables

  flat = flax.traverse_util.flatten_dict(jax.eval_shape(init, jax.random.key(0)))
  return flax.traverse_util.unflatten_dict({key: flat[key] for key in order})


def _module_tensors(record: PickledObject, prefix: str = "") -> dict[str, np.ndarray]:
  """Tensors of a TorchScript module tree (its pickled attribute dicts), by dotted torch name."""
  tensors = {}
  state = record.state if isinstance(record.state, dict) else {}
  for name, value in state.items():
    if isinstance(value, np.ndarray):
      tensors[prefix + str(name)] = value
    elif isinstance(value, PickledObject):
      tensors.update(_module_tensors(value, f"{prefix}{name}."))
  return tensors


def checkpoint_tensors(path: str | os.PathLike, entries: Sequence[str] = ("state_dict", "model"),
                       strip: Sequence[str] = ("module.",)) -> dict[str, np.ndarray]:
  """`{torch name: array}` of a checkpoint: a state dict, a dict holding one under the first of
  `entries` present, a TorchScript archive, or an `.npz`; every `strip` substring is removed from
  the names (as the reference's DINO loader does with `str.replace`)."""
  path = os.fspath(path)
  if path.endswith(".npz"):
    state = load_tensors(path)
  else:
    obj = load_pth(path, stub_prefixes=_STUB_MODULES)
    if isinstance(obj, PickledObject):
      state = _module_tensors(obj)
    else:
      if isinstance(obj, dict):
        for entry in entries:
          if isinstance(obj.get(entry), dict):
            obj = obj[entry]
            break
      if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
      state = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
  for part in strip:
    state = {k.replace(part, ""): v for k, v in state.items()}
  if not state:
    raise ValueError(f"{path} holds no tensors")
  return state


def load_resnet50(path: str | os.PathLike, model: ResNet50 | None = None) -> dict:
  """Variables of `ResNet50` from torchvision's resnet50 weights or DINO's checkpoint ("teacher"
  entry if present, "module." / "backbone." removed; `fc` and DINO's head are not needed)."""
  model = model or ResNet50()
  state = checkpoint_tensors(path, entries=("teacher", "state_dict", "model"), strip=("module.", "backbone."))
  return convert.variables_from_state_dict(state, abstract_variables(model, 64),
                                           architecture=RESNET50_ARCHITECTURE, source=os.fspath(path))


def load_clip_rn50(path: str | os.PathLike, model: ModifiedResNet | None = None) -> dict:
  """Variables of `ModifiedResNet` from OpenAI's `RN50.pt` (TorchScript) or an open_clip / CLIP
  state dict: the `visual.*` tensors (or a bare image-tower state dict)."""
  model = model or ModifiedResNet()
  state = checkpoint_tensors(path)
  visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
  return convert.variables_from_state_dict(visual or state,
                                           abstract_variables(model, model.input_resolution),
                                           architecture=CLIP_ARCHITECTURE, source=os.fspath(path))


def random_variables(abstract: Any, seed: int = 0) -> dict:
  """Seeded random variables of the given shapes, drawn on the host: kernels N(0, 1/fan_in), the
  positional embedding N(0, 1/dim), BatchNorm identity statistics, zero biases. (A jitted
  `module.init` would do as well, but XLA:CPU takes tens of seconds to compile it.)"""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name, shape = str(getattr(path[-1], "key", path[-1])), tuple(leaf.shape)
    if name == "kernel":
      return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
    if name == "positional_embedding":
      return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)
    return (np.ones if name in ("scale", "var") else np.zeros)(shape, np.float32)
  return jax.tree_util.tree_map_with_path(draw, abstract)


# ------------------------------------------------------------------------------------ registry
@dataclasses.dataclass(frozen=True)
class EmbeddingSpec:
  """One `phi`: `build(**fields) -> module`, `load(path, module) -> variables`, its output size
  at the default architecture, its default input normalisation, the size its input is resized to
  (None: as given; a function of the module), the file the reference uses, and which entry of
  the module's output is the embedding (None: the output itself)."""

  build: Callable[..., nn.Module]
  load: Callable[[str, nn.Module], dict]
  dim: int
  normalization: str
  input_size: Callable[[nn.Module], int | None]
  weights_file: str
  output_key: str | None = None


EMBEDDINGS: dict[str, EmbeddingSpec] = {
    "resnet50": EmbeddingSpec(ResNet50, load_resnet50, 2048, "none", lambda m: None,
                              "dino_resnet50_pretrain.pth"),
    "clip_rn50": EmbeddingSpec(ModifiedResNet, load_clip_rn50, 1024, "none",
                               lambda m: m.input_resolution, "RN50.pt"),
    # Inception resizes inside (to 299, same resize); fed [-1, 1] = FID's own input convention.
    "inception": EmbeddingSpec(
        lambda **kw: inception_lib.InceptionV3(normalize_input=False, **kw),
        lambda path, _m: inception_lib.load_inception(path), inception_lib.POOL_FEATURES, "none",
        lambda m: None, "pt_inception-2015-12-05-6726825d.pth", output_key="pool"),
    "vgg16": EmbeddingSpec(
        lambda **kw: vgg16_fc2_lib.VGG16FC2(imagenet_normalize=False, **kw),
        lambda path, _m: vgg16_fc2_lib.load_vgg16_fc2(path), vgg16_fc2_lib.EMBEDDING_DIM, "imagenet",
        lambda m: vgg16_fc2_lib.INPUT_SIZE, "vgg16-397923af.pth"),
}


def weights_flag(name: str) -> str:
  return f"--config.dime.{name}_weights"


def _spec(name: str) -> EmbeddingSpec:
  if name not in EMBEDDINGS:
    raise ValueError(f"unknown DiME embedding {name!r}; expected one of {', '.join(EMBEDDINGS)}")
  return EMBEDDINGS[name]


def make_embedding(name: str, weights: str | os.PathLike | None = None, *,
                   normalization: str | None = None, random_init: bool = False, seed: int = 0,
                   flag: str | None = None,
                   **fields) -> tuple[Callable[[Any, jax.Array], jax.Array], dict]:
  """`(apply, variables)` of the embedding `name`: `apply(variables, images)` maps NHWC images
  in [-1, 1] to (N, dim) features (resize, normalisation, network; pure, so jit- and
  grad-friendly). `fields` override the architecture (tiny test sizes). Without `weights` this
  raises unless `random_init=True`; a missing file raises naming it and the flag (`flag`, by
  default `weights_flag(name)`)."""
  spec = _spec(name)
  normalization = spec.normalization if normalization is None else normalization
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"DiME embedding {name}: unknown input normalization {normalization!r}; "
                     f"expected one of {', '.join(NORMALIZATIONS)}")
  flag = flag or weights_flag(name)
  if weights is None and not random_init:
    raise ValueError(f"DiME embedding {name} needs weights ({spec.weights_file}): pass {flag}=FILE "
                     "(or ask for a random phi explicitly)")
  if weights is not None and random_init:
    raise ValueError(f"DiME embedding {name}: both {flag}={weights} and random_init were given")
  if weights is not None and not os.path.isfile(weights):
    raise ValueError(f"DiME embedding {name}: weights file {os.fspath(weights)} does not exist ({flag})")
  module = spec.build(**fields)
  size = spec.input_size(module)

  def apply(variables, images):
    x = normalize_input(images, normalization)
    if size is not None:
      x = resize_square(x, size)
    out = module.apply(variables, x)
    return out[spec.output_key] if spec.output_key else out

  if random_init:
    init_size = inception_lib.INPUT_SIZE if name == "inception" else (size or 64)
    variables = random_variables(abstract_variables(module, init_size), seed)
  else:
    variables = spec.load(os.fspath(weights), module)
  return apply, variables
