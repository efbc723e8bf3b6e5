"""Tests for the paired data layer: folders, embedded default, transforms and the pipeline."""
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from gankd_jax import data
from gankd_jax.data import embedded, paired, pipeline

HALF = 12  # synthetic halves are HALF x HALF, so eval at crop_size=HALF is resize-free


def write_aligned(path, left, right):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.concatenate([left, right], axis=1)).save(path)


def random_image(rng, height=HALF, width=HALF):
  return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path):
  """pix2pix folder with 10 train and 5 val pairs; returns (root, {split: [(left, right)]})."""
  rng = np.random.default_rng(0)
  pairs = {}
  for split, count in (("train", 10), ("val", 5)):
    pairs[split] = []
    for i in range(count):
      left, right = random_image(rng), random_image(rng)
      write_aligned(str(tmp_path / split / f"{i:03d}.png"), left, right)
      pairs[split].append((left, right))
  return str(tmp_path), pairs


def folder_config(root, **overrides):
  config = data.default_data_config()
  config.name = "pix2pix_folder"
  config.path = root
  config.crop_size = HALF
  config.num_threads = 2
  config.update(overrides)
  return config


def unit(image):
  return image.astype(np.float32) / 127.5 - 1.0


class ListDataset(paired.PairedDataset):
  """In-memory dataset whose A encodes the index, for pipeline bookkeeping tests."""

  def __init__(self, count, size=8, load_size=12, fail_at=None):
    self.num_examples = count
    self.transform = paired.PairTransform(crop_size=size, load_size=load_size, flip=True)
    rng = np.random.default_rng(1)
    self.images = [random_image(rng, size, size) for _ in range(count)]
    self.fail_at = fail_at

  def get(self, index):
    if index == self.fail_at:
      raise ValueError(f"cannot decode image file broken_{index}.png")
    return np.full_like(self.images[index], index), self.images[index]


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


# --- folder dataset -----------------------------------------------------------------------------
def test_folder_halves_direction_and_eval_transform(folder):
  root, pairs = folder
  atob = data.build_dataset(folder_config(root), "eval")
  btoa = data.build_dataset(folder_config(root, direction="BtoA"), "eval")
  assert atob.num_examples == 5 and atob.image_shape == (HALF, HALF, 3)
  for i, (left, right) in enumerate(pairs["val"]):
    np.testing.assert_array_equal(atob.get(i)[0], left)
    a, b = atob.example(i)
    np.testing.assert_allclose(a, unit(left), atol=1e-6)
    np.testing.assert_allclose(b, unit(right), atol=1e-6)
    a, b = btoa.example(i)
    np.testing.assert_allclose(a, unit(right), atol=1e-6)
    # eval transform ignores the rng: no crop, no flip
    np.testing.assert_array_equal(atob.example(i, np.random.default_rng(5))[0], atob.example(i)[0])


def test_eval_resizes_to_crop_size(folder):
  root, _ = folder
  dataset = data.build_dataset(folder_config(root, crop_size=8), "eval")
  a, b = dataset.example(0)
  assert a.shape == b.shape == (8, 8, 3) and a.dtype == np.float32
  assert -1.0 <= a.min() and a.max() <= 1.0


def test_train_transform_same_crop_and_flip_for_a_and_b(tmp_path):
  rng = np.random.default_rng(3)
  for i in range(3):  # identical halves: any crop/flip mismatch would show as A != B
    half = random_image(rng, 16, 16)
    write_aligned(str(tmp_path / "train" / f"{i}.png"), half, half)
  dataset = data.build_dataset(folder_config(str(tmp_path), load_size=20, crop_size=16), "train")
  outputs = set()
  for seed in range(12):
    a, b = dataset.example(seed % 3, np.random.default_rng(seed))
    assert a.shape == (16, 16, 3) and a.dtype == np.float32
    assert -1.0 <= a.min() and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    outputs.add(a.tobytes())
  assert len(outputs) > 6  # the crop and flip really vary


