"""Parameter fingerprints and final evaluations of five short runs, to check a refactor.

  python benchmarks/fingerprints.py OUT.json   (from the repository root; ~5 min on 2 cores)

Runs OMGD (U-Net with batch norm and n_dis 2; the instance-norm default) and Aguinaldo (joint with
an in-run WGAN-GP teacher; mse and scratch with hinge) for a few steps on tiny networks through the
shared loop, evaluations and checkpoints included, and writes per run every network's parameter
fingerprint (stats.param_fingerprint) and the last evaluation. Run it before and after a change
and compare the files: a change that must not alter results gives equal files, bit for bit, on
the same machine.
"""
import json
import os
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.getcwd())

from absl import logging  # noqa: E402

from configs import aguinaldo, omgd  # noqa: E402
from gankd_jax import train  # noqa: E402

OMGD_TINY = {"data.crop_size": 32, "teacher_wide.ngf": 8, "teacher_deep.ngf": 4,
             "student.ngf": 4, "discriminator.ndf": 8, "log_every": 2, "eval.max_examples": 8,
             "eval.batch_size": 8}
AGUINALDO_TINY = {"data.image_size": 16, "nz": 8, "teacher.d": 4, "student.d": 2,
                  "batch_size": 8, "num_train_steps": 8, "teacher.num_train_steps": 4,
                  "log_every": 2, "eval_every": 4, "checkpoint_every": 4, "eval.max_examples": 8,
                  "eval.batch_size": 8, "num_devices": 1}
HINGE = {"loss.gan": "hinge", "loss.n_critic": 1, "discriminator.norm": "batch"}


def override(config, fields):
  config.update_from_flattened_dict(fields)
  return config


RUNS = {
    "omgd_unet64_ndis2": lambda: override(omgd.get_config("unet64"), {
        **OMGD_TINY, "batch_size": 8, "num_train_steps": 6, "eval_every": 3,
        "checkpoint_every": 3, "n_dis": 2}),
    "omgd_default": lambda: override(omgd.get_config(), {
        **OMGD_TINY, "batch_size": 4, "num_train_steps": 4, "eval_every": 2,
        "checkpoint_every": 2}),
    "ag_joint": lambda: override(aguinaldo.get_config("joint"), AGUINALDO_TINY),
    "ag_mse": lambda: override(aguinaldo.get_config("mse"), {**AGUINALDO_TINY, **HINGE}),
    "ag_scratch": lambda: override(aguinaldo.get_config("scratch"), {**AGUINALDO_TINY, **HINGE}),
}


def main(out_path: str) -> None:
  logging.set_verbosity(logging.WARNING)
  out = {}
  for name, make_config in RUNS.items():
    summary = train.train_and_evaluate(make_config(), tempfile.mkdtemp())
    out[name] = {"fp": {role: v["param_fingerprint"] for role, v in summary["networks"].items()},
                 "eval_end": summary["eval_end"]}
  with open(out_path, "w") as handle:
    json.dump(out, handle, indent=1, sort_keys=True)
  print(f"wrote {out_path}")


if __name__ == "__main__":
  main(sys.argv[1])
