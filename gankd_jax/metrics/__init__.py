"""Metric computations: FID (fid.py), IS, KID, precision / recall, sharpness (VoL), latency, and
the feature extraction they share. They are declared and run through gankd_jax/evaluation.py
(`config.eval.evaluators`), which knows which images to compare; these modules know none."""
