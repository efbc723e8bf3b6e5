"""The core every method stands on: the Method contract, per-network optimisers with global
schedules, the teacher source, the evaluation hook's order, layering, and commands that know no
method (model_stats on every config and variant)."""
import ast
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import omgd as omgd_configs
from gankd_jax import checkpointing, data, evaluation, model_stats, runs, train
from gankd_jax.methods import base, build_method, common, omgd
from gankd_jax.metrics import digit_classifier

from conftest import tiny_aguinaldo_config, tiny_omgd_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "gankd_jax")


# ------------------------------------------------------------------------------ optimisers
def test_global_schedule_follows_the_run_step_not_the_update_count():
  """A network updated only at step 7 takes lr(7), not lr(0) (its first own update)."""
  schedule = optax.linear_schedule(1.0, 0.0, transition_steps=10, transition_begin=2)
  tx = optax.chain(optax.clip_by_global_norm(100.0), base.scale_by_global_schedule(schedule))
  net = base.NetState.create({"params": {"w": jnp.zeros(3)}}, tx)
  updated = net.apply_gradients({"w": jnp.ones(3)}, {}, step=jnp.int32(7))
  np.testing.assert_allclose(updated.params["w"], -schedule(7) * np.ones(3), rtol=1e-6)
  assert float(schedule(7)) == pytest.approx(0.5)


def test_any_optax_chain_fits_a_net_state_and_ema_is_optax():
  tx = optax.chain(optax.clip(0.1), optax.adam(1e-2))  # No global schedule: step is ignored.
  net = base.NetState.create({"params": {"w": jnp.ones(2)}, "batch_stats": {"m": jnp.zeros(1)}}, tx)
  step = jax.jit(lambda n, g: n.apply_gradients(g, {"m": jnp.ones(1)}, step=jnp.int32(3)))
  updated = step(net, {"w": jnp.full(2, 5.0)})
  np.testing.assert_allclose(updated.params["w"], 1.0 - 1e-2, rtol=1e-5)  # Adam's first step: lr.
  assert updated.tx is tx and float(updated.batch_stats["m"][0]) == 1.0
  ema = optax.incremental_update(updated.params, net.params, step_size=0.1)
  np.testing.assert_allclose(ema["w"], 1.0 - 1e-3, rtol=1e-5)


def test_omgd_schedule_is_pix2pix_linear_decay():
  config = tiny_omgd_config(num_train_steps=10)
  lr = build_method(config).learning_rate
  assert [float(lr(s)) for s in (0, 4, 5, 6, 9, 10)] == pytest.approx(
      [2e-4, 2e-4, 2e-4, 2e-4 * 0.8, 2e-4 * 0.2, 0.0])


# ------------------------------------------------------------------------------ contract
def test_building_a_method_reads_no_file(monkeypatch, tmp_path):
  """The VGG16 file is only found at build time; `load_frozen` reads it."""
  path = tmp_path / "vgg16-397923af.pth"
  path.write_bytes(b"not read until load_frozen")
  config = tiny_omgd_config(**{"vgg.weights": str(path)})
  reads = []
  monkeypatch.setattr(omgd.vgg, "load_vgg16", lambda p: reads.append(p) or {})
  method = build_method(config)
  assert reads == [] and method.notes()[0].level == base.INFO
  method.load_frozen()
  assert reads == [str(path)]


def test_missing_vgg_weights_is_a_warning_note():
  method = build_method(tiny_omgd_config(**{"loss.lambda_style": 1.0}))
  (note,) = method.notes()
  assert note.level == base.WARNING and "style and feature loss terms are off" in note.text


def test_on_eval_runs_before_the_checkpoint_of_the_same_step(tmp_path, monkeypatch):
  """What on_eval changes is in the checkpoint written at that step (so a resume keeps it)."""
  def bump_rng(self, state, results):
    assert "student" in results  # The evaluation's per-role metrics.
    return state.replace(rng=state.rng + 1)
  monkeypatch.setattr(omgd.OMGD, "on_eval", bump_rng)
  config = tiny_omgd_config(num_train_steps=4, eval_every=2, checkpoint_every=2)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir, stop_after_steps=2)  # Evaluates at 0 and 2.
  restored = runs.restore_run(workdir)
  initial = jax.jit(restored.method.init_state)(
      jax.random.key(config.seed), {k: jnp.zeros(v.shape, v.dtype)
                                    for k, v in runs.example_batch(config.data).items()}, {})
  assert restored.step == 2
  np.testing.assert_array_equal(restored.state.rng, np.asarray(initial.rng) + 2)


