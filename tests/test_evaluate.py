"""Distribution evaluators in the training loop, and `python -m gankd_jax.evaluate`.

One tiny OMGD run (32 px, ngf 4, one training step, 10 evaluation examples) is trained once for the
module, with the Inception-based evaluators declared in its config; the evaluate tests read its
checkpoint. Inception weights are the seeded ones of test_inception.py (written as a .pth).

The pytorch-fid Frechet distance (two 2048-d eigendecompositions, 10-50 s per call on 2 busy
cores) is tested against pytorch-fid in test_fid.py / test_fid_reference.py; here it is replaced
by a cheap upper bound so that three roles stay fast: the checks here are the plumbing (declared
evaluators run and are recorded, skipped with a note, eval.json / table / grid, cached reference
statistics, one-line errors).
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from gankd_jax import evaluate, evaluation, train
from gankd_jax.methods import omgd
from gankd_jax.metrics import fid
from gankd_jax.weights import download
from gankd_jax.weights.torch_pth import save_state_dict

sys.path.insert(0, os.path.dirname(__file__))
from test_inception import inception_state_dict  # noqa: E402
from test_train import REPO, tiny_config  # noqa: E402

NUM_EXAMPLES = 10  # IS needs >= 10 (10 splits).
NUM_EVALUATED = 4  # By evaluate (on the run's 2 devices: no padding rows through Inception).
GENERATOR_ROLES = ("teacher_wide", "teacher_deep", "student")


def cheap_frechet_bound(mu1, sigma1, mu2, sigma2, eps=1e-6):
  """|dmu|^2 + tr S1 + tr S2: an upper bound of the FD without the 2048-d matrix root."""
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2))


def offline_inception_env(patch, root) -> str:
  """Offline, an empty cache under `root`, the cheap Frechet bound; returns the path of the
  seeded Inception weights written as a .pth."""
  weights = root / "pt_inception-seeded.pth"
  save_state_dict(weights, inception_state_dict())
  patch.setattr(fid, "frechet_distance", cheap_frechet_bound)
  patch.setenv(download.CACHE_ENV, str(root / "cache"))
  patch.setenv(download.OFFLINE_ENV, "1")
  return str(weights)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  root = tmp_path_factory.mktemp("evaluate")
  with pytest.MonkeyPatch.context() as patch:
    weights = offline_inception_env(patch, root)
    patch.setenv("HOME", str(root))  # No torch hub cache to find weights in.
    yield {"root": root, "weights": weights}


@pytest.fixture(scope="module")
def run(env):
  """A one-step OMGD run whose loop evaluates fid / inception_score / kid (steps 0 and 1)."""
  config = tiny_config(**{
      "student.ngf": 4, "teacher_deep.ngf": 4, "teacher_wide.ngf": 4, "num_train_steps": 1,
      "log_every": 1, "checkpoint_every": 1, "eval.max_examples": NUM_EXAMPLES,
      # 2 devices: a 10-example batch is not padded to 16 (8 devices): less Inception work.
      "num_devices": 2, "eval.batch_size": NUM_EXAMPLES, "eval.inception_weights": env["weights"],
      **{f"eval.evaluators.{name}.every": 0 for name in ("sharpness", "fid", "inception_score",
                                                         "kid")}})
  workdir = str(env["root"] / "run")
  summary = train.train_and_evaluate(config, workdir)
  return {"workdir": workdir, "summary": summary}


# ------------------------------------------------------------------------------ training loop
def test_training_loop_runs_declared_distribution_evaluators(run):
  records = train.read_evals(run["workdir"])
  assert [r["step"] for r in records] == [0, 1]
  for record in records:
    assert "skipped" not in record and record["num_examples"] == NUM_EXAMPLES
    for role in GENERATOR_ROLES:
      metrics = record[role]
      assert {"psnr", "ssim", "vol", "fid", "kid", "is"} <= set(metrics), metrics
      assert np.isfinite(metrics["fid"]) and metrics["fid"] > 0 and metrics["is"] >= 1.0


def test_missing_inception_weights_give_a_note_not_an_error(env):
  """The loop's distribution evaluators offline with an empty cache (env): skipped, one line each."""
  config = tiny_config(**{"eval.evaluators.fid.every": 0, "eval.evaluators.kid.every": 0})
  evaluators = evaluation.build(config.eval, None, 8)
  assert evaluators.distribution == {}
  assert [note.split(":")[0] for note in evaluators.notes] == ["fid skipped", "kid skipped"]
  for note in evaluators.notes:
    assert download.INCEPTION_FID.filename in note and evaluation.INCEPTION_FLAG in note
    assert "\n" not in note


