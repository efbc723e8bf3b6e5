"""Multi-host training on one machine: 2 CPU processes x 4 devices against 1 process x 8 devices.

The processes are started by launch/local_multiprocess.py exactly as on a 2-host cluster. Shared
with tests/test_faults.py: the tiny config (as Python overrides and as command-line flags), and an
uninterrupted 1-process reference run whose workdir after step 2 is kept to start other runs from.
"""

import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest

from configs import omgd as omgd_config
from gankd_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "launch"))
from local_multiprocess import launch_local  # noqa: E402

from conftest import TINY_OMGD, override  # noqa: E402

# Explicit schedule lengths: the learning rate must not depend on num_train_steps, so runs of
# different lengths agree on their common steps.
TINY = {**TINY_OMGD, "eval.num_sample_images": 2, "optimizer.constant_steps": 100,
        "optimizer.decay_steps": 100}
# Topologies differ in reduction order. The sum of squares of the parameters agrees to float32
# rounding; the plain sum less closely, since Adam turns rounding noise in a near-zero gradient
# into a step of +-lr, and those steps add up in the sum (tests/test_train.py explains the same).
# Measured: after 4 steps the deep teacher's sum (636k parameters) moved by 1.05e-3 (2.1 in 2032,
# ~5k parameters' Adam steps flipped) while its sum of squares agreed to 5e-6.
SUM_RTOL, SUM_OF_SQUARES_RTOL = 2e-3, 1e-4


def tiny_config(**overrides):
  return override(omgd_config.get_config("unet64"), {**TINY, **overrides})


def tiny_flags(workdir, **overrides) -> list[str]:
  return ["--config=configs/omgd.py:unet64", f"--workdir={workdir}",
          *[f"--config.{k}={v}" for k, v in {**TINY, **overrides}.items()]]


def subprocess_env(**extra) -> dict[str, str]:
  """CPU JAX sharing this test process's persistent compilation cache (see conftest.py)."""
  return {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
          "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5", **extra}


def fingerprints(summary) -> dict[str, list[float]]:
  return {role: net["param_fingerprint"] for role, net in summary["networks"].items()}


def assert_fingerprints_close(actual, expected):
  assert set(actual) == set(expected)
  for role in expected:
    np.testing.assert_allclose(actual[role][0], expected[role][0], rtol=SUM_RTOL, err_msg=role)
    np.testing.assert_allclose(actual[role][1], expected[role][1], rtol=SUM_OF_SQUARES_RTOL,
                               err_msg=role)


def read_summary(workdir) -> dict:
  return json.loads((workdir / "summary.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """1 process x 8 devices, uninterrupted: fingerprints at steps 2 and 4, and a copy of the
  workdir as it was at step 2 (a committed checkpoint '2')."""
  root = tmp_path_factory.mktemp("reference")
  workdir, half = root / "run", root / "at_step_2"
  at_2 = train.train_and_evaluate(tiny_config(), str(workdir), stop_after_steps=2)
  shutil.copytree(workdir, half)
  at_4 = train.train_and_evaluate(tiny_config(), str(workdir))
  return {"at_2": fingerprints(at_2), "at_4": fingerprints(at_4), "workdir_at_2": half,
          "summary_at_4": at_4}


@pytest.mark.multiprocess
def test_two_processes_match_one_and_their_checkpoint_resumes_in_one_process(tmp_path, reference):
  workdir = tmp_path / "run"
  status = launch_local(tiny_flags(workdir, num_train_steps=2), num_processes=2,
                        devices_per_process=4, env=subprocess_env(), timeout=3600)  # hang guard
  assert status == 0
  two_processes = read_summary(workdir)
  assert (two_processes["processes"], two_processes["devices"], two_processes["steps"]) == (2, 8, 2)
  assert_fingerprints_close(fingerprints(two_processes), reference["at_2"])
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]

  # The checkpoint written by 2 processes restores in this one process (8 devices) and continues.
  resumed = train.train_and_evaluate(tiny_config(), str(workdir))
  assert (resumed["processes"], resumed["steps"], resumed["steps_this_run"]) == (1, 4, 2)
  assert_fingerprints_close(fingerprints(resumed), reference["at_4"])
  assert resumed["eval_start"]["step"] == 0 and resumed["eval_end"]["step"] == 4
