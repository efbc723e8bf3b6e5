"""A small digit classifier: the feature network of FID and IS on digit data (MNIST-like images).

Inception features mean little on 32x32 grey digits, so, as is usual for MNIST GANs, FID and IS on
digit data use a classifier trained on the digits themselves: FID on its penultimate features
(64-d, after ReLU) and IS on its softmax over the 10 classes. Every result computed with it is
labelled with FEATURE_NETWORK = "digit_classifier" (vs "inception" for the Inception-based
metrics), since the two scales are not comparable.

The network (about 48k parameters): three [3x3 conv, ReLU, 2x2 max-pool] blocks of 16, 32, 32
channels on a 32x32 grey image in [-1, 1], a 64-unit ReLU layer (the features), a 10-way linear
layer (the logits). Other sizes are resized bilinearly to 32x32 and colour is averaged to grey.

Its weights ship with the package (`digit_classifier.npz`, ~190 KB), made by
`python -m gankd_jax.metrics.digit_classifier --train`, which trains it on the embedded digits'
training split (gankd_jax/data/digits.py: scikit-learn's digits upsampled to 32x32) with random
shifts of up to 2 px, and prints the accuracy on the held-out test split (>= 97 % required).
"""
from __future__ import annotations

import os
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gankd_jax.models.layers import dot_general, mixed_conv

FEATURE_NETWORK = "digit_classifier"
WEIGHTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digit_classifier.npz")
INPUT_SIZE = 32
NUM_FEATURES = 64
NUM_CLASSES = 10
REQUIRED_ACCURACY = 0.97


class DigitClassifier(nn.Module):
  """images (N, H, W, C) in [-1, 1] -> {"features": (N, 64), "logits": (N, 10)}."""

  @nn.compact
  def __call__(self, images):
    x = prepare_images(images)
    for width in (16, 32, 32):
      x = nn.relu(nn.Conv(width, (3, 3), padding="SAME", conv_general_dilated=mixed_conv)(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    features = nn.relu(nn.Dense(NUM_FEATURES, dot_general=dot_general)(x.reshape(x.shape[0], -1)))
    return {"features": features, "logits": nn.Dense(NUM_CLASSES, dot_general=dot_general)(features)}


def prepare_images(images: jax.Array) -> jax.Array:
  """Grey 32x32: channels averaged, other sizes resized bilinearly (antialiased when shrinking)."""
  x = jnp.asarray(images, jnp.float32)
  if x.shape[-1] != 1:
    x = jnp.mean(x, axis=-1, keepdims=True)
  if x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
    x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 1), "bilinear")
  return x


def apply(variables, images) -> dict[str, jax.Array]:
  return DigitClassifier().apply(variables, images)


# ------------------------------------------------------------------------------- weights file
def save_weights(path: str, params: Any) -> None:
  flat = {jax.tree_util.keystr(k): np.asarray(v, np.float32)
          for k, v in jax.tree_util.tree_leaves_with_path(params)}
  tmp = path + ".tmp.npz"
  np.savez_compressed(tmp, **flat)
  os.replace(tmp, path)


def load_weights(path: Optional[str] = None) -> dict[str, Any]:
  """The classifier's variables from `path` (default: the file shipped with the package)."""
  path = path or WEIGHTS_PATH
  if not os.path.isfile(path):
    raise ValueError(f"digit classifier weights {path} not found; make them with "
                     "`python -m gankd_jax.metrics.digit_classifier --train`")
  template = jax.eval_shape(DigitClassifier().init, jax.random.key(0),
                            jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 1)))["params"]
  with np.load(path) as archive:
    stored = dict(archive)
  leaves = []
  for key, leaf in jax.tree_util.tree_leaves_with_path(template):
    name = jax.tree_util.keystr(key)
    if name not in stored or stored[name].shape != leaf.shape:
      raise ValueError(f"{path} does not hold the digit classifier (tensor {name} missing or "
                       "of another shape)")
    leaves.append(jnp.asarray(stored[name]))
  return {"params": jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)}


# ------------------------------------------------------------------------------- training
def random_shifts(rng: np.random.Generator, images: np.ndarray, max_shift: int = 2) -> np.ndarray:
  """Each image moved by up to `max_shift` px in x and y (background -1 fills the border)."""
  out = np.full_like(images, -1.0)
  size = images.shape[1]
  for i, (dy, dx) in enumerate(rng.integers(-max_shift, max_shift + 1, (len(images), 2))):
    src = images[i, max(0, -dy):size - max(0, dy), max(0, -dx):size - max(0, dx)]
    out[i, max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
  return out


def digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
  """The embedded digits' images in [-1, 1] (N, 32, 32, 1) and labels."""
  from gankd_jax.data import digits
  images, labels = digits.load_split(split, INPUT_SIZE)
  return (images[..., None].astype(np.float32) / 127.5 - 1.0), labels


def train(steps: int = 1500, batch_size: int = 64, lr: float = 1e-3, seed: int = 0):
  """Trains on the digits' training split; returns (variables, held-out test accuracy)."""
  images, labels = digits_split("train")
  model = DigitClassifier()
  params = model.init(jax.random.key(seed), images[:1])["params"]
  schedule = optax.cosine_decay_schedule(lr, steps)
  optimizer = optax.adam(schedule)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      logits = model.apply({"params": p}, x)["logits"]
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  for _ in range(steps):
    pick = rng.integers(0, len(images), batch_size)
    params, opt_state, _ = step(params, opt_state, random_shifts(rng, images[pick]), labels[pick])
  variables = {"params": params}
  return variables, accuracy(variables, "test")


def accuracy(variables, split: str = "test") -> float:
  images, labels = digits_split(split)
  logits = jax.jit(apply)(variables, images)["logits"]
  return float(np.mean(np.argmax(np.asarray(logits), -1) == labels))


def main(argv=None) -> None:
  import argparse
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--train", action="store_true", help="train and write the weights file")
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--out", default=WEIGHTS_PATH)
  args = parser.parse_args(argv)
  if not args.train:
    print(f"{FEATURE_NETWORK}: held-out accuracy {accuracy(load_weights()):.4f} ({WEIGHTS_PATH})")
    return
  variables, test_accuracy = train(args.steps)
  print(f"{FEATURE_NETWORK}: held-out accuracy {test_accuracy:.4f} after {args.steps} steps")
  if test_accuracy < REQUIRED_ACCURACY:
    raise SystemExit(f"error: accuracy {test_accuracy:.4f} is below {REQUIRED_ACCURACY}; not saved")
  save_weights(args.out, variables["params"])
  print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
  main()
