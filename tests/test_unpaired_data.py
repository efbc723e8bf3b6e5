"""Tests for the unpaired (CycleGAN) data layer: folders, TFDS (faked), the embedded default,
the per-domain transforms, evaluation masks, the holdout, preflight's folder rule and bad input."""
from __future__ import annotations

import os
import sys
import types

import ml_collections
import numpy as np
import pytest
from PIL import Image

from gankd_jax import data, preflight
from gankd_jax.data import images, paired, pipeline, unpaired

SIZE = 12  # folder images are SIZE x SIZE, so eval at crop_size=SIZE is resize-free


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
  """Image-check caches and the embedded arrays of this test go to its own tmp dir."""
  monkeypatch.setenv("GANKD_CACHE", str(tmp_path / "cache"))


def coded_image(domain: str, index: int, size: int = SIZE) -> np.ndarray:
  """An asymmetric image whose pixel (0, 0) names its domain and index (lossless as PNG)."""
  rng = np.random.default_rng((ord(domain), index))
  image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
  image[0, 0] = (index, ord(domain), 7)
  return image


def write_domain(folder, domain: str, count: int, size: int = SIZE) -> list[np.ndarray]:
  folder.mkdir(parents=True, exist_ok=True)
  written = []
  for i in range(count):
    image = coded_image(domain, i, size)
    Image.fromarray(image).save(str(folder / f"{i:03d}.png"))
    written.append(image)
  return written


def cycle_folder(root, counts=None) -> str:
  """trainA 5, trainB 7, testA 3, testB 4 coded images (counts overrides {folder: count})."""
  counts = counts or {"trainA": 5, "trainB": 7, "testA": 3, "testB": 4}
  for name, count in counts.items():
    write_domain(root / name, name[-1], count)
  return str(root)


def folder_config(root, **overrides) -> ml_collections.ConfigDict:
  config = data.unpaired_data_config()
  config.name = unpaired.FOLDER_NAME
  config.path = root
  config.crop_size = SIZE
  config.num_threads = 2
  config.update(overrides)
  return config


def unit(image):
  return images.to_unit_range(image)


def code_of(example_image) -> tuple[int, int]:
  """(index, domain char) read back from a resize-free, unflipped [-1, 1] image."""
  pixel = np.rint((example_image[0, 0] + 1.0) * 127.5).astype(int)
  return int(pixel[0]), int(pixel[1])


def one_line_error(match, build):
  with pytest.raises(ValueError, match=match) as info:
    build()
  assert "\n" not in str(info.value)
  return str(info.value)


# ----------------------------------------------------------------------------- formats
def test_config_defaults_and_registration():
  config = data.unpaired_data_config()
  assert config.name == "embedded_unpaired" and config.crop_size == 64 and config.flip
  assert config.path is None and config.load_size is None and config.eval_split is None
  assert config.tfds_name == "horse2zebra" and 0 < config.holdout_fraction < 1
  assert set(unpaired.DATASET_NAMES) <= set(data.DATASET_NAMES)
  assert unpaired.default_load_size(256) == 286 and unpaired.default_load_size(64) == 72
  config.path = "/data/horse2zebra"  # typed None placeholders accept their types
  config.load_size = 80


def test_formats_and_shapes(tmp_path):
  root = cycle_folder(tmp_path)
  train = data.build_dataset(folder_config(root, crop_size=8), "train")
  assert train.num_examples == 7 and train.image_shape == (8, 8, 3)  # max(|A|, |B|)
  assert train.load_size == unpaired.default_load_size(8) == 9
  example = train.example(6, np.random.default_rng(0))
  assert set(example) == {"A", "B"}
  for image in example.values():
    assert image.shape == (8, 8, 3) and image.dtype == np.float32
    assert -1.0 <= image.min() and image.max() <= 1.0
  evaluation = data.build_dataset(folder_config(root, crop_size=8), "eval")
  assert evaluation.image_shape == (8, 8, 3)
  example = evaluation.example(0)
  assert set(example) == {"A", "B", "mask_A", "mask_B"}
  assert example["A"].shape == (8, 8, 3) and example["A"].dtype == np.float32
  assert example["mask_A"].dtype == np.float32 and example["mask_A"].shape == ()
  with pytest.raises(IndexError):
    train.example(7, np.random.default_rng(0))