def test_train_transform_matches_pix2pix_recipe():
  rng = np.random.default_rng(4)
  a_raw, b_raw = random_image(rng, 10, 14), random_image(rng, 10, 14)
  transform = paired.PairTransform(crop_size=8, load_size=11, flip=True)
  aug = paired.sample_augmentation(np.random.default_rng(9), 11, 8, True)
  a, b = transform(a_raw, b_raw, np.random.default_rng(9))
  for raw, out in ((a_raw, a), (b_raw, b)):
    resized = np.asarray(Image.fromarray(raw).resize((11, 11), Image.BICUBIC))
    expected = resized[aug.top:aug.top + 8, aug.left:aug.left + 8]
    expected = expected[:, ::-1] if aug.flip else expected
    np.testing.assert_allclose(out, unit(expected), atol=1e-6)
  no_flip = paired.PairTransform(crop_size=8, load_size=8, flip=False)
  for seed in range(8):
    np.testing.assert_allclose(no_flip(a_raw[:8, :8], b_raw[:8, :8],
                                       np.random.default_rng(seed))[0], unit(a_raw[:8, :8]))


def test_eval_split_resolution(tmp_path):
  rng = np.random.default_rng(0)
  write_aligned(str(tmp_path / "train" / "0.png"), random_image(rng), random_image(rng))
  write_aligned(str(tmp_path / "test" / "0.png"), random_image(rng), random_image(rng))
  write_aligned(str(tmp_path / "test" / "1.png"), random_image(rng), random_image(rng))
  (tmp_path / "test" / "README.txt").write_text("not an image; ignored by extension")
  config = folder_config(str(tmp_path))
  assert data.build_dataset(config, "eval").num_examples == 2  # no val/: falls back to test/
  write_aligned(str(tmp_path / "val" / "0.png"), random_image(rng), random_image(rng))
  assert data.build_dataset(config, "eval").num_examples == 1  # val/ preferred
  config.eval_split = "test"
  assert data.build_dataset(config, "eval").num_examples == 2


# --- validation errors --------------------------------------------------------------------------
def one_line_error(match, build):
  with pytest.raises(ValueError, match=match) as info:
    build()
  assert "\n" not in str(info.value)
  return str(info.value)


def test_missing_path_and_empty_folder(tmp_path):
  missing = str(tmp_path / "nope")
  assert missing in one_line_error("does not exist", lambda: data.build_dataset(
      folder_config(missing), "train"))
  one_line_error("data.path is not set", lambda: data.build_dataset(folder_config(None), "train"))
  os.makedirs(tmp_path / "train")
  one_line_error("no image files", lambda: data.build_dataset(
      folder_config(str(tmp_path)), "train"))
  one_line_error("split folder", lambda: data.build_dataset(folder_config(str(tmp_path)), "eval"))


