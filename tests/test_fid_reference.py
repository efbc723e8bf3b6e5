"""FID agreement with pytorch-fid: mu, sigma and the FID of two image folders within 1e-3.

The pytorch-fid numbers in fixtures/fid_reference.npz come from fixtures/make_eval_fixtures.py,
which runs `pytorch_fid.fid_score.compute_statistics_of_path` and `calculate_frechet_distance`
on two PNG folders (fixtures/seeded_weights.fid_image_sets: one of 6 RGB images, one of 5 images
of mixed sizes and modes, which pytorch-fid reads with batch size 1) with pytorch-fid's
InceptionV3 on the seeded weights used here. With so few samples both covariances are singular,
so this also checks the Frechet distance on rank-deficient products: pytorch-fid's scipy `sqrtm`
(finite there with SciPy 1.17, so no eps offset) against our eigenvalue form of tr(sqrtm(S1 S2)).
"""
import os
import sys

import numpy as np
import pytest

from gankd_jax import fid as fid_cli
from gankd_jax.metrics import fid
from gankd_jax.weights import download
from gankd_jax.weights.torch_pth import save_state_dict

sys.path.insert(0, os.path.dirname(__file__))
from test_inception import _fixture, inception_state_dict  # noqa: E402
from seeded_weights import fid_image_sets, write_image_sets  # noqa: E402


@pytest.fixture(scope="module")
def weights_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("w") / "pt_inception-seeded.pth"
  save_state_dict(path, inception_state_dict())
  return str(path)


def _relative_error(actual, expected):
  return float(np.abs(np.asarray(actual, np.float64) - expected).max() / np.abs(expected).max())


def test_statistics_and_fid_agree_with_pytorch_fid(tmp_path, weights_path, monkeypatch):
  monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
  reference = _fixture("fid_reference.npz")
  folders = write_image_sets(str(tmp_path), fid_image_sets())
  extractor = fid_cli.inception_extractor(weights_path, batch_size=8)  # Sharded over 8 devices.
  stats = {}
  for name in ("a", "b"):
    mu, sigma = fid_cli.folder_statistics(fid_cli.validate_path(folders[name]), extractor)
    stats[name] = (mu, sigma)
    assert _relative_error(mu, reference[f"mu_{name}"]) < 1e-3
    assert _relative_error(np.diag(sigma), reference[f"sigma_{name}_diag"]) < 1e-3
    assert _relative_error(sigma[:8, :64], reference[f"sigma_{name}_block"]) < 1e-3
    np.testing.assert_allclose(np.trace(sigma), reference[f"sigma_{name}_trace"], rtol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(sigma), reference[f"sigma_{name}_fro"], rtol=1e-3)
  value = fid.frechet_distance(*stats["a"], *stats["b"])
  np.testing.assert_allclose(value, reference["fid"], rtol=1e-3)
