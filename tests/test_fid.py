"""FID: the Frechet distance, streaming statistics, agreement with pytorch-fid, the CLI, weights.

Agreement with pytorch-fid's own numbers is in test_fid_reference.py (its one 2048-d matrix
square root takes most of a minute on 2 cores).
"""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from scipy import linalg

from gankd_jax import parallel
from gankd_jax.metrics import fid
from gankd_jax.metrics.features import FeatureExtractor
from gankd_jax.models import inception
from gankd_jax.weights import download
from gankd_jax.weights.torch_pth import save_state_dict

sys.path.insert(0, os.path.dirname(__file__))
from test_inception import inception_state_dict  # noqa: E402
from seeded_weights import fid_image_sets, write_image_sets  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _random_spd(rng, dim, scale=1.0):
  a = rng.standard_normal((dim, dim))
  return scale * (a @ a.T / dim + 0.1 * np.eye(dim))


# ------------------------------------------------------------------------- Frechet distance
def test_fid_of_a_distribution_with_itself_is_zero():
  rng = np.random.default_rng(0)
  mu, sigma = rng.standard_normal(64), _random_spd(rng, 64)
  assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_fid_matches_closed_forms_on_known_gaussians():
  rng = np.random.default_rng(1)
  # Diagonal covariances: sum (a + b - 2 sqrt(ab)) + |dmu|^2 exactly.
  a, b = rng.uniform(0.5, 2.0, 32), rng.uniform(0.5, 2.0, 32)
  mu1, mu2 = rng.standard_normal(32), rng.standard_normal(32)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
  np.testing.assert_allclose(fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), expected, rtol=1e-10)
  # General SPD: tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2), a symmetric eigenproblem.
  s1, s2 = _random_spd(rng, 48), _random_spd(rng, 48, 3.0)
  w, v = np.linalg.eigh(s1)
  root1 = (v * np.sqrt(w)) @ v.T
  inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
  expected = np.sum((mu1[:1] - mu2[:1]) ** 2) * 0 + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(inner))
  np.testing.assert_allclose(fid.frechet_distance(np.zeros(48), s1, np.zeros(48), s2), expected, rtol=1e-9)


def _pytorch_fid_formula(mu1, sigma1, mu2, sigma2, eps=1e-6):
  """pytorch-fid's calculate_frechet_distance, verbatim in NumPy/SciPy (scipy.linalg.sqrtm)."""
  diff = mu1 - mu2
  covmean = linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  covmean = covmean.real
  return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


@pytest.mark.parametrize("samples,dim", [(400, 64), (5, 40), (30, 128)])
def test_eigenvalue_trace_equals_scipy_sqrtm(samples, dim):
  """Full-rank and rank-deficient (samples <= dim) sample covariances of known Gaussians."""
  rng = np.random.default_rng(samples)
  mix = rng.standard_normal((dim, dim)) / np.sqrt(dim)
  x = rng.standard_normal((samples, dim)) @ mix
  y = rng.standard_normal((samples, dim)) @ (mix + 0.3 * np.eye(dim)) + 0.5
  stats = [(z.mean(0), np.cov(z, rowvar=False)) for z in (x, y)]
  np.testing.assert_allclose(fid.frechet_distance(*stats[0], *stats[1]),
                             _pytorch_fid_formula(*stats[0], *stats[1]), rtol=1e-6)
  np.testing.assert_allclose(fid.frechet_distance(*stats[0], *stats[0]),
                             _pytorch_fid_formula(*stats[0], *stats[0]), atol=1e-6 * dim)


def test_non_finite_statistics_are_an_error():
  sigma = np.eye(3)
  with pytest.raises(ValueError, match="NaN or Inf"):
    fid.frechet_distance(np.array([0.0, np.nan, 0.0]), sigma, np.zeros(3), sigma)


def test_singular_covariances_take_the_eps_path():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((5, 40))  # 5 samples in 40-d: rank-4 covariance.
  mu, sigma = x.mean(0), np.cov(x, rowvar=False)
  value = fid.frechet_distance(mu, sigma, mu + 1.0, sigma)
  assert np.isfinite(value) and abs(value - 40.0) < 0.5


def test_imaginary_component_is_an_error():
  sigma1 = np.array([[1.0, 0.0], [0.0, 1.0]])
  sigma2 = np.array([[-4.0, 0.0], [0.0, 1.0]])  # Not a covariance: sqrtm has 2i on the diagonal.
  with pytest.raises(ValueError, match="imaginary component"):
    fid.frechet_distance(np.zeros(2), sigma1, np.zeros(2), sigma2)


# ------------------------------------------------------------------------- streaming statistics
def test_streaming_statistics_equal_one_shot():
  rng = np.random.default_rng(3)
  x = rng.standard_normal((103, 16)) * 0.01 + 50.0  # Large offset: cancellation-prone.
  stats = fid.GaussianStats(16)
  for start in range(0, 103, 10):
    chunk = x[start:start + 10]
    mask = np.ones(len(chunk), bool)
    padded = np.concatenate([chunk, np.full((3, 16), 1e6)])  # Padding rows masked out.
    stats.update(padded, np.concatenate([mask, np.zeros(3, bool)]))
  assert stats.count == 103
  np.testing.assert_allclose(stats.mean(), x.mean(0), rtol=1e-13)
  np.testing.assert_allclose(stats.covariance(), np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)
  left, right = fid.GaussianStats(16), fid.GaussianStats(16)
  left.update(x[:40])
  right.update(x[40:] + 0.0)
  left.merge(right)
  np.testing.assert_allclose(left.covariance(), np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)
  with pytest.raises(ValueError, match="at least 2 samples"):
    g = fid.GaussianStats(4)
    g.update(np.ones((1, 4)))
    g.covariance()


