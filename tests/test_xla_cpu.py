"""xla_cpu.configure: which XLA_FLAGS it sets for which image size, and when it leaves them alone."""
import os

import pytest

from gankd_jax import xla_cpu


@pytest.fixture
def fresh_backend(monkeypatch):
  """Pretend JAX's backends do not exist yet (in the test process they do)."""
  from jax._src import xla_bridge
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
  monkeypatch.delenv("XLA_FLAGS", raising=False)


def test_ynn_dots_from_128_pixels(fresh_backend, monkeypatch):
  assert xla_cpu.configure(64) is None
  assert "XLA_FLAGS" not in os.environ
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
  note = xla_cpu.configure(256)
  assert xla_cpu.YNN_DOTS_FLAG in note
  assert os.environ["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {xla_cpu.YNN_DOTS_FLAG}"


def test_user_choice_and_started_backend_are_kept(fresh_backend, monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", f"--{xla_cpu.YNN_DOTS_OPTION}=")
  assert xla_cpu.configure(256) is None
  assert os.environ["XLA_FLAGS"] == f"--{xla_cpu.YNN_DOTS_OPTION}="
  from jax._src import xla_bridge
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: True)
  monkeypatch.delenv("XLA_FLAGS")
  assert xla_cpu.configure(256) is None
  assert "XLA_FLAGS" not in os.environ