def test_train_example_follows_the_draw_order(tmp_path):
  """A = trainA[index % |A|]; then B's index, A's crop/flip, B's crop/flip from one generator."""
  root = cycle_folder(tmp_path)
  dataset = data.build_dataset(folder_config(root, load_size=15), "train")
  raw_a = [coded_image("A", i) for i in range(5)]
  raw_b = [coded_image("B", i) for i in range(7)]
  drawn = set()
  for seed in range(10):
    index = 5 + seed % 2  # past |A|: wraps to A[0], A[1]
    got = dataset.example(index, np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    b_index = int(rng.integers(0, 7))
    drawn.add(b_index)
    for key, raw in (("A", raw_a[index % 5]), ("B", raw_b[b_index])):
      aug = paired.sample_augmentation(rng, 15, SIZE, True)
      expected = paired.apply_augmentation(raw, aug, 15, SIZE)
      np.testing.assert_array_equal(got[key], unit(expected))
  assert len(drawn) > 3  # B's index really comes from the generator
  # No rng: B by index (serial), resize only, A and B untouched at SIZE.
  plain = dataset.example(6)
  assert code_of(plain["A"]) == (1, ord("A")) and code_of(plain["B"]) == (6, ord("B"))


def test_a_and_b_get_independent_crops_and_flips(tmp_path):
  """The same picture in trainA and trainB: any difference comes from separate augmentations."""
  picture = coded_image("X", 0, 16)
  for name in ("trainA", "trainB"):
    (tmp_path / name).mkdir()
    Image.fromarray(picture).save(str(tmp_path / name / "0.png"))
  dataset = data.build_dataset(folder_config(str(tmp_path), crop_size=16, load_size=20), "train")
  resized = images.resize_bicubic(picture, 20, 20)
  crops = {unit(c).tobytes() for top in range(5) for left in range(5)
           for c in (resized[top:top + 16, left:left + 16],
                     resized[top:top + 16, left:left + 16][:, ::-1])}
  differ = 0
  for seed in range(12):
    example = dataset.example(0, np.random.default_rng(seed))
    assert example["A"].tobytes() in crops and example["B"].tobytes() in crops
    differ += not np.array_equal(example["A"], example["B"])
  assert differ >= 10  # 1 in 50 chance per example that both draws coincide


def test_batches_are_deterministic_and_independent_of_process_count(tmp_path):
  root = cycle_folder(tmp_path)
  dataset = data.build_dataset(folder_config(root, load_size=14), "train")
  with data.GlobalBatchIterator(dataset, 4, seed=3, num_threads=2) as iterator:
    batches = [next(iterator) for _ in range(3)]  # 12 stream elements: crosses an epoch (7)
  stream = np.concatenate([pipeline.epoch_permutation(7, 3, e) for e in range(2)])
  for step, batch in enumerate(batches):
    assert set(batch) == {"A", "B"} and batch["A"].shape == (4, SIZE, SIZE, 3)
    assert batch["B"].dtype == np.float32
    for j in range(4):
      expected = dataset.example(int(stream[step * 4 + j]), pipeline.augmentation_rng(3, step, j))
      np.testing.assert_array_equal(batch["A"][j], expected["A"])
      np.testing.assert_array_equal(batch["B"][j], expected["B"])
  iterators = [data.GlobalBatchIterator(dataset, 4, seed=3, process_index=p, process_count=2,
                                        num_threads=1, prefetch=0) for p in range(2)]
  for step in range(3):
    local = [next(iterator) for iterator in iterators]
    for key in ("A", "B"):
      np.testing.assert_array_equal(np.concatenate([x[key] for x in local]), batches[step][key])
  for iterator in iterators:
    iterator.close()


# ----------------------------------------------------------------------------- evaluation
def test_eval_masks_and_domain_sizes(tmp_path):
  root = cycle_folder(tmp_path)
  dataset = data.build_dataset(folder_config(root), "eval")  # testA 3, testB 4
  assert dataset.domain_sizes == {"A": 3, "B": 4} and dataset.num_examples == 4
  for index in range(4):
    example = dataset.example(index, np.random.default_rng(index))  # rng ignored
    assert code_of(example["A"]) == (index % 3, ord("A"))
    assert code_of(example["B"]) == (index, ord("B"))
    np.testing.assert_array_equal(example["A"], unit(coded_image("A", index % 3)))
    assert example["mask_A"] == np.float32(index < 3) and example["mask_B"] == 1.0
  batches = list(data.eval_batches(dataset, 2, num_threads=1))
  mask_a = np.concatenate([b["mask_A"] for b in batches])
  assert mask_a.dtype == np.float32 and mask_a.tolist() == [1, 1, 1, 0]
  assert np.concatenate([b["mask_B"] for b in batches]).tolist() == [1, 1, 1, 1]
  # Explicit splits and val/.
  assert data.build_dataset(folder_config(root), "test").domain_sizes == {"A": 3, "B": 4}
  one_line_error(r"no valA/ folder", lambda: data.build_dataset(folder_config(root), "val"))
  write_domain(tmp_path / "valA", "A", 2)
  write_domain(tmp_path / "valB", "B", 1)
  config = folder_config(root, eval_split="val")
  assert data.build_dataset(config, "eval").domain_sizes == {"A": 2, "B": 1}
  assert data.build_dataset(folder_config(root), "eval").domain_sizes == {"A": 3, "B": 4}


def test_eval_resizes_to_crop_size(tmp_path):
  root = cycle_folder(tmp_path)
  example = data.build_dataset(folder_config(root, crop_size=8), "eval").example(1)
  expected = images.resize_bicubic(coded_image("B", 1), 8, 8)
  np.testing.assert_array_equal(example["B"], unit(expected))


def test_holdout_is_disjoint_from_training_and_fixed(tmp_path):
  root = cycle_folder(tmp_path, {"trainA": 10, "trainB": 7})  # no test folders needed
  config = folder_config(root, eval_split="holdout", holdout_fraction=0.3)
  train = data.build_dataset(config, "train")
  held = data.build_dataset(config, "eval")
  assert held.domain_sizes == {"A": 3, "B": 2} and train.domain_sizes == {"A": 7, "B": 5}
  assert train.num_examples == 7
  for name, count in (("A", 10), ("B", 7)):
    trained = {code_of(train.example(i)[name])[0] for i in range(train.domain_sizes[name])}
    heldout = {code_of(held.example(i)[name])[0] for i in range(held.domain_sizes[name])}
    assert not trained & heldout and trained | heldout == set(range(count))
  again = data.build_dataset(config, "eval")
  np.testing.assert_array_equal(again.domains["A"].indices, held.domains["A"].indices)
  # Training B draws only from the kept images.
  kept_b = {int(train.domains["B"].get(i)[0, 0, 0]) for i in range(5)}
  plain = data.build_dataset(folder_config(root, eval_split="holdout", holdout_fraction=0.3,
                                           load_size=SIZE, flip=False), "train")
  drawn = {code_of(plain.example(0, np.random.default_rng(seed))["B"])[0] for seed in range(20)}
  assert drawn <= kept_b and len(drawn) > 2
  one_line_error("holdout_fraction", lambda: data.build_dataset(
      folder_config(root, eval_split="holdout", holdout_fraction=1.0), "train"))
  one_line_error("eval_split", lambda: data.build_dataset(
      folder_config(root, eval_split="validation"), "eval"))


# ----------------------------------------------------------------------------- bad input
def test_folder_without_train_domains(tmp_path):
  write_domain(tmp_path / "trainA", "A", 2)
  message = one_line_error("not a CycleGAN folder", lambda: data.build_dataset(
      folder_config(str(tmp_path)), "train"))
  assert str(tmp_path) in message and "no trainB/ folder" in message
  one_line_error("data.path is not set", lambda: data.build_dataset(folder_config(None), "train"))
  one_line_error("does not exist", lambda: data.build_dataset(
      folder_config(str(tmp_path / "nope")), "train"))
  write_domain(tmp_path / "trainB", "B", 2)
  message = one_line_error("no testA/ folder", lambda: data.build_dataset(
      folder_config(str(tmp_path)), "eval"))
  assert "data.eval_split=holdout" in message


def test_empty_domain_folder(tmp_path):
  write_domain(tmp_path / "trainA", "A", 2)
  (tmp_path / "trainB").mkdir()
  (tmp_path / "trainB" / "notes.txt").write_text("not an image")
  message = one_line_error("no image files", lambda: data.build_dataset(
      folder_config(str(tmp_path)), "train"))
  assert os.path.join(str(tmp_path), "trainB") in message


def test_mixed_sizes_and_modes_are_converted(tmp_path):
  (tmp_path / "trainA").mkdir()
  (tmp_path / "trainB").mkdir()
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8), "L").save(
      str(tmp_path / "trainA" / "grey.png"))
  Image.fromarray(rng.integers(0, 256, (9, 14, 4), dtype=np.uint8), "RGBA").save(
      str(tmp_path / "trainA" / "rgba.png"))
  Image.fromarray(rng.integers(0, 256, (40, 17, 3), dtype=np.uint8)).convert("P").save(
      str(tmp_path / "trainB" / "palette.png"))
  Image.fromarray(rng.integers(0, 256, (13, 13, 3), dtype=np.uint8)).save(
      str(tmp_path / "trainB" / "photo.jpg"))
  train = data.build_dataset(folder_config(str(tmp_path), crop_size=8), "train")
  evaluation = data.build_dataset(folder_config(str(tmp_path), crop_size=8, eval_split="holdout",
                                                holdout_fraction=0.5), "eval")
  assert train.num_examples == 2 and evaluation.domain_sizes == {"A": 1, "B": 1}
  for seed in range(4):
    for example in (train.example(seed % 2, np.random.default_rng(seed)), train.example(seed % 2),
                    evaluation.example(0)):
      assert example["A"].shape == example["B"].shape == (8, 8, 3)
      assert example["A"].dtype == example["B"].dtype == np.float32
  grey = images.decode_rgb(str(tmp_path / "trainA" / "grey.png"))
  assert grey.shape == (20, 30, 3) and np.array_equal(grey[..., 0], grey[..., 2])