def test_stats_files_roundtrip_and_bad_files(tmp_path):
  rng = np.random.default_rng(4)
  mu, sigma = rng.standard_normal(8), _random_spd(rng, 8)
  fid.save_stats(str(tmp_path / "s.npz"), mu, sigma)
  with np.load(tmp_path / "s.npz") as f:  # pytorch-fid reads f['mu'][:], f['sigma'][:].
    np.testing.assert_array_equal(f["mu"][:], mu)
    np.testing.assert_array_equal(f["sigma"][:], sigma)
  np.savez(tmp_path / "bad.npz", mu=mu)
  with pytest.raises(ValueError, match="no 'sigma' array"):
    fid.load_stats(str(tmp_path / "bad.npz"))


# ------------------------------------------------------------------------- agreement with pytorch-fid
@pytest.fixture(scope="module")
def weights_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("w") / "pt_inception-seeded.pth"
  save_state_dict(path, inception_state_dict())
  return str(path)


# ------------------------------------------------------------------------- sharding
def test_sharded_features_equal_single_device(weights_path, tmp_path):
  """The same extractor over 8 CPU devices and over 1 gives the same features (75x75 inputs,
  no resize, so the check is cheap; the sharding does not depend on the input size)."""
  variables = inception.load_inception(weights_path, cache_dir=str(tmp_path))
  images = np.random.default_rng(5).uniform(0, 1, (8, 75, 75, 3)).astype(np.float32)
  apply = inception.InceptionV3(resize_input=False).apply
  eight = FeatureExtractor(apply, variables, 8, parallel.make_mesh(8))(images[:7])
  one = FeatureExtractor(apply, variables, 8, parallel.make_mesh(1))(images[:7])
  assert len(jax.devices()) == 8 and eight["pool"].shape == (7, 2048)
  for key in ("pool", "logits"):
    np.testing.assert_allclose(eight[key], one[key], rtol=1e-5, atol=1e-5 * np.abs(one[key]).max())


# ------------------------------------------------------------------------- CLI and bad input
def _cli(*args, env_extra=None, cwd=REPO):
  env = dict(os.environ, JAX_PLATFORMS="cpu", GANKD_OFFLINE="1", **(env_extra or {}))
  return subprocess.run([sys.executable, "-m", "gankd_jax.fid", *args], capture_output=True,
                        text=True, env=env, cwd=cwd, timeout=3600)  # hang guard


def test_cli_from_two_stats_files(tmp_path):
  rng = np.random.default_rng(6)
  mu, sigma = rng.standard_normal(16), _random_spd(rng, 16)
  fid.save_stats(str(tmp_path / "a.npz"), mu, sigma)
  fid.save_stats(str(tmp_path / "b.npz"), mu + 0.5, sigma)
  result = _cli(str(tmp_path / "a.npz"), str(tmp_path / "b.npz"))
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == f"FID: {fid.frechet_distance(mu, sigma, mu + 0.5, sigma)}"


def test_cli_bad_inputs_are_one_line_errors(tmp_path):
  one = tmp_path / "one"
  one.mkdir()
  sets = fid_image_sets()
  write_image_sets(str(tmp_path), {"one": sets["a"][:1], "ok": sets["a"][:3]})
  result = _cli(str(one), str(tmp_path / "ok"))
  assert result.returncode == 2 and "holds 1 image file(s); FID statistics need at least 2" in result.stderr
  (tmp_path / "ok" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
  result = _cli(str(tmp_path / "ok"), str(tmp_path / "ok"))
  assert result.returncode == 2 and "broken.png" in result.stderr
  os.remove(tmp_path / "ok" / "broken.png")
  # No weights anywhere and offline: say which file, which flag, which folder.
  result = _cli(str(tmp_path / "ok"), str(tmp_path / "ok"),
                env_extra={download.CACHE_ENV: str(tmp_path / "empty_cache"), "HOME": str(tmp_path)})
  assert result.returncode == 2
  line = result.stderr.strip().splitlines()[-1]
  assert "pt_inception-2015-12-05-6726825d.pth" in line and "--inception_weights=FILE" in line
  assert str(tmp_path / "empty_cache") in line
  result = _cli("--save_stats", str(tmp_path / "ok"), str(tmp_path / "ok" / "img_00.png"))
  assert result.returncode == 2 and "exists; not overwriting" in result.stderr


# ------------------------------------------------------------------------- download helper
def test_download_verifies_sha256_prefix(tmp_path, monkeypatch):
  monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.delenv(download.OFFLINE_ENV, raising=False)
  payload = tmp_path / "payload.bin"
  payload.write_bytes(b"weights" * 100)
  digest = download.sha256_of(str(payload))
  good = download.KnownFile("test weights", f"test-{digest[:8]}.pth", payload.as_uri(), digest[:8])
  path = download.resolve(good, flag="--w")
  assert path == str(tmp_path / "cache" / good.filename) and open(path, "rb").read() == payload.read_bytes()
  assert download.resolve(good, flag="--w") == path  # Found in the cache the second time.
  bad = download.KnownFile("test weights", "test-00000000.pth", payload.as_uri(), "00000000")
  with pytest.raises(ValueError, match="expected a digest starting with 00000000"):
    download.resolve(bad, flag="--w")
  assert not os.path.exists(tmp_path / "cache" / bad.filename)
  gone = download.KnownFile("test weights", "gone-1234.pth", (tmp_path / "nothing").as_uri(), "1234")
  with pytest.raises(ValueError, match=r"gone-1234\.pth not found \(download from .* failed.*pass --w=FILE"):
    download.resolve(gone, flag="--w")
  with pytest.raises(ValueError, match="--w: no such file"):
    download.resolve(good, str(tmp_path / "missing.pth"), flag="--w")