def test_method_declares_its_resumable_fields(tmp_path):
  workdir = str(tmp_path / "run")
  checkpointing.write_config(workdir, tiny_omgd_config(num_train_steps=2))  # As a run starts.
  longer = tiny_omgd_config(num_train_steps=4, **{"optimizer.constant_steps": 1})
  assert train.prepare(longer, workdir).resuming
  other = tiny_omgd_config(num_train_steps=4, **{"loss.lambda_ssim": 1.0})
  with pytest.raises(ValueError, match="loss.lambda_ssim"):
    train.prepare(other, workdir)


# ------------------------------------------------------------------------------ evaluation pass
def test_one_pass_runs_distribution_evaluators_per_role_and_sample_count():
  """fid / kid / inception_score / precision_recall through the pass (digit-classifier features:
  no downloads), each on its own roles and number of examples; VoL on every role."""
  config = tiny_aguinaldo_config("mse", **{"teacher.num_train_steps": 2})
  method = build_method(config)
  example = {k: jnp.zeros(v.shape, v.dtype) for k, v in runs.example_batch(config.data).items()}
  state = jax.jit(method.init_state)(jax.random.key(0), example, {})
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:2]), ("data",))
  declared = {
      "fid": {"type": "fid", "features": "digit_classifier"},
      "is": {"type": "inception_score", "features": "digit_classifier", "roles": ("student",)},
      "kid": {"type": "kid", "features": "digit_classifier", "num_samples": 12},
      "pr": {"type": "precision_recall", "features": "digit_classifier", "roles": ("teacher",)},
      "vol": {"type": "sharpness"},
  }
  evaluators = evaluation.build(ml_collections.ConfigDict({"evaluators": declared}), mesh, 8)
  assert evaluators.notes == [] and set(evaluators.distribution) == {"fid", "is", "kid", "pr"}
  dataset = data.build_dataset(config.data, "eval")
  result = evaluation.evaluation_pass(method, state, {}, dataset, mesh, evaluators,
                                      batch_size=8, max_examples=20, num_sample_images=2)
  assert result.num_examples == 20 and result.roles == ["teacher", "student"]
  teacher, student = result.results["teacher"], result.results["student"]
  assert {"fid", "kid", "kid_std", "precision", "recall", "vol"} == set(teacher)
  assert {"fid", "kid", "kid_std", "is", "is_std", "vol"} == set(student)
  assert 0.0 <= teacher["precision"] <= 1.0 and 0.0 <= teacher["recall"] <= 1.0
  assert np.isfinite(student["fid"]) and student["fid"] > 0 and 1.0 <= student["is"] <= 10.0
  # The real side is kept for the next pass; KID's sample holds its first 12 real images only.
  assert len(evaluators.distribution["kid"].reference["rows"]) == 12
  assert evaluators.distribution["fid"].reference["mu"].shape == (digit_classifier.NUM_FEATURES,)


# ------------------------------------------------------------------------------ teacher source
def test_teacher_from_a_weights_file(tmp_path):
  teacher = tiny_aguinaldo_config("teacher")
  teacher_method = build_method(teacher)
  state = jax.jit(teacher_method.init_state)(
      jax.random.key(3), {k: jnp.zeros(v.shape, v.dtype)
                          for k, v in runs.example_batch(teacher.data).items()}, {})
  variables = teacher_method.networks(state, {})["teacher"].variables
  path = str(tmp_path / "teacher.npz")
  runs.save_variables(path, variables)

  method = build_method(tiny_aguinaldo_config("mse", **{"teacher.weights": path}))
  loaded = method.load_frozen()["teacher"]
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, jax.device_get(variables))
  assert any(path in note.text for note in method.notes())

  wrong = build_method(tiny_aguinaldo_config("mse", **{"teacher.weights": path, "teacher.d": 8}))
  with pytest.raises(ValueError, match=r"teacher.weights: '.*' in .* has shape .*, expected"):
    wrong.load_frozen()
  with pytest.raises(ValueError, match="teacher.weights: no such file"):
    build_method(tiny_aguinaldo_config("mse", **{"teacher.weights": str(tmp_path / "no.npz")}))
  with pytest.raises(ValueError, match="not both"):
    build_method(tiny_aguinaldo_config("mse", **{"teacher.weights": path,
                                                 "teacher.workdir": str(tmp_path)}))