def test_truncated_file_is_refused_up_front(tmp_path):
  root = cycle_folder(tmp_path)
  bad = os.path.join(root, "testB", "002.png")
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(bad)
  with open(bad, "rb") as stream:
    head = stream.read(400)
  with open(bad, "wb") as stream:
    stream.write(head)
  config = folder_config(root)
  assert bad in one_line_error("cannot decode image file", lambda: preflight.check_data_files(
      config))
  assert isinstance(data.build_dataset(config, "train"), unpaired.UnpairedTrainDataset)


# ----------------------------------------------------------------------------- preflight
def run_config(data_config) -> ml_collections.ConfigDict:
  """The unpaired method's default config (configs/omgd_cycle.py) on `data_config`."""
  from configs import omgd_cycle
  config = omgd_cycle.get_config()
  config.data = data_config
  return config


def test_data_path_selects_the_folder_source(tmp_path):
  root = cycle_folder(tmp_path / "horses")
  config = run_config(data.unpaired_data_config())
  config.data.path = root
  config.data.crop_size = SIZE
  notes = preflight.check(config)
  assert config.data.name == "cycle_gan_folder" and "cycle_gan_folder" in notes[0]
  assert data.build_dataset(config.data, "train").domains["A"].files[0].startswith(root)
  config = run_config(data.unpaired_data_config())
  assert preflight.check(config) == [] and config.data.name == "embedded_unpaired"
  config.data.update({"name": "cycle_gan", "path": root})
  message = one_line_error("reads TFDS", lambda: preflight.check(config))
  assert "--config.data.name=cycle_gan_folder" in message


