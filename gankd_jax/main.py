"""Command line: `python -m gankd_jax.main --config=configs/omgd.py --workdir=DIR`.

Config fields are overridden with `--config.a.b=value`; variants are chosen with
`--config=configs/omgd.py:NAME`. Running again on the same workdir resumes the run.

Multi-process runs (one process per host) call `jax.distributed.initialize`: with `--distributed`
alone where JAX finds the cluster itself (Cloud TPU VMs, SLURM, Open MPI), or with
`--coordinator_address --num_processes --process_id` elsewhere. Exit status: 0 when done or stopped
by SIGTERM (with a checkpoint; run again to resume), 1 on a NaN/Inf loss, 2 on bad input.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from gankd_jax.cli import fail, parse_flags

FLAGS = flags.FLAGS


def define_flags():
  """Defines the command's flags; only when run as a command, so that importing this module
  beside another command (tests, notebooks) does not define a flag twice."""
  config_flags.DEFINE_config_file("config", None, "Config file (optionally :VARIANT).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples and summary.json.")
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0, for multi-process runs (not needed on Cloud TPU).")
  flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
  flags.DEFINE_integer("process_id", None, "Index of this process in a multi-process run.")
  flags.DEFINE_bool("distributed", False,
                    "Call jax.distributed.initialize() even without the three flags above, letting JAX "
                    "find the coordinator, process count and index (Cloud TPU pods, SLURM).")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  from gankd_jax import preflight
  from gankd_jax.data.images import ImageFileError
  try:  # Before JAX and TensorFlow load (seconds): a bad field or data file fails at once.
    notes = preflight.check(FLAGS.config)
  except ValueError as e:
    fail(str(e))
  from gankd_jax import runs, xla_cpu
  try:
    xla_note = xla_cpu.configure(runs.image_size(FLAGS.config.data))
  except (AttributeError, KeyError, TypeError, ValueError):
    xla_note = None  # A bad data config: train.prepare names the field below.
  import jax
  if xla_note:
    logging.info(xla_note)
  if FLAGS.distributed or FLAGS.coordinator_address or FLAGS.num_processes:
    # Flags left unset are found by JAX's cluster detection.
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  from gankd_jax import train
  # Only process 0 logs progress; the others report warnings and errors only.
  logging.set_verbosity(logging.INFO if jax.process_index() == 0 else logging.WARNING)
  for note in notes:
    logging.info(note)
  try:
    run = train.prepare(FLAGS.config, FLAGS.workdir)
  except ValueError as e:
    fail(str(e))
  try:
    summary = train.train(run)
  except train.NonFiniteLossError as e:
    fail(str(e), status=1)
  except ImageFileError as e:  # A data file changed after the check at the start.
    fail(f"{e} (it decoded when the run started)")
  end = summary.get("eval_end") or {}
  logging.info("done: %d steps; summary in %s/summary.json", summary["steps"], FLAGS.workdir)
  if jax.process_index() == 0:
    for role, network in summary["networks"].items():
      groups = {group: metrics for group, metrics in end.items()
                if isinstance(metrics, dict) and (group == role or group.startswith(f"{role}_vs_"))}
      scores = "; ".join(f"{group} " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
                         for group, metrics in groups.items())
      print(f"{role}: {network['params']:,} params" + (f"; {scores}" if scores else ""))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