def test_bad_evaluator_declarations_are_rejected_before_compute():
  with pytest.raises(ValueError, match="eval.evaluators.fidd: unknown type 'fidd'; choose from "
                     "paired, sharpness, fid"):
    evaluation.parse(("paired", "fidd"))
  with pytest.raises(ValueError, match="eval.evaluators.fid: unknown field 'rolls'"):
    evaluation.parse({"fid": {"type": "fid", "rolls": ("student",)}})
  with pytest.raises(ValueError, match="eval.evaluators.fid.features: unknown 'vgg'"):
    evaluation.parse({"fid": {"type": "fid", "features": "vgg"}})
  specs = evaluation.parse({"fid": {"type": "fid", "roles": ("stduent",)}})
  with pytest.raises(ValueError, match="eval.evaluators.fid.roles: this method has no generator "
                     "role 'stduent'"):
    evaluation.check_roles(specs, GENERATOR_ROLES)
  config = tiny_config(**{"eval.evaluators.kid.every": -2})
  with pytest.raises(ValueError, match="eval.evaluators.kid.every must be >= -1, got -2"):
    train.prepare(config, "/nonexistent/never/created")


def test_evaluators_run_at_their_own_period_and_roles():
  (fid_spec,) = evaluation.parse({"fid": {"type": "fid", "every": 4, "roles": ("student",)}})
  assert [s for s in range(9) if fid_spec.due(s, eval_every=2, final_step=7)] == [0, 4, 7, 8]
  (off,) = evaluation.parse({"kid": {"type": "kid", "every": -1}})
  assert not any(off.due(s, 2, 7) for s in range(9))
  assert fid_spec.evaluates("student") and not fid_spec.evaluates("teacher_wide")


# ------------------------------------------------------------------------------ evaluate
@pytest.fixture(scope="module")
def evaluated(run, env):
  """Two evaluations of the run: the first computes the reference statistics, the second must
  read them from the cache (it is given wrong real images: the results must not change)."""
  first = evaluate.evaluate(run["workdir"], num_samples=NUM_EVALUATED,
                            inception_weights=env["weights"], latency_iters=3, num_sample_images=3)
  grid = np.asarray(Image.open(os.path.join(run["workdir"], evaluate.GRID_FILE)))
  with open(os.path.join(run["workdir"], evaluate.EVAL_FILE)) as handle:
    written = json.load(handle)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(omgd.OMGD, "real_images", lambda self, batch: batch["B"] * 0.0 + 0.5)
    second = evaluate.evaluate(run["workdir"], num_samples=NUM_EVALUATED,
                               inception_weights=env["weights"], latency_iters=1)
  return {"first": first, "written": written, "grid": grid, "second": second}


def test_eval_json_has_every_metric_for_teachers_and_student(evaluated, run):
  record = evaluated["first"]
  assert evaluated["written"] == json.loads(json.dumps(record))
  assert record["method"] == "omgd" and record["step"] == 1 and record["num_examples"] == NUM_EVALUATED
  assert list(record["roles"]) == list(GENERATOR_ROLES)
  # Only precision / recall is skipped: no VGG16 weights here.
  assert [n.split(":")[0] for n in record["skipped"]] == ["precision_recall skipped"]
  networks = run["summary"]["networks"]
  for role in GENERATOR_ROLES:
    metrics = record["roles"][role]
    assert {"fid", "kid", "psnr", "ssim", "l1", "vol", "params", "macs", "latency_ms"} <= set(metrics)
    assert "is" not in metrics  # 4 samples: fewer than IS's 10 splits.
    # Same networks as training reported, counted the same way.
    assert (metrics["params"], metrics["macs"]) == (networks[role]["params"], networks[role]["macs"])
    assert metrics["latency_ms"] > 0 and np.isfinite(metrics["fid"]) and metrics["fid"] > 0
  student = record["roles"]["student"]
  for teacher in ("teacher_wide", "teacher_deep"):
    assert {f"psnr_vs_{teacher}", f"ssim_vs_{teacher}"} <= set(student)
    ratios = record["student_vs"][teacher]
    teacher_metrics = record["roles"][teacher]
    assert ratios["speedup"] == pytest.approx(teacher_metrics["latency_ms"] / student["latency_ms"])
    assert ratios["mac_compression"] == pytest.approx(teacher_metrics["macs"] / student["macs"])
    assert ratios["param_compression"] == pytest.approx(teacher_metrics["params"] / student["params"])


def test_eval_grid_has_one_column_per_sample_kind(evaluated):
  # 3 rows under a header strip; columns: input | three generators | target; 32 px images with
  # 2 px padding.
  grid = evaluated["grid"]
  header = grid.shape[0] - (3 * 34 + 2)
  assert grid.shape[1:] == (5 * 34 + 2, 3) and header > 0
  assert (grid[:header] < 128).any()  # The labels are drawn.


def test_reference_statistics_are_cached_and_reused(evaluated):
  first, second = evaluated["first"], evaluated["second"]
  first_stats, second_stats = first["reference_stats"]["inception"], second["reference_stats"]["inception"]
  assert not first_stats["cached"] and second_stats["cached"]
  assert first_stats["path"] == second_stats["path"] and os.path.isfile(first_stats["path"])
  for role in GENERATOR_ROLES:
    for metric in ("fid", "kid"):
      assert second["roles"][role][metric] == pytest.approx(first["roles"][role][metric], rel=1e-6)


