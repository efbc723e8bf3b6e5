"""Test setup: 8 virtual CPU devices so sharded code is tested on one machine."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Must happen before JAX initialises its backends.
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
