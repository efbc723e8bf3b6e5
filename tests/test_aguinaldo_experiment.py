"""`python -m gankd_jax.experiments.aguinaldo` end to end with a tiny budget, and its bad input."""
import json
import os
import subprocess
import sys

import pytest

from gankd_jax.experiments import aguinaldo as experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_settings(**overrides):
  fields = dict(dataset="digits", data_path=None, image_size=16, teacher_d=2, d_list=[1],
                teacher_iters=1, student_iters=1, critic_d=1, gan="hinge", alpha=0.5, lr=2e-4, batch_size=8,
                num_samples=20, inception_weights=None, seed=0)
  fields.update(overrides)
  return experiment.Settings(**fields)


def test_experiment_end_to_end_with_a_tiny_budget(tmp_path):
  rows = experiment.run_experiment(tiny_settings(), str(tmp_path))
  assert [(r["method"], r["d"]) for r in rows] == [
      ("teacher", 2), ("mse", 1), ("joint", 1), ("scratch", 1)]
  stored = json.loads((tmp_path / "results.json").read_text())
  assert stored == rows
  for row in stored:
    assert set(row) == set(experiment.ROW_KEYS)
    assert isinstance(row["params"], int) and row["params"] > 0
    assert all(isinstance(row[k], float) for k in ("fid", "is", "vol"))
    assert os.path.getsize(tmp_path / "samples" / f"{row['method']}_d{row['d']}.png") > 0
  # The student is smaller than the teacher, by the closed-form DCGAN counts (16 px, nz 100, grey).
  assert rows[1]["params"] < rows[0]["params"]
  markdown = (tmp_path / "results.md").read_text()
  assert "digit_classifier" in markdown and "| mse | 1 |" in markdown and "Claim 2" in markdown
  assert f"{rows[0]['params'] / rows[1]['params']:.1f}:1" in markdown
  assert (tmp_path / "fid_vs_params.png").read_bytes()[:4] == b"\x89PNG"
  # Every run went through the shared loop and can be resumed.
  assert json.loads((tmp_path / "runs" / "mse_d1" / "summary.json").read_text())["steps"] == 1


def test_precision_reaches_every_run():
  """--precision is every run's config.precision (teacher and students)."""
  for mode in ("teacher", *experiment.METHODS):
    assert experiment.base_config(mode, tiny_settings()).precision == "float32"
    assert experiment.base_config(mode, tiny_settings(precision="bfloat16")).precision == "bfloat16"


def test_bad_input_is_one_line_before_compute(tmp_path):
  for overrides, message in [({"d_list": [0]}, "--d_list"), ({"dataset": "svhn"}, "--dataset"),
                             ({"alpha": 2.0}, "loss.alpha"), ({"image_size": 28}, "power of two"),
                             ({"teacher_d": 0}, "--teacher_d")]:
    with pytest.raises(ValueError, match=message):
      experiment.run_experiment(tiny_settings(**overrides), str(tmp_path / "x"))
    assert not (tmp_path / "x" / "runs").exists()
  result = subprocess.run([sys.executable, "-m", "gankd_jax.experiments.aguinaldo",
                           f"--workdir={tmp_path / 'y'}", "--d_list=1,-2"],
                          cwd=REPO, capture_output=True, text=True, timeout=3600)  # hang guard
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: --d_list")
