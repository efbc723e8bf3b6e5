"""Test setup: 8 virtual CPU devices so sharded code is tested on one machine, and a persistent
XLA compilation cache shared by the test processes (identical programs compile once)."""
import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Must happen before JAX initialises its backends.
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_compilation_cache_dir", os.environ.get(
    "GANKD_TEST_JIT_CACHE", os.path.join(tempfile.gettempdir(), "gankd_jax_test_jit_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