def test_reference_key_changes_with_what_determines_the_statistics():
  data = {"name": "embedded", "crop_size": 32, "num_threads": 2}
  key = evaluate.reference_key(data, 8, (32, 32, 3), "ab" * 32)
  assert key == evaluate.reference_key({**data, "num_threads": 8}, 8, (32, 32, 3), "ab" * 32)
  assert key != evaluate.reference_key({**data, "crop_size": 64}, 8, (32, 32, 3), "ab" * 32)
  assert key != evaluate.reference_key(data, 9, (32, 32, 3), "ab" * 32)
  assert key != evaluate.reference_key(data, 8, (32, 32, 3), "cd" * 32)


def test_table_shows_each_role_and_the_student_ratios(evaluated):
  table = evaluate.format_table(evaluated["first"])
  lines = table.splitlines()
  assert all(title in lines[1].split() for title in ("FID", "PSNR", "SSIM", "L1", "latency"))
  # The README's column list and the table agree (the paired evaluator gives L1 too).
  assert all(f"{m:.4f}" in table for m in (evaluated["first"]["roles"]["student"]["l1"],))
  for role in GENERATOR_ROLES:
    assert any(line.startswith(role) for line in lines)
  assert any(line.startswith("student vs teacher_wide:") and "x faster" in line for line in lines)


def test_without_inception_weights_the_rest_is_still_reported(run, tmp_path, monkeypatch):
  # A copy of the run whose config names no weights file, and an empty cache (offline).
  workdir = tmp_path / "run"
  shutil.copytree(run["workdir"], workdir)
  stored = json.loads((workdir / "config.json").read_text())
  stored["eval"]["inception_weights"] = ""
  (workdir / "config.json").write_text(json.dumps(stored))
  monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "empty_cache"))
  record = evaluate.evaluate(str(workdir), num_samples=NUM_EVALUATED, latency_iters=1, num_sample_images=2)
  notes = record["skipped"]
  assert [n.split(":")[0] for n in notes] == [
      "fid skipped", "inception_score skipped", "kid skipped", "precision_recall skipped"]
  note = notes[0]
  # The fix it suggests is this command's flag (tested to work above: WEIGHTS_FLAG).
  assert download.INCEPTION_FID.filename in note and f"{evaluate.WEIGHTS_FLAG}=FILE" in note
  assert evaluation.INCEPTION_FLAG not in note
  assert f"{evaluate.VGG_WEIGHTS_FLAG}=FILE" in notes[-1]
  assert "\n" not in note and "reference_stats" not in record
  for role in GENERATOR_ROLES:
    metrics = record["roles"][role]
    assert "fid" not in metrics and "kid" not in metrics
    assert {"psnr", "ssim", "vol", "params", "macs", "latency_ms"} <= set(metrics)
  assert note in evaluate.format_table(record).splitlines()


def test_bad_input_is_one_line_and_exit_2(tmp_path, run):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
  result = subprocess.run([sys.executable, "-m", "gankd_jax.evaluate",
                           f"--workdir={tmp_path / 'nowhere'}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=3600)  # hang guard
  assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
  assert "does not exist" in result.stderr
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no config.json"):
    evaluate.evaluate(str(tmp_path / "empty"))
  (tmp_path / "fresh").mkdir()
  (tmp_path / "fresh" / "config.json").write_text(
      open(os.path.join(run["workdir"], "config.json")).read())
  with pytest.raises(ValueError, match="no committed checkpoint"):
    evaluate.evaluate(str(tmp_path / "fresh"))
  with pytest.raises(ValueError, match="--num_samples must be >= 0"):
    evaluate.evaluate(run["workdir"], num_samples=-1)
  with pytest.raises(ValueError, match="--inception_weights: no such file"):
    evaluate.evaluate(run["workdir"], inception_weights=str(tmp_path / "missing.pth"))


def test_table_columns_fit_their_widest_value():
  # A KID in a features space of large norms (e.g. the digit classifier's) is wide and negative:
  # it must not run into the FID column.
  record = {"method": "omgd_cycle", "step": 5, "num_examples": 10, "backend": "cpu",
            "student_vs": {},
            "roles": {"teacher_a": {"params": 1e6, "macs": 2e9, "latency_ms": 3.2, "fid": 26.72,
                                    "kid": -1960.105},
                      "student": {"params": 1e5, "macs": 2e8, "latency_ms": 1.1, "fid": 7.7}}}
  header, teacher, student = evaluate.format_table(record).splitlines()[1:4]
  assert header.split() == ["role", "params", "(M)", "MACs", "(G)", "latency", "ms", "FID", "KID"]
  assert teacher.split()[-2:] == ["26.72", "-1960.1050"]
  assert student.split()[-2:] == ["7.70", "-"]
  assert len({len(header), len(teacher), len(student)}) == 1  # Right-aligned columns.
