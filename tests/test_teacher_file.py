"""A teacher from the user (methods/teacher_file.py): OMGD's wide teacher from a PyTorch generator
file (fixtures from tests/fixtures/generator_pth), fixed or trained online, its architecture
checked against the config with flags that fix it, and a Flax generator defined only here."""
from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from gankd_jax import runs, stats, train
from gankd_jax.methods import build_method
from gankd_jax.weights import generator_pth
from tests.conftest import tiny_omgd_config
from tests.test_preflight import apply_flag, build, pairs_folder, suggested_flags

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "generator_pth")
# gan-compression's MobileResnetGenerator, ngf 4, instance norm, written with DataParallel.
MOBILE = os.path.join(FIXTURES, "gancompression_mobile9_instance_module.pth")
FROM_MOBILE = {"teacher_wide.init_from": MOBILE, "teacher_wide.ngf": 4}


def batch(size: int = 32, n: int = 2, seed: int = 0):
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(rng.uniform(-1, 1, (n, size, size, 3)), jnp.float32) for k in "AB"}


def leaves_equal(a, b) -> bool:
  flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  return ([p for p, _ in flat_a] == [p for p, _ in flat_b]
          and all(np.array_equal(x, y) for (_, x), (_, y) in zip(flat_a, flat_b)))


def test_frozen_imported_teacher_distils_end_to_end(tmp_path):
  config = tiny_omgd_config("resnet64", **FROM_MOBILE, **{
      "teacher_wide.frozen": True, "num_train_steps": 2, "checkpoint_every": 2})
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert set(summary["networks"]) == {"teacher_wide", "student"}  # No D, no deep teacher.
  assert "gan" not in summary["losses"] and "recon" not in summary["losses"]
  imported = generator_pth.load_generator(MOBILE)
  teacher = summary["networks"]["teacher_wide"]
  # The fixed teacher is the file's, unchanged by the steps.
  assert teacher["param_fingerprint"] == stats.param_fingerprint(imported.variables["params"])
  assert teacher["params"] == stats.count_params(imported.variables["params"])
  assert any("fixed (offline distillation" in note for note in summary["notes"])
  for group in ("teacher_wide", "student", "student_vs_teacher_wide"):
    assert set(summary["eval_end"][group]) == {"psnr", "ssim", "l1"}
  assert summary["eval_start"]["student"] != summary["eval_end"]["student"]  # The student trained.
  # The evaluation command restores the run with its fixed teacher.
  restored = runs.restore_run(str(tmp_path / "run"))
  assert leaves_equal(restored.frozen["teacher_wide"]["params"], imported.variables["params"])
  check_translate_from_the_run(str(tmp_path / "run"), tmp_path)


def check_translate_from_the_run(workdir: str, tmp_path):
  """`translate --network=WORKDIR[:role]` on the run above: its fixed teacher writes the PNGs the
  .pth itself does; no role is the student; a role that is not a generator, a role on a file and
  --arch on a run are one-line errors."""
  from gankd_jax import translate
  from tests.test_translate import INPUT
  from_file = translate.translate(MOBILE, INPUT, str(tmp_path / "file"), size=32)
  from_run = translate.translate(f"{workdir}:teacher_wide", INPUT, str(tmp_path / "run_teacher"),
                                 size=32)
  assert [os.path.basename(p) for p in from_run] == [os.path.basename(p) for p in from_file]
  for ours, theirs in zip(from_run, from_file):  # Two compilations of one network: 1 level.
    ours, theirs = (np.asarray(Image.open(p), np.int16) for p in (ours, theirs))
    assert np.max(np.abs(ours - theirs)) <= 1 and np.mean(ours != theirs) < 0.01
  student = translate.translate(workdir, INPUT, str(tmp_path / "student"), size=32)
  assert len(student) == 2
  assert any(not np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
             for a, b in zip(student, from_file))  # The default role is the student, not the teacher.
  for network, arch, message in (
      (f"{workdir}:discriminator", None, "has no generator role 'discriminator'; its roles: "
       "teacher_wide, student"),
      (f"{MOBILE}:student", None, r"is a file; ':student' only names a run's generator"),
      (workdir, "unet_256", "--arch applies to .pth files, not to run directories")):
    with pytest.raises(ValueError, match=message) as info:
      translate.translate(network, INPUT, str(tmp_path / "refused"), size=32, arch=arch)
    assert "\n" not in str(info.value)
  assert not (tmp_path / "refused").exists()


def test_online_teacher_starts_from_the_file():
  config = tiny_omgd_config("resnet64", **FROM_MOBILE)
  method = build_method(config)
  frozen = method.load_frozen()
  example = batch()
  state = method.init_state(jax.random.key(0), example, frozen)
  imported = generator_pth.load_generator(MOBILE)
  assert leaves_equal(state.teacher_wide.params, imported.variables["params"])
  assert set(method.generator_roles) == {"teacher_wide", "teacher_deep", "student"}
  # A trainable network with its own optimiser (the online steps: tests/test_train.py).
  assert jax.tree_util.tree_leaves(state.teacher_wide.opt_state)


