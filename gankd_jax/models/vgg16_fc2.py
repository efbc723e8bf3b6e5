"""Full torchvision VGG16 up to `fc2` + ReLU: the 4096-d embedding of precision/recall.

Kynkäänniemi et al. (2019) measure precision and recall in the feature space of VGG16's second
fully connected layer (Keras' `fc2`, torch-fidelity's `fc2_relu`: after its ReLU). Images NHWC in
[0, 1] are resized to 224x224 by PyTorch's bilinear interpolation without antialiasing (the same
matrix resize as our Inception), standardised with the ImageNet mean/std torchvision's weights were
trained with, then run through `vgg16().features`, `avgpool` (identity at 224) and
`classifier[:5]` (fc1, ReLU, dropout (off), fc2, ReLU).

Flax modules carry torchvision's own names (`features.0`, ..., `classifier.3`), so a torchvision
`vgg16-397923af.pth` converts with `gankd_jax.weights.convert`'s per-leaf rules. The one layout
change beyond those rules: torch flattens pool5 as (C, 7, 7) and we as (7, 7, C), so `classifier.0`'s
input rows are permuted (see `variables_from_state_dict`).
"""
from __future__ import annotations

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gankd_jax.models.inception import HIGHEST, resize_bilinear
from gankd_jax.models.layers import dot_general, mixed_conv
from gankd_jax.models.vgg import IMAGENET_MEAN, IMAGENET_STD

INPUT_SIZE = 224
EMBEDDING_DIM = 4096
ARCHITECTURE = "torchvision VGG16"
# torchvision vgg16 `features`: conv output channels, "M" for a 2x2 max pool.
_FEATURES_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16FC2(nn.Module):
  """`__call__(images in [0, 1], NHWC) -> (N, 4096)` fc2+ReLU features of torchvision's VGG16."""

  precision: jax.lax.Precision = HIGHEST
  # False: the caller has normalised the input already (models/embedding.py's DiME wrapper).
  imagenet_normalize: bool = True

  @nn.compact
  def __call__(self, images):
    x = resize_bilinear(images.astype(jnp.float32), INPUT_SIZE, INPUT_SIZE, self.precision)
    if self.imagenet_normalize:
      x = (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)
    index = 0
    for item in _FEATURES_CFG:
      if item == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        index += 1
      else:
        x = nn.Conv(item, (3, 3), padding=((1, 1), (1, 1)), precision=self.precision,
                    conv_general_dilated=mixed_conv, name=f"features.{index}")(x)
        x = nn.relu(x)
        index += 2
    if x.shape[1:3] != (7, 7):
      raise ValueError(f"VGG16FC2 expects 7x7 pool5 maps, got {x.shape[1:3]}")
    x = x.reshape(x.shape[0], -1)
    dense = lambda name: nn.Dense(EMBEDDING_DIM, precision=self.precision, dot_general=dot_general,
                                  name=name)
    x = nn.relu(dense("classifier.0")(x))
    return nn.relu(dense("classifier.3")(x))


def abstract_variables():
  """Abstract params in definition (torchvision) order."""
  model, order = VGG16FC2(), []

  def init(key):
    variables = model.init(key, jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3)))
    order.extend(flax.traverse_util.flatten_dict(variables).keys())
    return variables

  flat = flax.traverse_util.flatten_dict(jax.eval_shape(init, jax.random.key(0)))
  return flax.traverse_util.unflatten_dict({key: flat[key] for key in order})


def _fc1_torch_to_nhwc_rows(weight: np.ndarray) -> np.ndarray:
  """classifier.0.weight (4096, 512*7*7) with inputs in torch's (C, H, W) flatten order ->
  the same matrix with inputs in our (H, W, C) order."""
  out_features = weight.shape[0]
  return weight.reshape(out_features, 512, 7, 7).transpose(0, 2, 3, 1).reshape(out_features, -1)


def variables_from_state_dict(state_dict, source: str = "state dict") -> dict:
  """Flax variables from a torchvision vgg16 state dict (`features.*`, `classifier.0/3`)."""
  from gankd_jax.weights import convert
  state_dict = dict(state_dict)
  fc1 = state_dict.get("classifier.0.weight")
  if fc1 is not None and np.ndim(fc1) == 2 and np.shape(fc1)[1] == 512 * 7 * 7:
    state_dict["classifier.0.weight"] = _fc1_torch_to_nhwc_rows(np.asarray(fc1))
  return convert.variables_from_state_dict(state_dict, abstract_variables(),
                                           architecture=ARCHITECTURE, source=source)


def load_vgg16_fc2(path: str, cache_dir: str | None = None) -> dict:
  """Flax variables of `VGG16FC2` from a `.pth` / `.npz` (converted once, then cached)."""
  from gankd_jax.weights import convert
  return convert.cached_conversion(path, ARCHITECTURE + " fc2",
                                   lambda sd, src: variables_from_state_dict(sd, src),
                                   cache_dir=cache_dir)