def test_corrupt_and_odd_width_images_are_named(folder):
  root, _ = folder
  bad = os.path.join(root, "train", "005.png")
  with open(bad, "rb") as stream:
    content = stream.read()
  with open(bad, "wb") as stream:
    stream.write(content[:len(content) // 2])  # truncated PNG
  assert bad in one_line_error("cannot decode", lambda: data.build_dataset(
      folder_config(root), "train"))
  with open(bad, "wb") as stream:
    stream.write(b"this is not an image")
  assert bad in one_line_error("cannot decode", lambda: data.build_dataset(
      folder_config(root), "train"))
  Image.fromarray(random_image(np.random.default_rng(0), HALF, 2 * HALF + 1)).save(bad)
  assert bad in one_line_error("odd width", lambda: data.build_dataset(
      folder_config(root), "train"))


def test_config_errors(folder):
  root, _ = folder
  one_line_error("embedded_edges2photo, pix2pix_folder", lambda: data.build_dataset(
      folder_config(root, name="edges2cats"), "train"))
  one_line_error("direction", lambda: data.build_dataset(
      folder_config(root, direction="AtoC"), "train"))
  one_line_error("load_size", lambda: data.build_dataset(
      folder_config(root, load_size=4), "train"))
  one_line_error("split", lambda: data.build_dataset(folder_config(root), "training"))
  dataset = ListDataset(4)
  one_line_error("not divisible", lambda: pipeline.GlobalBatchIterator(
      dataset, 6, seed=0, process_count=4))
  one_line_error("not divisible", lambda: next(data.eval_batches(dataset, 6, 0, 4)))
  one_line_error("seed", lambda: pipeline.GlobalBatchIterator(dataset, 4, seed=-1))


# --- pipeline -----------------------------------------------------------------------------------
def test_batches_follow_the_determinism_contract():
  dataset = ListDataset(7)
  with data.GlobalBatchIterator(dataset, 4, seed=11, num_threads=2) as iterator:
    batches = take(iterator, 5)  # 20 stream elements: crosses two epoch boundaries
  orders = [np.random.default_rng((11, e)).permutation(7) for e in range(3)]
  stream = np.concatenate(orders)
  for step, batch in enumerate(batches):
    assert batch["A"].shape == (4, 8, 8, 3) and batch["A"].dtype == np.float32
    for j in range(4):
      index = stream[step * 4 + j]
      a, b = dataset.example(int(index), np.random.default_rng((11, step, j)))
      np.testing.assert_array_equal(batch["A"][j], a)
      np.testing.assert_array_equal(batch["B"][j], b)
  seen = [int(i) for i in stream[:7]]
  assert sorted(seen) == list(range(7))  # an epoch visits every example once


def test_same_seed_same_batches_and_prefetch_invariance(folder):
  root, _ = folder
  dataset = data.build_dataset(folder_config(root, load_size=16), "train")
  runs = []
  for prefetch, threads in ((2, 2), (2, 1), (0, 1)):
    with data.GlobalBatchIterator(dataset, 4, seed=3, prefetch=prefetch,
                                  num_threads=threads) as iterator:
      runs.append(take(iterator, 4))
  for run in runs[1:]:
    for x, y in zip(runs[0], run):
      np.testing.assert_array_equal(x["A"], y["A"])
      np.testing.assert_array_equal(x["B"], y["B"])
  with data.GlobalBatchIterator(dataset, 4, seed=4) as iterator:
    assert not np.array_equal(next(iterator)["A"], runs[0][0]["A"])


def test_global_batch_is_independent_of_process_count(folder):
  root, _ = folder
  dataset = data.build_dataset(folder_config(root, load_size=16), "train")
  global_batches = {}
  for count in (1, 2, 4):
    iterators = [data.GlobalBatchIterator(dataset, 8, seed=5, process_index=p,
                                          process_count=count, num_threads=2)
                 for p in range(count)]
    local = [take(iterator, 3) for iterator in iterators]
    for iterator in iterators:
      iterator.close()
    assert local[0][0]["A"].shape[0] == 8 // count
    global_batches[count] = [np.concatenate([local[p][k]["A"] for p in range(count)])
                             for k in range(3)]
  for count in (2, 4):
    for k in range(3):
      np.testing.assert_array_equal(global_batches[1][k], global_batches[count][k])


def test_resume_continues_exactly():
  dataset = ListDataset(9)
  with data.GlobalBatchIterator(dataset, 4, seed=2) as iterator:
    full = take(iterator, 7)
    assert iterator.step == 7
  with data.GlobalBatchIterator(dataset, 4, seed=2, start_step=4) as iterator:
    assert iterator.step == 4
    resumed = take(iterator, 3)
  for x, y in zip(full[4:], resumed):
    np.testing.assert_array_equal(x["A"], y["A"])
    np.testing.assert_array_equal(x["B"], y["B"])


def test_background_errors_reraise_and_close_stops():
  dataset = ListDataset(6, fail_at=3)
  iterator = data.GlobalBatchIterator(dataset, 6, seed=0, num_threads=2)
  with pytest.raises(ValueError, match="cannot decode image file broken_3.png"):
    next(iterator)
  with pytest.raises(ValueError, match="broken_3.png"):  # stays failed
    next(iterator)
  iterator.close()
  healthy = data.GlobalBatchIterator(ListDataset(6), 2, seed=0, prefetch=3)
  next(healthy)
  healthy.close()
  assert not healthy._thread.is_alive()
  with pytest.raises(StopIteration):
    next(healthy)
  healthy.close()  # idempotent


def test_eval_batches_cover_every_example_once_with_mask():
  dataset = ListDataset(7)
  for count in (1, 2):
    per_process = [list(data.eval_batches(dataset, 4, p, count, num_threads=2))
                   for p in range(count)]
    assert all(len(batches) == data.num_eval_steps(7, 4) == 2 for batches in per_process)
    a = np.concatenate([np.concatenate([per_process[p][k]["A"] for p in range(count)])
                        for k in range(2)])
    mask = np.concatenate([np.concatenate([per_process[p][k]["mask"] for p in range(count)])
                           for k in range(2)])
    assert mask.dtype == bool and mask.tolist() == [True] * 7 + [False]
    # ListDataset's A is the index itself, mapped to [-1, 1]
    indices = np.rint((a[:, 0, 0, 0] + 1.0) * 127.5).astype(int)
    assert indices.tolist() == [0, 1, 2, 3, 4, 5, 6, 6]
    np.testing.assert_array_equal(a[0], dataset.example(0)[0])


# --- embedded default ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedded_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("gankd_cache"))


@pytest.fixture(scope="module")
def embedded_splits(embedded_cache):
  transform = paired.PairTransform(crop_size=64, load_size=64, flip=True, train=True)
  return {split: embedded.EmbeddedPhotoPairs(split, transform, cache_dir=embedded_cache)
          for split in ("train", "test")}


def test_embedded_sizes_shapes_and_values(embedded_splits, embedded_cache):
  """The default task: A is B's luminance (3 equal channels); edges2photo's A is a sparse
  black-on-white edge map of the same photos."""
  train, test = embedded_splits["train"], embedded_splits["test"]
  assert train.task == "grey2photo" and train.num_examples >= 1000 and test.num_examples >= 100
  assert train.image_shape == (64, 64, 3)
  grey, photo = train.get(0)
  assert grey.dtype == photo.dtype == np.uint8 and grey.shape == photo.shape == (64, 64, 3)
  for index in (0, 500, train.num_examples - 1):
    a, b = train.get(index)
    expected = np.rint(b.astype(np.float64) @ [0.299, 0.587, 0.114])  # ITU-R 601 luma
    assert np.abs(a[..., 0] - expected).max() <= 1
    np.testing.assert_array_equal(a[..., 0], a[..., 2])
  a, b = train.example(5, np.random.default_rng(0))
  assert a.dtype == np.float32 and -1.0 <= a.min() and a.max() <= 1.0 and b.shape == (64, 64, 3)
  edges = embedded.load_pairs("test", 64, task="edges2photo", cache_dir=embedded_cache)
  np.testing.assert_array_equal(edges["B"], test.b)
  assert set(np.unique(edges["A"][::20])) <= {0, 255}  # black edges on white
  assert 0.002 < np.mean(edges["A"] == 0) < 0.3  # sparse outlines, not empty, not noise
  with pytest.raises(ValueError, match="unknown embedded task 'sketch2photo'"):
    embedded.load_pairs("test", 64, task="sketch2photo", cache_dir=embedded_cache)


def test_embedded_split_is_disjoint_by_region(embedded_splits):
  """Every photo gives both splits; no training crop's box meets a test crop's box in the same
  photo's pixels (the two motorcycle views share one pixel frame here, which the stereo rule of
  the module doc needs); test crops lie in the left strip, training crops right of it."""
  train, test = embedded_splits["train"], embedded_splits["test"]
  assert set(train.source_names) == set(test.source_names) == set(embedded.SOURCES)
  for name in embedded.SOURCES:
    train_boxes = train.boxes[np.asarray(train.source_names) == name]
    test_boxes = test.boxes[np.asarray(test.source_names) == name]
    assert len(train_boxes) > len(test_boxes) > 0
    column = test_boxes[:, 2].max()
    assert column <= train_boxes[:, 0].min()  # a vertical boundary between the splits
    # Pairwise: boxes overlap when both their x and y intervals do.
    x_meet = ((train_boxes[:, None, 0] < test_boxes[None, :, 2])
              & (test_boxes[None, :, 0] < train_boxes[:, None, 2]))
    y_meet = ((train_boxes[:, None, 1] < test_boxes[None, :, 3])
              & (test_boxes[None, :, 1] < train_boxes[:, None, 3]))
    assert not np.any(x_meet & y_meet), name
  # The motorcycle's right view adds training crops only (the first view's are listed first).
  motorcycle = np.asarray(train.source_names) == "motorcycle"
  views = np.split(train.boxes[motorcycle], 2)
  np.testing.assert_array_equal(views[0], views[1])
  assert (np.asarray(test.source_names) == "motorcycle").sum() < len(views[0])


def test_embedded_crops_never_read_across_the_split(tmp_path):
  """The bicubic filter reads only its own region: a photo black in the held-out strip and white
  elsewhere gives all-black test crops and all-white training crops, even at the boundary."""
  width, height = 200, 120
  photo = np.full((height, width, 3), 255, np.uint8)
  column = embedded.split_region("test", width, height)[2]
  assert column == round(embedded.HOLDOUT_FRACTION * width) == 50
  photo[:, :column] = 0
  path = str(tmp_path / "split.png")
  Image.fromarray(photo).save(path)
  crops = {split: embedded.photo_crops(path, split, 16, embedded.CROP_SCALES)
           for split in ("train", "test")}
  test_crops, test_boxes = crops["test"]
  train_crops, train_boxes = crops["train"]
  assert len(test_crops) == len(test_boxes) > 0 and len(train_crops) == len(train_boxes) > 0
  assert test_boxes[:, 2].max() == column == train_boxes[:, 0].min()  # crops touch the line
  assert test_crops.max() == 0 and train_crops.min() == 255
  # Sides are the same fractions of the short side in both regions; the strip takes the small ones.
  sides = {split: set((boxes[:, 2] - boxes[:, 0]).tolist()) for split, (_, boxes) in crops.items()}
  assert sides["test"] == {22, 30, 42} and sides["test"] < sides["train"]


def test_embedded_is_deterministic_and_cached(embedded_splits, embedded_cache, monkeypatch):
  fresh = embedded.build_pairs("test", 64, embedded.CROP_SCALES, embedded.default_edge_sigma(64))
  np.testing.assert_array_equal(fresh["A"], embedded_splits["test"].a)
  np.testing.assert_array_equal(fresh["B"], embedded_splits["test"].b)
  np.testing.assert_array_equal(fresh["box"], embedded_splits["test"].boxes)
  assert any(name.endswith(".npz") for name in os.listdir(embedded_cache))
  monkeypatch.setenv("GANKD_CACHE", embedded_cache)
  assert embedded.default_cache_dir() == embedded_cache
  config = data.default_data_config()
  dataset = data.build_dataset(config, "eval")
  np.testing.assert_array_equal(dataset.get(3)[1], embedded_splits["test"].get(3)[1])
  config.direction = "BtoA"
  swapped = data.build_dataset(config, "eval")
  np.testing.assert_array_equal(swapped.get(3)[0], dataset.get(3)[1])


def test_default_config_builds_flipped_grey_to_photo_at_64(embedded_splits, embedded_cache,
                                                          monkeypatch):
  """What the defaults do: the embedded set, A = the photo's luminance, 64x64 without resize or
  crop, train examples flipped at random (both ways occur), eval examples never."""
  monkeypatch.setenv("GANKD_CACHE", embedded_cache)
  config = data.default_data_config()
  assert isinstance(config, ml_collections.ConfigDict)
  train, test = data.build_dataset(config, "train"), data.build_dataset(config, "eval")
  assert isinstance(train, embedded.EmbeddedPhotoPairs) and train.image_shape == (64, 64, 3)
  assert config.name == "embedded_grey2photo" and train.task == "grey2photo"
  np.testing.assert_array_equal(train.a, embedded_splits["train"].a)
  grey, photo = (unit(x) for x in train.get(7))
  flips = set()
  for seed in range(16):
    a, b = train.example(7, np.random.default_rng(seed))
    flipped = not np.allclose(a, grey, atol=1e-6)
    np.testing.assert_allclose(a, grey[:, ::-1] if flipped else grey, atol=1e-6)
    np.testing.assert_allclose(b, photo[:, ::-1] if flipped else photo, atol=1e-6)
    flips.add(flipped)
  assert flips == {False, True}
  for seed in range(4):
    np.testing.assert_allclose(test.example(3, np.random.default_rng(seed))[1],
                               unit(test.get(3)[1]), atol=1e-6)
  assert config.path is None and config.eval_split is None
  config.path = "/data/edges2shoes"  # typed None placeholders accept strings
  config.load_size = 286
