"""Fields every run has, whatever the method. Method configs start from `get_config()` here."""

import ml_collections

# Evaluator types (gankd_jax/evaluation.py). Those that need a feature network's weights are
# declared off by default; turn one on with --config.eval.evaluators.fid.every=0 (or =STEPS).
PER_EXAMPLE_EVALUATORS = ("paired", "sharpness")
DISTRIBUTION_EVALUATORS = ("fid", "inception_score", "kid", "precision_recall")
OFF = -1


def evaluators(*on: str) -> ml_collections.ConfigDict:
  """`config.eval.evaluators`: the types `on` at every evaluation, the others declared but off.

  Each entry: type, roles (() = every generator role), every (0: each evaluation of the run;
  -1: off), num_samples (0: all evaluated examples), features (inception | digit_classifier |
  vgg16_fc2) and k (precision_recall's k-NN).
  """
  config = ml_collections.ConfigDict()
  for name in (*PER_EXAMPLE_EVALUATORS, *DISTRIBUTION_EVALUATORS):
    config[name] = ml_collections.ConfigDict({
        "type": name, "roles": (), "every": 0 if name in on else OFF, "num_samples": 0,
        "features": "vgg16_fc2" if name == "precision_recall" else "inception", "k": 3})
  return config



def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.method = ""                # Key in gankd_jax.methods.METHODS.
  config.seed = 0
  config.num_train_steps = 1000
  config.batch_size = 4              # Global batch, split over all devices of all processes.
  config.num_devices = 0             # 0: every device JAX sees.
  # "float32", or "bfloat16": mixed precision, convolutions and matrix products (the feature
  # networks' included) in bfloat16 with float32 results; parameters, optimiser state,
  # normalisation statistics, losses and metrics in float32 (gankd_jax/models/layers.py).
  config.precision = "float32"

  config.log_every = 50              # Scalars to TensorBoard and the console.
  config.checkpoint_every = 500
  config.keep_checkpoints = 1        # The latest N (a checkpoint holds every network's optimiser).
  # Also keep the checkpoint whose evaluation scored best on this GROUP/METRIC of evals.jsonl
  # (e.g. "student/psnr"; lower is better for l1, fid, kid); "": none.
  config.best_checkpoint_metric = ""
  config.eval_every = 500            # Also evaluated at step 0 and at the end.

  # Fault-injection test hook, never for real runs: training step k (counted from 1, as in the
  # logs) gets a batch of NaNs, so its losses are NaN and the run must stop. -1: never.
  config.debug_nan_step = -1

  config.eval = ml_collections.ConfigDict()
  config.eval.evaluators = evaluators("paired")
  config.eval.batch_size = 16
  config.eval.max_examples = 0       # 0: the whole evaluation split.
  config.eval.num_sample_images = 8  # Rows of the sample grid.
  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth for fid / inception_score / kid; "": the
  # download cache (gankd_jax/weights/download.py), else those evaluators are skipped with a note.
  config.eval.inception_weights = ""
  # torchvision's vgg16-397923af.pth for precision_recall (VGG16 fc2 features); "": the cache.
  config.eval.vgg16_weights = ""
  return config