def test_mismatched_architecture_names_the_fields_and_its_flags_fix_it(tmp_path):
  pairs = pairs_folder(tmp_path / "pairs", size=32)
  for base in ("configs/omgd.py:unet64", "configs/omgd.py:resnet64"):
    bad = {"data.path": pairs, "teacher_wide.init_from": MOBILE}
    with pytest.raises(ValueError, match="does not match") as info:
      train.prepare(build(base, bad), str(tmp_path / "refused"))
    message = str(info.value)
    assert "\n" not in message and "ngf 8 here, 4 in the file" in message
    flags = suggested_flags(message)
    assert "--config.teacher_wide.ngf=4" in flags
    overrides = bad
    for flag in flags:
      base, overrides = apply_flag(base, overrides, flag)
    config = build(base, overrides)
    run = train.prepare(config, str(tmp_path / "accepted"))
    run.method.load_frozen()  # The file now imports into the configured teacher.


def test_teacher_file_errors_are_one_line(tmp_path):
  with pytest.raises(ValueError, match="set --config.teacher_wide.init_from=FILE"):
    build_method(tiny_omgd_config("resnet64", **{"teacher_wide.frozen": True}))
  with pytest.raises(ValueError, match="no such file: /nope.pth"):
    build_method(tiny_omgd_config("resnet64", **{"teacher_wide.init_from": "/nope.pth"}))
  with pytest.raises(ValueError, match="has no attribute Missing"):
    build_method(tiny_omgd_config("resnet64", **{"teacher_wide.module": "tests.test_teacher_file:Missing"}))
  with pytest.raises(ValueError, match="imports into our generator families only"):
    build_method(tiny_omgd_config("resnet64", **{"teacher_wide.module": MODULE,
                                                 "teacher_wide.init_from": MOBILE}))


# ----------------------------------------------------------------------------- the teacher API
class TinyTeacher(nn.Module):
  """A user's generator, known to the package only through the teacher protocol."""
  width: int = 6

  def feature_channels(self):
    return [self.width] * 4  # As many taps as the student's (4), any channels.

  @nn.compact
  def __call__(self, x, *, train: bool, return_features: bool = False):
    h = nn.relu(nn.Conv(self.width, (3, 3))(x))
    feats = []
    for _ in range(4):
      h = nn.relu(nn.Conv(self.width, (3, 3))(h))
      feats.append(h)
    y = jnp.tanh(nn.Conv(3, (1, 1))(h))
    return (y, feats) if return_features else y


MODULE = "tests.test_teacher_file:TinyTeacher"


def test_a_flax_generator_of_the_user_is_a_fixed_teacher(tmp_path):
  teacher = TinyTeacher()
  variables = teacher.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)), train=False)
  path = str(tmp_path / "teacher.npz")
  runs.save_variables(path, variables)
  config = tiny_omgd_config("resnet64", **{"teacher_wide.module": MODULE,
                                           "teacher_wide.init_from": path,
                                           "teacher_wide.frozen": True})
  method = build_method(config)
  assert method.use_cd
  frozen = method.load_frozen()
  example = batch()
  state = method.init_state(jax.random.key(0), example, frozen)
  step = jax.jit(lambda s, b, f: method.train_step(s, b, f, None))
  new_state, metrics = step(state, example, frozen)
  assert np.isfinite(float(metrics["student/cd"])) and float(metrics["student/cd"]) > 0
  assert not leaves_equal(new_state.student.params, state.student.params)
  outputs = method.generate(new_state, example, frozen)
  np.testing.assert_array_equal(outputs["teacher_wide"],
                                teacher.apply(variables, example["A"], train=False))
  assert leaves_equal(frozen["teacher_wide"]["params"], variables["params"])


# ----------------------------------------------------------------------------- CycleGAN teachers
# junyanz's CycleGAN generator layout (ResnetGenerator, instance norm, ngf 2): G_A from a zip file
# without dropout, G_B from a legacy file with dropout and old InstanceNorm statistics.
JUNYANZ_A = os.path.join(FIXTURES, "junyanz_resnet9_instance.pth")
JUNYANZ_B = os.path.join(FIXTURES, "junyanz_resnet9_instance_oldstats_legacy.pth")
CYCLE_FROM_FILES = {"teacher.name": "resnet_9blocks", "teacher.ngf": 2,
                    "teacher.init_from": JUNYANZ_A, "teacher.init_from_b": JUNYANZ_B}


def cycle_config(**overrides):
  from tests.test_omgd_cycle import tiny_cycle_config
  return tiny_cycle_config(**overrides)


def test_cycle_teachers_start_from_the_files():
  method = build_method(cycle_config(**CYCLE_FROM_FILES))
  state = method.init_state(jax.random.key(0), batch(), method.load_frozen())
  imported = {name: generator_pth.load_generator(path).variables["params"]
              for name, path in (("g_a", JUNYANZ_A), ("g_b", JUNYANZ_B))}
  for name, params in imported.items():
    assert leaves_equal(state.teachers.params[name], params), name
  assert leaves_equal(state.selected_g_a["params"], imported["g_a"])
  notes = [note.text for note in method.notes()]
  assert any(f"G_A from {JUNYANZ_A}, G_B from {JUNYANZ_B}" in n for n in notes)
  assert any("InstanceNorm running-statistics tensors" in n for n in notes)  # G_B's file.
  assert "teacher_init" not in method.load_frozen(restoring=True)  # The checkpoint has them.