# ----------------------------------------------------------------------------- TFDS
def test_tfds_source_with_a_fake_tfds(monkeypatch):
  calls = []
  sizes = {"trainA": 3, "trainB": 5, "testA": 2, "testB": 1}

  def data_source(name, split, data_dir=None, download=True):
    calls.append((name, split, data_dir, download))
    grey = split == "trainB"  # a grey split: converted to RGB
    return [{"image": (coded_image(split[-1], i)[..., :1] if grey else coded_image(split[-1], i)),
             "label": 0} for i in range(sizes[split])]

  monkeypatch.setitem(sys.modules, "tensorflow_datasets",
                      types.SimpleNamespace(data_source=data_source))
  config = data.unpaired_data_config()
  config.update({"name": "cycle_gan", "data_dir": "/tfds", "crop_size": SIZE})
  train = data.build_dataset(config, "train")
  evaluation = data.build_dataset(config, "eval")
  assert train.num_examples == 5 and evaluation.domain_sizes == {"A": 2, "B": 1}
  assert [c[:3] for c in calls] == [("cycle_gan/horse2zebra", s, "/tfds")
                                    for s in ("trainA", "trainB", "testA", "testB")]
  assert train.example(1)["B"].shape == (SIZE, SIZE, 3)
  np.testing.assert_array_equal(evaluation.example(1)["A"], unit(coded_image("A", 1)))
  one_line_error("no val split", lambda: data.build_dataset(config, "val"))

  def unavailable(name, split, data_dir=None, download=True):
    raise FileNotFoundError(f"{name} not found\nlong traceback text")

  monkeypatch.setitem(sys.modules, "tensorflow_datasets",
                      types.SimpleNamespace(data_source=unavailable))
  message = one_line_error("cycle_gan/horse2zebra' split 'trainA' is not available",
                           lambda: data.build_dataset(config, "train"))
  assert "tfds build cycle_gan/horse2zebra" in message


