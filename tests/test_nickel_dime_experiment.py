"""`python -m gankd_jax.experiments.nickel_dime` end to end with a tiny budget (the tiny reference
teacher pickle of tests/test_nickel_dime.py, two arms, two steps), a SIGTERM
and its resume, and its bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gankd_jax.experiments import nickel_dime as experiment

from test_nickel_dime import PICKLE, TINY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tiny architecture; the schedule, ratio, teacher and evaluators are the experiment's own.
SCHEDULE = ("batch_size", "teacher.network", "student.pruning_ratio", "num_train_steps",
            "log_every", "eval_every", "checkpoint_every", "eval.evaluators.fid.every")
# No R1 / path length: their second-order gradients are most of a step's compile time.
TINY_ARCH = {**{k: v for k, v in TINY.items() if k not in SCHEDULE}, "loss.r1_gamma": 0.0,
             "loss.pl_weight": 0.0}


def tiny_settings(**overrides):
  fields = dict(arms=["adversarial", "nickel_dime"], ratios=[0.5], seeds=[0], steps=2,
                teacher_steps=1, teacher_network=PICKLE, batch_size=8, eval_every=2,
                num_samples=20, log_every=1, overrides=TINY_ARCH)
  fields.update(overrides)
  return experiment.Settings(**fields)


def test_experiment_end_to_end_with_a_tiny_budget(tmp_path):
  rows = experiment.run_experiment(tiny_settings(), str(tmp_path))
  assert [(r["arm"], r["pruning_ratio"]) for r in rows] == [
      ("teacher", 0.0), ("adversarial", 0.5), ("nickel_dime", 0.5)]
  stored = json.loads((tmp_path / "results.json").read_text())
  assert stored == rows
  for row in stored:
    assert set(experiment.ROW_KEYS) <= set(row)
    assert isinstance(row["params"], int) and isinstance(row["macs"], int)
    assert all(isinstance(row[k], float) for k in experiment.METRICS)
  teacher, *students = stored
  for row in students:  # Same pruned architecture in both arms, smaller than the teacher.
    assert row["params"] == students[0]["params"] < teacher["params"]
    assert row["macs"] < teacher["macs"]
    assert all(isinstance(row[k], float) for k in (*experiment.VS_TEACHER, "d_logit_gap"))
    name = experiment.run_name(row["arm"], 0.5, 0)
    assert (tmp_path / "samples" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    # Trained through the shared loop (resumable), with the terms of its arm.
    summary = json.loads((tmp_path / "runs" / name / "summary.json").read_text())
    assert summary["steps"] == 2
  adversarial, nd = (json.loads((tmp_path / "runs" / experiment.run_name(a, 0.5, 0) /
                                 "summary.json").read_text())["losses"]
                     for a in ("adversarial", "nickel_dime"))
  assert set(adversarial) == {"adversarial_student_d", "adversarial_teacher_d"}
  assert nd["nickel"] == 10.0 and "dime_digits" in nd and "output_kd_l1" not in nd
  for png in ("fid_vs_step.png", "d_logits.png"):
    assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
  # D_S's logits were logged at every step, and the loop's FID at steps 0 and 2.
  scalars = experiment.read_scalars(str(tmp_path / "runs" / experiment.run_name("nickel_dime", 0.5, 0)),
                                    (experiment.REAL_LOGIT, experiment.FAKE_LOGIT))
  assert [s for s, _ in scalars[experiment.REAL_LOGIT]] == [1, 2]
  markdown = (tmp_path / "results.md").read_text()
  assert "| nickel_dime | 0.5 | 0 |" in markdown and "Claim 1" in markdown
  assert "Claim 2 is not checked" in markdown  # Neither pair (nickel / adversarial ...) ran.


def test_plan_trains_a_teacher_first_and_arms_are_config_overrides(tmp_path):
  runs = experiment.plan(tiny_settings(teacher_network=None, arms=list(experiment.ARMS),
                                       ratios=[0.9, 0.7], overrides={}), str(tmp_path))
  assert runs[0].name == "teacher" and runs[0].config.method == "stylegan2"
  assert runs[0].workdir == str(tmp_path / "runs" / "teacher")
  assert len(runs) == 1 + 2 * len(experiment.ARMS)
  by_name = {r.name: r.config for r in runs}
  adversarial, full = by_name["adversarial_p90_s0"], by_name["nickel_dime_p90_s0"]
  digits = adversarial.dime.networks.digits
  assert (digits.first_weight, digits.second_weight, adversarial.nickel.weight) == (0, 0, 0)
  assert full.dime.form == adversarial.dime.form == "moments" and full.nickel.weight == 10.0
  # Weights are step inputs in every arm: one compiled step per ratio (tests/test_nickel_dime.py).
  assert all(r.config.weights_as_step_inputs for r in runs[1:])
  assert full.teacher.workdir == runs[0].workdir and by_name["dime_p70_s0"].student.pruning_ratio == 0.7
  assert by_name["output_kd_p70_s0"].output_kd.l1 == 3.0
  # No arm trains against the evaluation network: phi is a random digit classifier.
  assert full.dime.networks.digits.random_init and full.output_kd.network.random_init
  assert {r.config.precision for r in runs} == {"float32"}
  mixed = experiment.plan(tiny_settings(teacher_network=None, precision="bfloat16"), str(tmp_path))
  assert {r.config.precision for r in mixed} == {"bfloat16"}  # --precision: every run, teacher too


@pytest.mark.parametrize("overrides,message", [
    ({"arms": ["gan"]}, "--arms: unknown arm 'gan'"),
    ({"ratios": [1.0]}, r"--ratios: a pruning ratio must be in \[0, 1\), got 1.0"),
    ({"ratios": [-0.1]}, r"in \[0, 1\), got -0.1"),
    ({"steps": 0}, "--steps must be positive"),
    ({"teacher_network": "/no/such.pkl"}, "--teacher_network: no such network pickle"),
    ({"teacher_workdir": "/tmp"}, "give one of --teacher_workdir and --teacher_network"),
])
def test_bad_input_is_one_line_before_compute(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    experiment.run_experiment(tiny_settings(**overrides), str(tmp_path))
  assert not (tmp_path / "runs").exists()


def test_command_line_errors_are_one_line():
  result = subprocess.run([sys.executable, "-m", "gankd_jax.experiments.nickel_dime",
                           "--workdir=/tmp/unused", "--arms=nickel,kd", "--ratios=0.9"],
                          cwd=REPO, capture_output=True, text=True, timeout=3600)  # hang guard
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: --arms: unknown arm 'kd'; choose from " + ", ".join(experiment.ARMS))


def test_a_sigterm_stops_the_experiment_and_the_same_command_resumes(tmp_path, monkeypatch, capsys):
  """SIGTERM during a run's first step: the loop checkpoints step 1 and run_experiment returns
  [] with its resume line and no results; called again it resumes that run, finishes and
  writes the results, the run's final state that of an uninterrupted run."""
  import signal

  import jax
  import numpy as np

  from gankd_jax import checkpointing, runs as runs_lib, train

  settings = tiny_settings(arms=["adversarial"])  # The cheapest arm: resuming is the same.
  name = experiment.run_name("adversarial", 0.5, 0)
  run_dir = str(tmp_path / "runs" / name)
  outside_the_loop = signal.getsignal(signal.SIGTERM)
  make_train_step = train.make_train_step
  sent = []

  def make_step_that_signals(*args):
    step = make_train_step(*args)

    def signalling(*step_args):
      out = step(*step_args)
      if not sent:  # Once, inside the first step; the loop's own handler must be the one hit.
        assert signal.getsignal(signal.SIGTERM) is not outside_the_loop
        sent.append(True)
        os.kill(os.getpid(), signal.SIGTERM)
      return out
    return signalling

  monkeypatch.setattr(train, "make_train_step", make_step_that_signals)
  assert experiment.run_experiment(settings, str(tmp_path)) == []
  assert sent and signal.getsignal(signal.SIGTERM) is outside_the_loop
  assert f"stopped in {name} at step 1; run the same command again" in capsys.readouterr().out
  assert checkpointing.latest_step(run_dir) == 1
  assert not (tmp_path / "results.json").exists()

  rows = experiment.run_experiment(settings, str(tmp_path))  # `sent`: no second signal.
  assert [r["arm"] for r in rows] == ["teacher", "adversarial"]
  assert json.loads((tmp_path / "results.json").read_text()) == rows
  assert checkpointing.latest_step(run_dir) == 2
  # The same run uninterrupted (its config from the same plan) ends in the same state.
  whole = str(tmp_path / "whole")
  train.train_and_evaluate(experiment.plan(settings, str(tmp_path))[0].config, whole)
  for a, b in zip(jax.tree_util.tree_leaves(runs_lib.restore_run(whole).state),
                  jax.tree_util.tree_leaves(runs_lib.restore_run(run_dir).state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
