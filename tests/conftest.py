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


# ------------------------------------------------------------------------------ tiny configs
# The one builder of the small configs the tests run (networks of a few thousand parameters).
TINY_OMGD = {
    "data.crop_size": 32, "teacher_wide.ngf": 8, "teacher_deep.ngf": 4, "student.ngf": 4,
    "discriminator.ndf": 8, "batch_size": 8, "num_train_steps": 4, "log_every": 2,
    "eval_every": 100, "checkpoint_every": 2, "eval.max_examples": 8, "eval.batch_size": 8,
    "eval.num_sample_images": 4, "data.num_threads": 2,
}
TINY_AGUINALDO = {
    "data.image_size": 16, "nz": 8, "teacher.d": 4, "student.d": 2, "batch_size": 8,
    "num_train_steps": 4, "teacher.num_train_steps": 2, "log_every": 2, "eval_every": 100,
    "checkpoint_every": 2, "eval.max_examples": 8, "eval.batch_size": 8,
    "eval.num_sample_images": 4, "num_devices": 1,
}


def override(config, overrides: dict):
  """Sets dotted fields ("a.b": value) of an ml_collections config; returns it."""
  config.update_from_flattened_dict(overrides)
  return config


def tiny_omgd_config(variant: str = "unet64", **overrides):
  from configs import omgd
  return override(omgd.get_config(variant), {**TINY_OMGD, **overrides})


def tiny_aguinaldo_config(variant: str, **overrides):
  from configs import aguinaldo
  return override(aguinaldo.get_config(variant), {**TINY_AGUINALDO, **overrides})