# ----------------------------------------------------------------------------- embedded
@pytest.fixture(scope="module")
def embedded_arrays():
  return {split: unpaired.build_embedded(split, 32) for split in ("train", "test")}


def test_embedded_default_builds_and_is_cached(tmp_path, embedded_arrays):
  config = data.unpaired_data_config()
  config.crop_size = 32
  train = data.build_dataset(config, "train")
  evaluation = data.build_dataset(config, "eval")
  sizes = {split: {name: len(embedded_arrays[split][name]) for name in "AB"}
           for split in ("train", "test")}
  assert train.domain_sizes == sizes["train"] and evaluation.domain_sizes == sizes["test"]
  assert min(sizes["train"].values()) > 700 and min(sizes["test"].values()) > 170
  assert train.image_shape == (32, 32, 3) and train.load_size == 36
  example = train.example(0, np.random.default_rng(0))
  assert example["A"].shape == example["B"].shape == (32, 32, 3)
  for split in ("train", "test"):  # deterministic: the cached arrays equal a fresh build
    cached = unpaired.load_embedded(split, 32)
    for key in unpaired.EMBEDDED_KEYS:
      np.testing.assert_array_equal(cached[key], embedded_arrays[split][key])
  assert any(name.startswith("embedded_unpaired_") for name in os.listdir(tmp_path / "cache"))
  one_line_error("no val split", lambda: data.build_dataset(config, "val"))
  config.eval_split = "holdout"
  assert data.build_dataset(config, "eval").domain_sizes["A"] == round(0.1 * sizes["train"]["A"])


def test_embedded_domains_are_disjoint_and_differ(embedded_arrays):
  ids = {(split, name): set(embedded_arrays[split][f"digit_{name}"].tolist())
         for split in ("train", "test") for name in "AB"}
  keys = list(ids)
  for i, first in enumerate(keys):  # no digit image in two places: no A/B pairs, no leakage
    for second in keys[i + 1:]:
      assert not ids[first] & ids[second], (first, second)
  for split in ("train", "test"):
    for name in "AB":  # every class in every part
      assert set(embedded_arrays[split][f"labels_{name}"].tolist()) == set(range(10))
  a, b = embedded_arrays["train"]["A"], embedded_arrays["train"]["B"]
  assert np.array_equal(a[..., 0], a[..., 2])  # A grey
  means_a, means_b = a.mean(axis=(0, 1, 2)), b.mean(axis=(0, 1, 2))
  assert means_b[0] - means_b[2] > 30 and abs(means_a[0] - means_a[2]) < 1e-6  # B amber/blue
  assert means_b.mean() - means_a.mean() > 10  # thicker strokes, lit ground
  # Strokes of B are thicker: more pixels near the ink colour than A has near white.
  assert (b[..., 0] > 200).mean() > 1.3 * (a[..., 0] > 200).mean()


def test_digit_classifier_still_reads_both_domains(embedded_arrays):
  """Why B is light on dark (module doc): the FID feature network still recognises B's digits."""
  from gankd_jax.metrics import digit_classifier
  variables = digit_classifier.load_weights()
  test = embedded_arrays["test"]
  for name in "AB":
    logits = digit_classifier.apply(variables, unit(test[name]))["logits"]
    accuracy = np.mean(np.argmax(np.asarray(logits), -1) == test[f"labels_{name}"])
    assert accuracy > 0.9, (name, accuracy)


