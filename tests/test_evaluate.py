"""Distribution evaluators in the training loop and `python -m gankd_jax.evaluate`.

Inception weights are the seeded ones of test_inception.py (written as a .pth). The pytorch-fid
Frechet distance (a 2048-d scipy sqrtm, most of a minute per call on 2 cores) is tested in
test_fid.py / test_fid_reference.py; here it is replaced by a cheap bound so that three
roles stay fast; the checks here are the plumbing: declared evaluators run, records, skipping.
"""
import json
import os
import sys

import numpy as np
import pytest

from gankd_jax.metrics import distribution, fid
from gankd_jax.weights import download
from gankd_jax.weights.torch_pth import save_state_dict

sys.path.insert(0, os.path.dirname(__file__))
from test_inception import inception_state_dict  # noqa: E402


def cheap_frechet_bound(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """|dmu|^2 + tr S1 + tr S2: an upper bound of the FD without the 2048-d matrix root."""
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "pt_inception-seeded.pth"
    save_state_dict(path, inception_state_dict())
    return str(path)


def _config(workdir_weights, evaluators):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from configs import omgd
    config = omgd.get_config()
    config.num_train_steps = 1
    config.batch_size = 8
    config.log_every = config.eval_every = config.checkpoint_every = 1
    config.eval.max_examples = 10
    config.eval.batch_size = 16  # One evaluation batch.
    config.eval.evaluators = evaluators
    if workdir_weights is not None and "inception_weights" in config.eval:
        config.eval.inception_weights = workdir_weights
    return config


def test_training_loop_runs_declared_distribution_evaluators(tmp_path, weights, monkeypatch):
    from gankd_jax import train
    monkeypatch.setattr(fid, "frechet_distance", cheap_frechet_bound)
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(download.OFFLINE_ENV, "1")
    os.makedirs(tmp_path / "cache")
    os.symlink(weights, tmp_path / "cache" / download.INCEPTION_FID.filename)  # Found in the cache.
    config = _config(None, ("paired", "sharpness", "fid", "inception_score", "kid"))
    train.train_and_evaluate(config, str(tmp_path / "run"))
    records = train.read_evals(str(tmp_path / "run"))
    assert [r["step"] for r in records] == [0, 1]
    for record in records:
        assert "skipped" not in record and record["num_examples"] == 10
        for role in ("teacher_wide", "teacher_deep", "student"):
            metrics = record[role]
            assert {"psnr", "ssim", "vol", "fid", "kid", "is"} <= set(metrics), metrics
            assert np.isfinite(metrics["fid"]) and metrics["fid"] > 0 and metrics["is"] >= 1.0


def test_missing_inception_weights_skip_fid_with_a_note(tmp_path, monkeypatch):
    from gankd_jax import train
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(download.OFFLINE_ENV, "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    config = _config(None, ("paired", "fid"))
    train.train_and_evaluate(config, str(tmp_path / "run"))
    records = train.read_evals(str(tmp_path / "run"))
    assert len(records) == 2
    for record in records:
        assert "fid" not in record["student"] and "psnr" in record["student"]
        (note,) = record["skipped"]
        assert note.startswith("fid skipped:") and download.INCEPTION_FID.filename in note
        assert distribution.WEIGHTS_FLAG in note


def test_unknown_evaluator_is_rejected_before_compute():
    from gankd_jax import metrics
    with pytest.raises(ValueError, match="unknown evaluator 'fidd'; choose from paired, sharpness, fid"):
        metrics.get_evaluators(("paired", "fidd"))