def test_cycle_distillation_from_an_imported_teacher():
  """G_A from a file (gan-compression's mobile generator, the config's teacher family), G_B
  fresh; both train online, G_A is selected and the student distils from it: the method's own
  teacher and student steps, jitted as the training loop runs them."""
  method = build_method(cycle_config(**{"teacher.init_from": MOBILE}))
  frozen = method.load_frozen()
  example = batch()
  state = method.init_state(jax.random.key(0), example, frozen)
  imported = generator_pth.load_generator(MOBILE).variables["params"]
  assert leaves_equal(state.teachers.params["g_a"], imported)
  assert not leaves_equal(state.teachers.params["g_b"], imported)  # Fresh.
  assert any("G_B from fresh weights" in note.text for note in method.notes())
  assert method.phase(0) == "teacher" and method.phase(1) == "student"
  step = jax.jit(method.train_step, static_argnums=3)
  state, metrics = step(state, example, frozen, "teacher")
  assert np.isfinite(float(metrics["teachers/total"]))
  assert not leaves_equal(state.teachers.params["g_a"], imported)  # Trained online.
  state = method.on_eval(state, {"teacher_a": {"fid": 5.0}, "teacher_b": {"fid": 6.0}})
  assert leaves_equal(state.selected_g_a["params"], state.teachers.params["g_a"])
  student = state.student.params
  state, metrics = step(state, example, frozen, "student")
  assert np.isfinite(float(metrics["student/total"])) and float(metrics["student/cd"]) > 0
  assert not leaves_equal(state.student.params, student)


def test_cycle_teacher_file_errors_are_one_line_and_their_flags_fix_them():
  with pytest.raises(ValueError, match="does not match") as info:
    build_method(cycle_config(**{"teacher.init_from": JUNYANZ_A}))
  message = str(info.value)
  assert "\n" not in message and message.startswith(f"teacher.init_from: {JUNYANZ_A} holds a "
                                                     "resnet_9blocks ngf=2")
  assert suggested_flags(message) == {"--config.teacher.name=resnet_9blocks",
                                      "--config.teacher.ngf=2"}
  build_method(cycle_config(**{"teacher.init_from": JUNYANZ_A, "teacher.name": "resnet_9blocks",
                               "teacher.ngf": 2}))
  for overrides, text in (
      ({"teacher.init_from_b": MOBILE}, f"teacher.init_from_b: {MOBILE} holds a mobile_resnet"),
      ({"teacher.init_from_b": os.path.join(FIXTURES, "omgd_resnet9_batch_legacy.pth")},
       "teacher.norm must be instance here"),
      ({"teacher.init_from_b": "/nope.npz"}, "teacher.init_from_b: no such file: /nope.npz")):
    with pytest.raises(ValueError, match=text) as info:
      build_method(cycle_config(**{**CYCLE_FROM_FILES, **overrides}))
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- OMGD's deep teacher
# OMGD's UnetDeepestGenerator (5 levels, ngf 1, instance norm; legacy file with `module.`).
DEEP_UNET = os.path.join(FIXTURES, "omgd_unet_deepest32_instance_legacy_module.pth")


def test_deep_teacher_starts_from_the_file_and_its_flags_fix_a_mismatch(tmp_path):
  pairs = pairs_folder(tmp_path / "pairs", size=32)
  base, overrides = "configs/omgd.py:unet64", {"data.path": pairs,
                                               "teacher_deep.init_from": DEEP_UNET}
  with pytest.raises(ValueError, match="does not match") as info:
    train.prepare(build(base, overrides), str(tmp_path / "refused"))
  message = str(info.value)
  assert "\n" not in message and message.startswith(f"teacher_deep.init_from: {DEEP_UNET} holds "
                                                    "a unet_deepest ngf=1 num_downs=5")
  flags = suggested_flags(message)
  assert flags == {"--config.teacher_deep.ngf=1", "--config.teacher_deep.norm=instance"}
  for flag in flags:
    base, overrides = apply_flag(base, overrides, flag)
  method = build_method(build(base, overrides))
  assert any(f"deep teacher from {DEEP_UNET}" in note.text for note in method.notes())
  state = method.init_state(jax.random.key(0), batch(), method.load_frozen())
  assert leaves_equal(state.teacher_deep.variables(),
                      generator_pth.load_generator(DEEP_UNET).variables)
  with pytest.raises(ValueError, match="the deep teacher is off when teacher_wide.frozen=True"):
    build_method(tiny_omgd_config("resnet64", **FROM_MOBILE, **{
        "teacher_wide.frozen": True, "teacher_deep.init_from": DEEP_UNET}))
