"""OMGD for CycleGAN (methods/omgd_cycle.py): the round schedule, the best-FID selection kept in
the state, resume in a student stage, bad input, the command end to end and its evaluation."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gankd_jax import preflight, runs, train
from gankd_jax.methods import build_method
from gankd_jax.methods.omgd_cycle import NO_FID, RoundSchedule, reference_linear_decay

from conftest import override

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Rounds of 1 teacher step then 2 student steps (epoch 1 step, m 1, n_dis 2): 2 rounds in 6 steps.
TINY_CYCLE = {
    "data.crop_size": 32, "teacher.ngf": 4, "student.ngf": 4, "discriminator.ndf": 8,
    "batch_size": 8, "cycle.epoch_steps": 1, "cycle.m": 1, "cycle.n_dis": 2,
    "num_train_steps": 6, "log_every": 2, "eval_every": 100, "checkpoint_every": 3,
    "eval.max_examples": 16, "eval.batch_size": 8, "eval.num_sample_images": 4,
    "data.num_threads": 2, "loss.pool_size": 3, "optimizer.nepochs": 1,
    "optimizer.nepochs_decay": 2, "num_devices": 1,
}


def tiny_cycle_config(**overrides):
  from configs import omgd_cycle
  return override(omgd_cycle.get_config(), {**TINY_CYCLE, **overrides})


# ----------------------------------------------------------------------------- the schedule
def test_round_schedule_counts_teacher_and_student_steps_exactly():
  schedule = RoundSchedule(epoch_steps=3, m=2, n_dis=4)  # T = 6, S = 24 per round.
  phases = [schedule.phase(step) for step in range(3 * 30)]
  for r in range(3):
    round_phases = phases[30 * r:30 * (r + 1)]
    assert round_phases == ["teacher"] * 6 + ["student"] * 24
  assert [s for s in range(1, 91) if schedule.selects(s)] == [6, 36, 66]
  # Schedulers step once per teacher epoch, after a round's student stage (the reference).
  clock = [int(schedule.teacher_epochs(jnp.asarray(s))) for s in range(0, 37)]
  assert clock[:6] == [0, 0, 0, 1, 1, 1] and set(clock[6:30]) == {1} and clock[30:36] == [2] * 3 + [3] * 3
  lr = reference_linear_decay(1.0, nepochs=2, nepochs_decay=2)
  assert [float(lr(k)) for k in range(5)] == pytest.approx([1.0, 1.0, 2 / 3, 1 / 3, 0.0])


def _params_like(tree, value):
  return jax.tree_util.tree_map(lambda x: jnp.full_like(x, value), tree)


@pytest.fixture(scope="module")
def tiny_state():
  config = tiny_cycle_config(**{"cycle.epoch_steps": 2, "cycle.m": 1, "cycle.n_dis": 1,
                                "num_train_steps": 16})
  method = build_method(config)
  example = {k: jnp.zeros((1, 32, 32, 3)) for k in ("A", "B")}
  return config, jax.jit(method.init_state)(jax.random.key(0), example, {})


def _select_rounds(config, state, fids):
  """Feeds on_eval one synthetic evaluation per round; G_A's parameters are set to the round's
  index first, so the selected G_A says which round it came from."""
  method = build_method(config)
  schedule = method.schedule
  for r, (fid_a, fid_b) in enumerate(fids):
    teachers = state.teachers.replace(params={**state.teachers.params,
                                              "g_a": _params_like(state.teachers.params["g_a"], r)})
    state = state.replace(step=jnp.asarray(r * schedule.round_steps + schedule.teacher_steps),
                          teachers=teachers)
    state = method.on_eval(state, {"teacher_a": {"fid": fid_a}, "teacher_b": {"fid": fid_b},
                                   "student": {"fid": 1.0}})
  leaves = jax.tree_util.tree_leaves(state.selected_g_a)
  rounds = {float(x.ravel()[0]) for x in leaves}
  assert len(rounds) == 1, rounds
  return method, state, int(rounds.pop())


FIDS = [(9.0, 50.0), (4.0, 60.0), (6.0, 30.0), (5.0, 40.0)]


def test_snapshot_is_the_argmin_fid_rounds_g_a(tiny_state):
  config, state = tiny_state
  method, state, chosen_round = _select_rounds(config, state, FIDS)
  assert chosen_round == int(np.argmin([a for a, _ in FIDS])) == 1
  np.testing.assert_array_equal(state.history_fid, np.asarray(FIDS, np.float32))
  np.testing.assert_array_equal(state.history_chosen, [1, 1, 0, 0])
  np.testing.assert_array_equal(state.best_fid, [4.0, 30.0])
  report = method.report(state)
  assert [(row["round"], row["fid_a"], row["chosen"]) for row in report["selection"]] == [
      (0, 9.0, True), (1, 4.0, True), (2, 6.0, False), (3, 5.0, False)]
  assert [row["step"] for row in report["selection"]] == [2, 6, 10, 14]
  # An evaluation that is not at a teacher stage's end leaves the selection alone.
  later = method.on_eval(state.replace(step=jnp.asarray(3)), {"teacher_a": {"fid": 0.1}})
  np.testing.assert_array_equal(later.best_fid, state.best_fid)


def test_reference_quirk_and_metric_none(tiny_state):
  config, state = tiny_state
  quirk = override(config.copy_and_resolve_references(), {"selection.rewrite_on_either": True})
  _, _, chosen_round = _select_rounds(quirk, state, FIDS)
  assert chosen_round == 2  # G_B's FID improved in round 2, so that round's G_A was kept.
  latest = override(config.copy_and_resolve_references(), {"selection.metric": "none"})
  method, after, chosen_round = _select_rounds(latest, state, FIDS)
  assert chosen_round == 3
  assert any("selection.metric=none" in note.text for note in method.notes())
  assert int(after.history_chosen.min()) == 1
  assert float(state.best_fid[0]) == NO_FID  # The fixture's state was not touched.


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("overrides, message", [
    ({"cycle.m": 0}, "cycle.m must be a positive integer"),
    ({"cycle.n_dis": -1}, "cycle.n_dis must be a positive integer"),
    ({"selection.metric": "kid"}, "selection.metric: unknown 'kid'"),
    ({"eval.evaluators.fid.every": -1}, "needs an fid evaluator on teacher_a and teacher_b"),
    ({"eval.evaluators.fid.features": "inception",
      "eval.inception_weights": "/nonexistent/pt_inception.pth"},
     "--config.eval.inception_weights: no such file: /nonexistent/pt_inception.pth"),
])
def test_bad_config_is_refused_before_any_compute(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message) as info:
    train.prepare(tiny_cycle_config(**overrides), str(tmp_path / "run"))
  assert "\n" not in str(info.value)
  assert not (tmp_path / "run").exists()


def test_missing_inception_weights_name_the_file_and_flag(monkeypatch):
  from gankd_jax.weights import download
  monkeypatch.setattr(download, "find_cached", lambda known: None)
  config = tiny_cycle_config(**{"eval.evaluators.fid.features": "inception"})
  with pytest.raises(ValueError, match=r"pt_inception-2015-12-05-6726825d\.pth.*"
                     r"--config\.eval\.inception_weights=FILE.*selection\.metric=none"):
    preflight.check(config)
  preflight.check(override(config, {"selection.metric": "none"}))  # The latest G_A: no FID needed.


# ----------------------------------------------------------------------------- training
def _state_leaves(workdir):
  restored = runs.restore_run(str(workdir))
  return restored.step, jax.tree_util.tree_leaves_with_path(jax.device_get(restored.state))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("cycle") / "straight"
  return workdir, train.train_and_evaluate(tiny_cycle_config(), str(workdir))


def test_a_run_selects_at_each_teacher_stage_end_and_records_it(straight):
  workdir, summary = straight
  evals = {r["step"]: r for r in train.read_evals(str(workdir))}
  assert sorted(evals) == [0, 1, 4, 6]  # Start, the two selections, the end.
  for record in evals.values():
    assert {"teacher_a", "teacher_b", "teacher_selected", "student"} <= set(record)
    assert "fid" in record["teacher_a"] and "psnr" in record["student_vs_teacher_selected"]
  step, leaves = _state_leaves(workdir)
  state = dict((jax.tree_util.keystr(path), leaf) for path, leaf in leaves)
  fids = [[evals[s][f"teacher_{d}"]["fid"] for d in "ab"] for s in (1, 4)]
  np.testing.assert_allclose(state[".history_fid"], fids, rtol=1e-6)
  assert step == 6 and summary["steps"] == 6
  assert "rounds of 1 teacher steps" in summary["notes"][0]


def test_kill_in_a_student_stage_then_resume_equals_an_uninterrupted_run(straight, tmp_path):
  workdir, _ = straight
  config = tiny_cycle_config()
  method = build_method(config)
  assert method.phase(5) == "student" and method.phase(4) == "student"
  first = train.train_and_evaluate(config, str(tmp_path / "resumed"), stop_after_steps=5)
  assert first["steps"] == 5
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert resumed["steps_this_run"] == 1
  _, want = _state_leaves(workdir)
  _, got = _state_leaves(tmp_path / "resumed")
  assert [jax.tree_util.keystr(p) for p, _ in got] == [jax.tree_util.keystr(p) for p, _ in want]
  names = {jax.tree_util.keystr(p) for p, _ in want}
  assert {".pool_a.images", ".pool_b.count", ".best_fid", ".history_chosen"} <= names
  for (path, a), (_, b) in zip(got, want):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


TINY_FLAGS = [f"--config.{k}={v}" for k, v in TINY_CYCLE.items() if k != "num_devices"] + [
    "--config.num_train_steps=4", "--config.num_devices=1"]


def test_command_end_to_end_then_evaluate(tmp_path):
  from gankd_jax import evaluate
  workdir = tmp_path / "run"
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5"}
  result = subprocess.run(
      [sys.executable, "-m", "gankd_jax.main", "--config=configs/omgd_cycle.py", *TINY_FLAGS,
       f"--workdir={workdir}"], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=3600)  # hang guard
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["steps"] == 4 and summary["method"] == "omgd_cycle"
  assert set(summary["networks"]) == {"teacher_a", "teacher_b", "teacher_selected", "student",
                                      "discriminator_a", "discriminator_b"}
  assert summary["eval_end"]["student"]["fid"] > 0
  assert os.listdir(workdir / "checkpoints")

  record = evaluate.evaluate(str(workdir), num_samples=16, latency_iters=2,
                             stats_cache=str(tmp_path / "stats"))
  roles = record["roles"]
  assert {"teacher_a", "teacher_b", "teacher_selected", "student"} == set(roles)
  for role in roles:  # Against the target domain, in the run's features (no Inception here).
    assert roles[role]["fid"] > 0 and "kid" in roles[role] and roles[role]["latency_ms"] > 0
  assert "psnr_vs_teacher_selected" in roles["student"]
  assert record["student_vs"]["teacher_a"]["speedup"] > 0
  assert [row["round"] for row in record["report"]["selection"]] == [0, 1]
  table = evaluate.format_table(record)
  assert "selection:" in table and "round 1" in table


def test_horse2zebra_s16_sizes_are_the_papers():
  """The S16 student: 137,347 parameters and 1.408 G MACs at 256 px (OMGD table, gan-compression
  counting); the teachers the reference's mobile_resnet_9blocks ngf 64."""
  from configs import omgd_cycle
  from gankd_jax import model_stats
  networks = model_stats.compute(omgd_cycle.get_config("horse2zebra_s16"))["networks"]
  assert networks["student"]["params"] == 137_347
  assert round(networks["student"]["macs"] / 1e9, 3) == 1.408
  assert networks["teacher_a"]["params"] == networks["teacher_b"]["params"] == 1_987_075