# ----------------------------------------------------------------------------- train + eval reference
def test_train_eval_split_is_the_training_images_for_evaluation(tmp_path):
  root = cycle_folder(tmp_path)  # trainA 5, trainB 7
  dataset = data.build_dataset(folder_config(root), "train_eval")
  assert dataset.domain_sizes == {"A": 5, "B": 7} and dataset.num_examples == 7
  for index in range(7):
    example = dataset.example(index)
    np.testing.assert_array_equal(example["B"], unit(coded_image("B", index)))
    assert example["mask_A"] == np.float32(index < 5)
  # With a holdout: the kept part only.
  held_config = folder_config(root, eval_split="holdout", holdout_fraction=0.3)
  kept = data.build_dataset(held_config, "train_eval")
  assert kept.domain_sizes == data.build_dataset(held_config, "train").domain_sizes
  one_line_error("needs unpaired data", lambda: data.build_dataset(
      ml_collections.ConfigDict({"name": "digits", "crop_size": 32}), "train_eval"))


class _Identity:
  """A one-role method: G(A) = A, compared with real B; each real set counted by its mask."""
  generator_roles = ("g",)

  def generate(self, state, batch, frozen):
    return {"g": batch["A"]}

  def paired_targets(self, batch, outputs):
    return {}

  def real_images(self, batch):
    return {"A": batch["A"], "B": batch["B"]}

  def compared_with(self, role):
    return "B"

  def counted_by(self, name):
    return "mask_B" if name == "B" else "mask_A"

  def sample_columns(self, batch, outputs):
    return {"A": batch["A"]}


def test_a_train_plus_eval_reference_side_holds_each_real_image_once(tmp_path):
  """fid with reference=train+eval: the real side is the statistics of trainB and testB together
  (as the reference's real_stat files), each image once; reference=eval: testB's only."""
  import jax
  from gankd_jax import evaluation
  from gankd_jax.metrics import fid
  root = cycle_folder(tmp_path, {"trainA": 5, "trainB": 7, "testA": 3, "testB": 4})
  config = folder_config(root, crop_size=32)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:2]), ("data",))
  declared = {"fid": {"type": "fid", "features": "digit_classifier", "reference": "train+eval"},
              "fid_eval": {"type": "fid", "features": "digit_classifier"}}
  evaluators = evaluation.build(ml_collections.ConfigDict({"evaluators": declared}), mesh, 4)
  assert evaluation.wants_training_reals(evaluators.distribution_specs())
  method, eval_data = _Identity(), data.build_dataset(config, "eval")
  training = data.build_dataset(config, "train_eval")
  with pytest.raises(ValueError, match="fid: reference=train\\+eval"):
    evaluation.evaluation_pass(method, None, {}, eval_data, mesh, evaluators, batch_size=4)
  result = evaluation.evaluation_pass(method, None, {}, eval_data, mesh, evaluators,
                                      batch_size=4, training_reals=training)
  extractor = evaluators.distribution["fid"].network.extractor

  def stats_of(images_b):  # Directly: features of each image, 4 at a time.
    stats = fid.GaussianStats(evaluators.distribution["fid"].network_dim)
    batch = np.stack([unit(images.resize_bicubic(im, 32, 32)) for im in images_b])
    for start in range(0, len(batch), 4):
      stats.update(extractor(batch[start:start + 4])["features"])
    return stats.result()

  both = stats_of([coded_image("B", i) for i in range(7)] + [coded_image("B", i) for i in range(4)])
  test_only = stats_of([coded_image("B", i) for i in range(4)])
  for (mu, sigma), name in ((both, "fid"), (test_only, "fid_eval")):
    stored = evaluators.distribution[name].references["B"]
    np.testing.assert_allclose(stored["mu"], mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stored["sigma"], sigma, rtol=1e-4, atol=1e-4)
  assert np.isfinite(result.results["g"]["fid"])
  # Once known, the real side is not read again: a second pass needs no training images.
  evaluation.evaluation_pass(method, None, {}, eval_data, mesh, evaluators, batch_size=4)
