"""IS, KID, precision/recall, VoL and latency: known cases, streaming == one-shot, 8 devices == 1."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback
from scipy import ndimage

from gankd_jax import parallel
from gankd_jax.metrics import inception_score, kid, latency, precision_recall, sharpness


# ------------------------------------------------------------------------- Inception Score
def test_is_of_uniform_logits_is_one():
  mean, std = inception_score.inception_score(np.zeros((50, 1008)))
  assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_is_of_confident_evenly_spread_logits_is_the_class_count():
  labels = np.arange(200) % 10  # Every split of 20 holds each of 10 classes twice.
  logits = 60.0 * np.eye(1008)[labels]
  mean, _ = inception_score.inception_score(logits)
  assert mean == pytest.approx(10.0, rel=1e-6)
  one_class = 60.0 * np.eye(1008)[np.zeros(200, int)]  # Confident but one class: IS 1.
  assert inception_score.inception_score(one_class)[0] == pytest.approx(1.0, rel=1e-6)


def test_streaming_is_equals_one_shot():
  logits = np.random.default_rng(0).standard_normal((137, 1008)) * 3
  stream = inception_score.InceptionScore(137)
  start = 0
  for size in (1, 16, 40, 7, 73):
    chunk = logits[start:start + size]
    stream.update(np.concatenate([chunk, np.ones((2, 1008))]), np.r_[np.ones(size), 0, 0].astype(bool))
    start += size
  np.testing.assert_allclose(stream.result(), inception_score.inception_score(logits), rtol=1e-10)
  with pytest.raises(ValueError, match="more than the declared"):
    stream.update(logits[:1])
  short = inception_score.InceptionScore(20)
  short.update(logits[:5])
  with pytest.raises(ValueError, match="declared 20 samples, got 5"):
    short.result()


# ------------------------------------------------------------------------- KID
def _brute_force_mmd2(x, y):
  d = x.shape[1]
  k = lambda a, b: (a @ b.T / d + 1) ** 3
  m = len(x)
  kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
  return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
          - 2 * kxy.mean())


def test_kid_one_full_subset_equals_the_unbiased_formula():
  rng = np.random.default_rng(1)
  x, y = rng.standard_normal((30, 8)), rng.standard_normal((30, 8)) + 0.5
  mean, std = kid.kernel_inception_distance(x, y, num_subsets=1, subset_size=30)
  assert mean == pytest.approx(_brute_force_mmd2(y, x), rel=1e-5) and std == 0.0


def test_kid_is_unbiased_on_identical_distributions():
  """Same distribution: the estimator averages to 0 (the biased V-statistic stays positive)."""
  rng = np.random.default_rng(2)
  values, biased = [], []
  for _ in range(300):
    x, y = rng.standard_normal((20, 4)), rng.standard_normal((20, 4))
    values.append(kid.unbiased_mmd2(x, y))
    k = lambda a, b: (a @ b.T / 4 + 1) ** 3
    biased.append(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())
  sem = np.std(values) / np.sqrt(len(values))
  assert abs(np.mean(values)) < 3 * sem
  assert np.mean(biased) > 10 * sem
  different = kid.kernel_inception_distance(rng.standard_normal((100, 4)),
                                            rng.standard_normal((100, 4)) + 1.0, num_subsets=10)
  assert different[0] > 20 * sem


def test_feature_sample_streams_and_bounds_memory():
  rng = np.random.default_rng(3)
  rows = rng.standard_normal((50, 6)).astype(np.float32)
  sample = kid.FeatureSample(6, capacity=100)
  for start in range(0, 50, 8):
    sample.update(rows[start:start + 8])
  np.testing.assert_array_equal(sample.rows, rows)  # Under capacity: everything, in order.
  small = kid.FeatureSample(6, capacity=10, seed=0)
  small.update(rows)
  assert small.rows.shape == (10, 6) and small.seen == 50
  assert all(any(np.array_equal(r, s) for s in rows) for r in small.rows)


# ------------------------------------------------------------------------- precision / recall
def _brute_force_pr(real, fake, k=3):
  def radii(x):
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    return np.sort(d, axis=1)[:, k]

  def cover(q, r, rad):
    return np.mean((((q[:, None] - r[None]) ** 2).sum(-1) <= rad[None]).any(1))

  return cover(fake, real, radii(real)), cover(real, fake, radii(fake))


def test_precision_recall_on_toy_point_clouds():
  grid = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0)), -1).reshape(-1, 2)
  left_half = grid[grid[:, 0] < 5]
  # Fakes cover only half of the real manifold: precision 1, recall about a half.
  result = precision_recall.precision_recall(grid, left_half)
  assert result["precision"] == 1.0 and 0.4 <= result["recall"] <= 0.7
  far = precision_recall.precision_recall(grid, grid + 100.0)
  assert far == {"precision": 0.0, "recall": 0.0}
  assert precision_recall.precision_recall(grid, grid.copy()) == {"precision": 1.0, "recall": 1.0}
  rng = np.random.default_rng(4)
  real, fake = rng.standard_normal((70, 5)), rng.standard_normal((50, 5)) * 1.5 + 0.3
  expected = _brute_force_pr(real, fake)
  result = precision_recall.precision_recall(real, fake, block_rows=16)
  assert (result["precision"], result["recall"]) == pytest.approx(expected)
  with pytest.raises(ValueError, match="more than 3 samples"):
    precision_recall.precision_recall(real[:3], fake)


def test_precision_recall_sharded_equals_single_device():
  rng = np.random.default_rng(5)
  real, fake = rng.standard_normal((61, 16)), rng.standard_normal((45, 16)) * 1.2
  eight = precision_recall.precision_recall(real, fake, mesh=parallel.make_mesh(8), block_rows=16)
  one = precision_recall.precision_recall(real, fake, mesh=parallel.make_mesh(1), block_rows=16)
  assert len(jax.devices()) == 8 and eight == one
  np.testing.assert_array_equal(
      precision_recall.manifold_radii(real, mesh=parallel.make_mesh(8), block_rows=8),
      precision_recall.manifold_radii(real, mesh=parallel.make_mesh(1), block_rows=8))


# ------------------------------------------------------------------------- sharpness
def test_variance_of_laplacian_matches_opencv_convention():
  rng = np.random.default_rng(6)
  images = rng.uniform(-1, 1, (3, 12, 9, 3)).astype(np.float32)
  grey = ((images.astype(np.float64) + 1) * 127.5) @ np.array([0.299, 0.587, 0.114])
  # scipy's 'mirror' border is OpenCV's BORDER_REFLECT_101; laplace is the 5-point stencil.
  expected = [ndimage.laplace(g, mode="mirror").var() for g in grey]
  np.testing.assert_allclose(sharpness.variance_of_laplacian(jnp.asarray(images)), expected, rtol=1e-4)
  flat = jnp.zeros((1, 8, 8, 1))
  assert float(sharpness.variance_of_laplacian(flat)[0]) == 0.0
  blurred = ndimage.uniform_filter(images, size=(1, 3, 3, 1))
  assert np.all(sharpness.variance_of_laplacian(jnp.asarray(blurred))
                < sharpness.variance_of_laplacian(jnp.asarray(images)))
  per_example = sharpness.per_example_metrics({"student": jnp.asarray(images)}, {})
  assert set(per_example) == {"student/vol"} and per_example["student/vol"].shape == (3,)


# ------------------------------------------------------------------------- latency
def test_latency_times_only_the_timed_calls_of_a_compiled_batch_of_one(monkeypatch):
  """A fake clock that only the compiled function advances: warm-up runs are run but not timed,
  each timed run is, and the reported median/min are those of the timed durations."""
  durations = [1000.0, 1000.0] + [0.005, 0.001, 0.003, 0.002, 0.004]  # s: 2 warm-up, 5 timed
  clock = {"now": 0.0, "runs": 0}
  calls = []

  def tick(x):
    clock["now"] += durations[clock["runs"]]  # IndexError (test fails) on an extra run
    clock["runs"] += 1
    return x

  def apply(variables, x):
    calls.append(x.shape)  # Traced once: compiled, then reused.
    x = io_callback(tick, jax.ShapeDtypeStruct(x.shape, x.dtype), x, ordered=True)
    return x * variables["w"]

  monkeypatch.setattr(latency, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
  result = latency.measure_latency(apply, {"w": jnp.ones(())}, (8, 8, 3), warmup=2, iters=5)
  assert calls == [(1, 8, 8, 3)]
  assert clock["runs"] == 7
  assert result == {"median_ms": pytest.approx(3.0), "min_ms": pytest.approx(1.0), "iters": 5}


def test_latency_grows_with_the_work_done():
  """Same function and input shape, a 50x wider matmul (125000x the FLOPs): measured ~200x
  slower here; asserting 10x leaves room for a busy machine (medians, no wall-clock limits).
  The product involves the input: the weights are compile-time constants (gankd_jax/inference.py)
  and a product of weights alone is folded away when compiling."""
  def apply(variables, x):
    w = variables["w"]
    return x * jnp.sum((x[0, 0, 0, 0] * w) @ w)

  def median_ms(n):
    w = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    return latency.measure_latency(apply, {"w": w}, (8, 8, 3), warmup=2, iters=15)["median_ms"]

  cheap, heavy = median_ms(16), median_ms(800)
  assert heavy > 10 * cheap, (cheap, heavy)