def test_reference_variants_take_the_epoch_from_the_training_data(tmp_path):
  """An epoch of horse2zebra_s16 is max(|trainA|, |trainB|) steps of the data actually used (the
  reference's), and the step budget (20 rounds of 10 + 40 epochs) follows; a set budget stays."""
  from configs import omgd_cycle
  from gankd_jax import data
  from test_unpaired_data import cycle_folder
  root = cycle_folder(tmp_path)  # trainA 5, trainB 7
  config = omgd_cycle.get_config("horse2zebra_s16")
  assert (config.cycle.epoch_steps, config.num_train_steps) == (1334, 20 * 50 * 1334)
  config.data.name, config.data.path = "cycle_gan_folder", root
  notes = preflight.fit_to_data(config, data.build_dataset(config.data, "train"))
  assert (config.cycle.epoch_steps, config.num_train_steps) == (7, 20 * 50 * 7)
  assert "max(|trainA| 5, |trainB| 7) at batch 1" in notes[0]
  config.batch_size, config.num_train_steps = 2, 100
  preflight.fit_to_data(config, data.build_dataset(config.data, "train"))
  assert (config.cycle.epoch_steps, config.num_train_steps) == (4, 100)
  # The default keeps its short epoch.
  default = omgd_cycle.get_config()
  assert preflight.fit_to_data(default, None) == [] and default.cycle.epoch_steps == 100
