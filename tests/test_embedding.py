"""Tests for DiME's embedding networks (models/embedding.py) against PyTorch reference outputs.

The fixtures (tests/fixtures/make_embedding_fixtures.py) hold tiny seeded networks of the
reference code itself: torchvision's ResNet/Bottleneck at width 4 and OpenAI CLIP's
`ModifiedResNet` at width 4, their weights as torchvision / DINO / open_clip state dicts and a
TorchScript archive, their outputs, `F.interpolate` resizes, and the full-size state-dict layouts.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gankd_jax.models import embedding
from gankd_jax.weights import convert
from gankd_jax.weights.torch_pth import load_pth

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "embedding")
TINY_RESNET = {"layers": (1, 1, 1, 1), "width": 4}
TINY_CLIP = {"layers": (1, 2, 1, 1), "width": 4, "output_dim": 16, "input_resolution": 64}


@pytest.fixture(scope="module")
def ref():
  with np.load(os.path.join(FIXTURES, "embedding.npz"), allow_pickle=False) as archive:
    return {key: archive[key] for key in archive.files}


def _path(name: str) -> str:
  return os.path.join(FIXTURES, name)


def _leaves(variables) -> dict:
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(variables)}


@pytest.mark.parametrize("weights", ["resnet_tiny.pth", "resnet_tiny_dino.pth"])
def test_resnet_matches_torchvision(ref, weights):
  apply, variables = embedding.make_embedding("resnet50", _path(weights), **TINY_RESNET)
  out = np.asarray(jax.jit(apply)(variables, ref["resnet_input"]))
  assert out.shape == ref["resnet_output"].shape == (2, 128)
  np.testing.assert_allclose(out, ref["resnet_output"], rtol=1e-4, atol=1e-5)


def test_dino_checkpoint_loads_the_teacher_without_prefixes():
  model = embedding.ResNet50(**TINY_RESNET)
  plain = _leaves(embedding.load_resnet50(_path("resnet_tiny.pth"), model))
  dino = _leaves(embedding.load_resnet50(_path("resnet_tiny_dino.pth"), model))
  assert plain.keys() == dino.keys()
  for key, value in plain.items():  # the student's conv1 differs by +1: the teacher's is taken
    np.testing.assert_array_equal(dino[key], value, err_msg=key)


@pytest.mark.parametrize("weights", ["clip_tiny_openclip.pth", "clip_tiny_jit.pt"])
def test_clip_matches_openai_modified_resnet(ref, weights):
  # 48 px inputs: the embedding resizes to the network's 64 px as F.interpolate did.
  apply, variables = embedding.make_embedding("clip_rn50", _path(weights), **TINY_CLIP)
  out = np.asarray(jax.jit(apply)(variables, ref["clip_input"]))
  assert out.shape == (2, 16)
  np.testing.assert_allclose(out, ref["clip_output"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ref["clip_output_jit"], ref["clip_output"], rtol=1e-6)


def test_torchscript_archive_needs_stubs():
  with pytest.raises(ValueError, match=r"refusing to load .*__torch__"):
    load_pth(_path("clip_tiny_jit.pt"))
  tensors = embedding.checkpoint_tensors(_path("clip_tiny_jit.pt"))
  assert "visual.attnpool.positional_embedding" in tensors and "logit_scale" in tensors


@pytest.mark.parametrize("name,model,layout,dim", [
    ("resnet50", embedding.ResNet50(), "resnet50_layout", 2048),
    ("clip_rn50", embedding.ModifiedResNet(), "clip_rn50_layout", 1024),
])
def test_full_size_layout_and_output(ref, name, model, layout, dim):
  abstract = embedding.abstract_variables(model, 224)
  ours = [(key, list(shape)) for key, shape in convert.expected_shapes(abstract)]
  assert sorted(ours) == sorted(map(tuple, json.loads(str(ref[layout])))), name
  out = jax.eval_shape(model.apply, abstract, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  assert out.shape == (1, dim) == (1, embedding.EMBEDDINGS[name].dim)


def test_wrapped_networks_output_dims():
  for name in ("inception", "vgg16"):
    spec = embedding.EMBEDDINGS[name]
    module = spec.build()
    images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.key(0), images)
    out = jax.eval_shape(module.apply, variables, images)
    out = out[spec.output_key] if spec.output_key else out
    assert out.shape == (1, spec.dim), name


def test_registry():
  assert set(embedding.EMBEDDINGS) == {"resnet50", "clip_rn50", "inception", "vgg16"}
  dims = {name: spec.dim for name, spec in embedding.EMBEDDINGS.items()}
  assert dims == {"resnet50": 2048, "clip_rn50": 1024, "inception": 2048, "vgg16": 4096}
  norms = {name: spec.normalization for name, spec in embedding.EMBEDDINGS.items()}
  assert norms == {"resnet50": "none", "clip_rn50": "none", "inception": "none", "vgg16": "imagenet"}
  with pytest.raises(ValueError, match="unknown DiME embedding 'dino'.*resnet50, clip_rn50"):
    embedding.make_embedding("dino", random_init=True)
  with pytest.raises(ValueError, match="unknown input normalization 'tf'"):
    embedding.make_embedding("resnet50", normalization="tf", random_init=True, **TINY_RESNET)


@pytest.mark.parametrize("name", sorted(embedding.EMBEDDINGS))
def test_missing_weights_name_the_file_and_the_flag(name, tmp_path):
  flag = f"--config.dime.{name}_weights"
  with pytest.raises(ValueError) as error:
    embedding.make_embedding(name)
  message = str(error.value)
  assert "\n" not in message and flag in message and embedding.EMBEDDINGS[name].weights_file in message
  missing = str(tmp_path / "nope.pth")
  with pytest.raises(ValueError) as error:
    embedding.make_embedding(name, missing)
  assert "\n" not in str(error.value) and missing in str(error.value) and flag in str(error.value)


def test_random_init_only_when_asked():
  with pytest.raises(ValueError, match="needs weights"):
    embedding.make_embedding("resnet50", **TINY_RESNET)
  with pytest.raises(ValueError, match="both"):
    embedding.make_embedding("resnet50", _path("resnet_tiny.pth"), random_init=True, **TINY_RESNET)
  apply, variables = embedding.make_embedding("resnet50", random_init=True, seed=1, **TINY_RESNET)
  out = np.asarray(jax.jit(apply)(variables, np.zeros((1, 32, 32, 3), np.float32) + 0.5))
  assert out.shape == (1, 128) and np.all(np.isfinite(out))
  loaded = _leaves(embedding.load_resnet50(_path("resnet_tiny.pth"), embedding.ResNet50(**TINY_RESNET)))
  assert _leaves(variables).keys() == loaded.keys()


def test_wrong_architecture_names_the_tensor():
  with pytest.raises(ValueError, match=r"not a torchvision ResNet-50 weights file: it has no tensor conv1.weight|"
                                       r"not a torchvision ResNet-50 weights file: tensor conv1.weight"):
    embedding.load_resnet50(_path("clip_tiny_openclip.pth"), embedding.ResNet50(**TINY_RESNET))
  with pytest.raises(ValueError, match="expects 64x64 images, got 48x48"):
    embedding.ModifiedResNet(**TINY_CLIP).init(jax.random.key(0), jnp.zeros((1, 48, 48, 3)))


@pytest.mark.parametrize("case", ["down", "up", "256"])
def test_resize_matches_f_interpolate(ref, case):
  if case == "256":
    images = np.random.RandomState(0).uniform(-1, 1, (1, 256, 256, 1)).astype(np.float32)
  else:
    images = ref[f"resize_{case}_input"]
  expected = ref[f"resize_{case}_output"]
  out = np.asarray(embedding.resize_square(images, expected.shape[1]))
  # Float32 rounding of the two-matrix form vs ATen's two-tap sums (measured up to 3.7e-6).
  np.testing.assert_allclose(out, expected, rtol=0, atol=5e-6)


def test_input_normalizations():
  images = np.random.RandomState(1).uniform(-1, 1, (2, 3, 3, 3)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(embedding.normalize_input(images, "none")), images)
  for name, mean, std in (("imagenet", embedding.IMAGENET_MEAN, embedding.IMAGENET_STD),
                          ("clip", embedding.CLIP_MEAN, embedding.CLIP_STD)):
    expected = ((images + 1) / 2 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(np.asarray(embedding.normalize_input(images, name)), expected, rtol=1e-5,
                               atol=1e-6)
