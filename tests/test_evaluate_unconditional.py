"""`python -m gankd_jax.evaluate` on an unconditional method (Aguinaldo et al., DCGAN on digits).

The same code as for OMGD, through the Method contract only: no target, so no PSNR/SSIM; FID and
KID of each generator's samples against the evaluation split's real images; the student's speed-up
over the teacher it was distilled from. A tiny run (16 px, d 4 / 2, mode mse with the teacher
trained first in the same run: 1 teacher step + 1 student step) is trained once for the module.
Inception weights are the seeded ones of test_inception.py; the 2048-d Frechet distance is the cheap
bound of test_evaluate.py (the real one is tested in test_fid*.py).
"""
import json
import os
import sys

import numpy as np
import pytest

from gankd_jax import evaluate, train
from gankd_jax.methods import aguinaldo

sys.path.insert(0, os.path.dirname(__file__))
from test_aguinaldo import tiny_config  # noqa: E402
from test_evaluate import offline_inception_env  # noqa: E402

NUM_EVALUATED = 4


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  root = tmp_path_factory.mktemp("unconditional")
  with pytest.MonkeyPatch.context() as patch:
    weights = offline_inception_env(patch, root)
    real_batches = []  # What the method was asked for real images (at trace time).
    real_images = aguinaldo.Aguinaldo.real_images
    patch.setattr(aguinaldo.Aguinaldo, "real_images",
                  lambda self, batch: real_batches.append(batch) or real_images(self, batch))
    config = tiny_config("mse", num_train_steps=2, checkpoint_every=1, log_every=1,
                         **{"teacher.num_train_steps": 1, "eval.evaluators.sharpness.every": -1})
    workdir = str(root / "run")
    summary = train.train_and_evaluate(config, workdir)
    record = evaluate.evaluate(workdir, num_samples=NUM_EVALUATED,
                               inception_weights=str(weights), latency_iters=2)
  with open(os.path.join(workdir, evaluate.EVAL_FILE)) as handle:
    written = json.load(handle)
  return {"record": record, "written": written, "summary": summary, "real": real_batches,
          "workdir": workdir}


def test_unconditional_run_is_evaluated_through_the_contract(evaluated):
  record = evaluated["record"]
  assert evaluated["written"] == json.loads(json.dumps(record))
  assert record["method"] == "aguinaldo" and record["step"] == 2
  assert record["num_examples"] == NUM_EVALUATED
  assert [n.split(":")[0] for n in record["skipped"]] == ["precision_recall skipped"]
  assert list(record["roles"]) == ["teacher", "student"]
  networks = evaluated["summary"]["networks"]
  for role, metrics in record["roles"].items():
    assert {"fid", "kid", "vol", "params", "macs", "latency_ms"} <= set(metrics)
    assert not {"psnr", "ssim", "l1"} & set(metrics)  # No target in unconditional data.
    assert np.isfinite(metrics["fid"]) and metrics["fid"] > 0
    assert (metrics["params"], metrics["macs"]) == (networks[role]["params"], networks[role]["macs"])
  ratios = record["student_vs"]["teacher"]
  assert ratios["param_compression"] > 1 and ratios["mac_compression"] > 1
  assert ratios["speedup"] == pytest.approx(
      record["roles"]["teacher"]["latency_ms"] / record["roles"]["student"]["latency_ms"])


def test_fid_reference_is_the_eval_splits_real_images(evaluated):
  # The method gave the batch's real images as the reference; their statistics were saved.
  assert evaluated["real"] and all("image" in batch for batch in evaluated["real"])
  stats = evaluated["record"]["reference_stats"]["inception"]
  assert not stats["cached"] and os.path.isfile(stats["path"])
  described = json.loads(open(stats["path"][:-len(".npz")] + ".json").read())
  assert described["num_examples"] == NUM_EVALUATED and described["features"] == "inception"


def test_grid_and_table(evaluated):
  assert os.path.isfile(os.path.join(evaluated["workdir"], evaluate.GRID_FILE))
  table = evaluate.format_table(evaluated["record"]).splitlines()
  assert "PSNR" not in table[1] and "FID" in table[1]
  assert any(line.startswith("student vs teacher:") for line in table)
