"""Fields every run has, whatever the method. Method configs start from `get_config()` here."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.method = ""                # Key in gankd_jax.methods.METHODS.
  config.seed = 0
  config.num_train_steps = 1000
  config.batch_size = 4              # Global batch, split over all devices of all processes.
  config.num_devices = 0             # 0: every device JAX sees.

  config.log_every = 50              # Scalars to TensorBoard and the console.
  config.checkpoint_every = 500
  config.keep_checkpoints = 3
  config.eval_every = 500            # Also evaluated at step 0 and at the end.

  # Fault-injection test hook, never for real runs: training step k (counted from 1, as in the
  # logs) gets a batch of NaNs, so its losses are NaN and the run must stop. -1: never.
  config.debug_nan_step = -1

  config.eval = ml_collections.ConfigDict()
  config.eval.evaluators = ("paired",)  # Keys in gankd_jax.metrics.EVALUATORS.
  config.eval.batch_size = 16
  config.eval.max_examples = 0       # 0: the whole evaluation split.
  config.eval.num_sample_images = 8  # Rows of the sample grid.
  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth for fid / inception_score / kid; "": the
  # download cache (gankd_jax/weights/download.py), else those evaluators are skipped with a note.
  config.eval.inception_weights = ""
  return config