# ------------------------------------------------------------------------------ commands
def all_configs():
  """Every variant of every method config in configs/ (each lists its VARIANTS)."""
  import importlib
  for file in sorted(os.listdir(os.path.join(REPO, "configs"))):
    if not file.endswith(".py") or file in ("base.py", "__init__.py"):
      continue
    module = importlib.import_module(f"configs.{file[:-3]}")
    for variant in module.VARIANTS:
      yield f"{file[:-3]}:{variant}", module.get_config(variant)


@pytest.mark.parametrize("name,config", list(all_configs()), ids=lambda v: v if isinstance(v, str) else "")
def test_model_stats_works_for_every_config_and_variant(name, config):
  result = model_stats.compute(config)
  method = build_method(config)
  del name
  assert set(method.generator_roles) <= set(result["networks"]) <= set(method.roles)
  for role, counts in result["networks"].items():
    assert counts["params"] > 0 and counts["macs"] > 0, (role, counts)


def test_unet_s16_counts_are_the_papers():
  """The paper's U-Net S16 student: 1.22 G MACs at 256 px (OMGD table 1, rounded)."""
  result = model_stats.compute(omgd_configs.get_config("unet_s16"))
  assert result["networks"]["student"]["macs"] / 1e9 == pytest.approx(1.22, abs=0.01)


# ------------------------------------------------------------------------------ layering
def _imports(path: str) -> list[tuple[str, bool]]:
  """(module imported, at top level?) for every gankd_jax import in a file."""
  tree = ast.parse(open(path).read())
  top = set(id(node) for node in tree.body)
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gankd_jax"):
      names = [f"{node.module}.{alias.name}" for alias in node.names]
      found += [(name, id(node) in top) for name in [node.module, *names]]
    elif isinstance(node, ast.Import):
      found += [(alias.name, id(node) in top) for alias in node.names
                if alias.name.startswith("gankd_jax")]
  return found


def _module_files():
  for root, _, files in os.walk(PACKAGE):
    for file in files:
      if file.endswith(".py"):
        path = os.path.join(root, file)
        module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
        yield module.removesuffix(".__init__"), path


def test_methods_import_neither_checkpointing_nor_data():
  for module, path in _module_files():
    if module.startswith("gankd_jax.methods"):
      bad = [name for name, _ in _imports(path)
             if name.startswith(("gankd_jax.checkpointing", "gankd_jax.data"))]
      assert not bad, f"{module} imports {bad}: go through gankd_jax.runs"


def test_no_import_cycles_at_module_level():
  modules = dict(_module_files())
  # A submodule importing its own package is no cycle (the package is initialising it).
  graph = {m: {name for name, top in _imports(p)
               if top and name in modules and name != m and not m.startswith(name + ".")}
           for m, p in modules.items()}
  state = {}

  def visit(node, trail):
    state[node] = "open"
    for nxt in graph[node]:
      if state.get(nxt) == "open":
        raise AssertionError("import cycle: " + " -> ".join([*trail, node, nxt]))
      if nxt not in state:
        visit(nxt, [*trail, node])
    state[node] = "done"
  for node in graph:
    if node not in state:
      visit(node, [])


def test_common_helpers_are_shared_not_copied():
  for module, path in _module_files():
    if module.startswith("gankd_jax.methods.") and not module.endswith(("common", "base")):
      source = open(path).read()
      for name in ("def step_rng", "def _net_state", "def _apply_eval", "def eval_latents"):
        assert name not in source, f"{module} defines {name} again: use methods/common.py"
  assert common.EVAL_LATENT_SEED == 20190201


def test_a_run_from_before_a_new_field_resumes_while_the_field_is_off(tmp_path):
  """Fields added later (e.g. teacher_wide.init_from) default to off: an older run's config.json,
  which lacks them, is still this config; set on, they make another config."""
  import json
  config = tiny_omgd_config()
  checkpointing.write_config(str(tmp_path), config)
  stored = json.loads((tmp_path / checkpointing.CONFIG_FILE).read_text())
  del stored["teacher_wide"]["frozen"], stored["teacher_wide"]["init_from"]
  del stored["teacher_deep"]["init_from"]
  (tmp_path / checkpointing.CONFIG_FILE).write_text(json.dumps(stored))
  assert checkpointing.check_workdir_config(str(tmp_path), config)
  config.teacher_wide.init_from = "teacher.pth"
  with pytest.raises(ValueError, match="teacher_wide.init_from: '<absent>' there, 'teacher.pth' now"):
    checkpointing.check_workdir_config(str(tmp_path), config)
