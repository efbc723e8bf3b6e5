"""Unconditional datasets: embedded digits, TFDS (mocked) mnist / cifar10 / celeb_a, image folders,
through the shared deterministic pipeline."""
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from gankd_jax import data
from gankd_jax.data import digits, pipeline


def config(**fields):
  c = data.unconditional_data_config()
  for k, v in fields.items():
    c[k] = v
  return c


def test_digits_split_is_deterministic_disjoint_and_stratified():
  _, labels = digits._load_raw()
  train, test = digits.split_indices(labels, "train"), digits.split_indices(labels, "test")
  assert len(train) + len(test) == len(labels) == 1797
  assert not set(train) & set(test)
  np.testing.assert_array_equal(test, digits.split_indices(labels, "test"))
  for label in range(10):  # about 20 % of every class held out
    held_out = np.sum(labels[test] == label) / np.sum(labels == label)
    assert 0.18 < held_out < 0.22


def test_digits_upsampling_keeps_the_digit():
  raw, _ = digits._load_raw()
  big = digits.upsample(raw[0], 32).astype(np.float32)
  # Block means of the 32x32 image follow the 8x8 original (the filter only smooths).
  blocks = big.reshape(8, 4, 8, 4).mean(axis=(1, 3)) / 255.0 * 16.0
  assert np.corrcoef(blocks.ravel(), raw[0].ravel())[0, 1] > 0.95
  assert big.max() <= 255 and big.min() >= 0


def test_digits_dataset_examples_and_batches():
  train = data.build_dataset(config(), "train")
  test = data.build_dataset(config(), "eval")
  assert (len(train), len(test)) == (1438, 359)
  assert train.image_shape == (32, 32, 1)
  example = train.example(5, None)
  assert example["image"].shape == (32, 32, 1) and example["image"].dtype == np.float32
  assert -1.0 <= example["image"].min() < 0 < example["image"].max() <= 1.0
  assert example["index"] == 5
  with pipeline.GlobalBatchIterator(train, 8, seed=3, prefetch=0, num_threads=1) as it:
    batch = next(it)
  assert batch["image"].shape == (8, 32, 32, 1) and batch["index"].dtype == np.int32
  with pipeline.GlobalBatchIterator(train, 8, seed=3, start_step=0, prefetch=2, num_threads=2) as it:
    again = next(it)
  np.testing.assert_array_equal(batch["image"], again["image"])
  evals = list(pipeline.eval_batches(test, 128))
  assert sum(int(b["mask"].sum()) for b in evals) == 359
  rgb = data.build_dataset(config(channels=3, image_size=64), "train").example(0)["image"]
  assert rgb.shape == (64, 64, 3)


@pytest.mark.parametrize("name,size,channels", [("mnist", 32, 1), ("cifar10", 32, 3),
                                                ("celeb_a", 64, 3)])
def test_tfds_datasets_through_mock_data(name, size, channels):
  with tfds.testing.mock_data(num_examples=6):
    train = data.build_dataset(config(name=name, image_size=size), "train")
    test = data.build_dataset(config(name=name, image_size=size), "eval")
    assert len(train) == 6 and len(test) == 6
    assert train.image_shape == (size, size, channels)
    with pipeline.GlobalBatchIterator(train, 4, seed=0, prefetch=0, num_threads=2) as it:
      batch = next(it)
  assert batch["image"].shape == (4, size, size, channels)
  assert np.all(np.abs(batch["image"]) <= 1.0)


def test_tfds_dataset_unavailable_is_one_line(tmp_path):
  with pytest.raises(ValueError, match="TFDS dataset 'cifar10' split 'train' is not available") as e:
    data.build_dataset(config(name="cifar10", data_dir=str(tmp_path), download=False), "train")
  assert "\n" not in str(e.value)


def test_image_folder(tmp_path):
  rng = np.random.default_rng(0)
  for i in range(3):
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), np.uint8)).save(tmp_path / f"{i}.png")
  (tmp_path / "sub").mkdir()
  Image.fromarray(rng.integers(0, 255, (20, 20), np.uint8)).save(tmp_path / "sub" / "g.jpg")
  train = data.build_dataset(config(name="image_folder", path=str(tmp_path)), "train")
  evals = data.build_dataset(config(name="image_folder", path=str(tmp_path)), "eval")
  assert len(train) == len(evals) == 4  # no train/ folder: every image serves both
  assert train.example(3)["image"].shape == (32, 32, 3)  # grey file converted to RGB
  (tmp_path / "broken.png").write_bytes(b"not an image")
  with pytest.raises(ValueError, match="broken.png"):
    data.build_dataset(config(name="image_folder", path=str(tmp_path)), "train")
  with pytest.raises(ValueError, match="does not exist"):
    data.build_dataset(config(name="image_folder", path=str(tmp_path / "nope")), "train")
  with pytest.raises(ValueError, match="data.path is not set"):
    data.build_dataset(config(name="image_folder"), "train")
