"""The console of every command: our progress, evaluations, notes and errors; the rest on request.

Libraries log much more than a user needs, at INFO, through absl and Python logging: orbax about
45 lines per checkpoint, clu's logging writer every scalar a second time, JAX "Unable to
initialize backend 'tpu'" on a CPU machine; TensorFlow (imported by clu for TensorBoard files)
prints a oneDNN banner from C++ on import. By default (`quiet`) a log record reaches the console
only if it comes from gankd_jax or is an error; `--verbose` (every command has it, through
`cli.parse_flags`) lets everything through. Files (TensorBoard events, evals.jsonl) are the same
either way.
"""

from __future__ import annotations

import logging
import os

from absl import flags
from absl import logging as absl_logging

VERBOSE_FLAG = "verbose"
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class OursOrErrors(logging.Filter):
  """Keeps records logged from gankd_jax's own files, and errors from anyone."""

  def filter(self, record: logging.LogRecord) -> bool:
    return (record.levelno >= logging.ERROR
            or os.path.abspath(record.pathname).startswith(PACKAGE_DIR))


_FILTER = OursOrErrors()


def define_flags() -> None:
  """`--verbose`, once per process (every command parses its flags through cli.parse_flags)."""
  if VERBOSE_FLAG not in flags.FLAGS:
    flags.DEFINE_bool(VERBOSE_FLAG, False, "Show every library's log lines (orbax, clu, JAX, "
                      "TensorFlow); default: gankd_jax's progress, evaluations, notes and errors.")


def configure(verbose: bool) -> None:
  """Sets what reaches the console; call before TensorFlow is imported (its C++ banner)."""
  # TensorFlow only writes TensorBoard files here, so its oneDNN kernels (and their banner) are
  # never needed; XLA compiles our computations whatever this says.
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  handler = absl_logging.get_absl_handler().python_handler
  if verbose:
    handler.removeFilter(_FILTER)
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++ (XLA, TF) logs; real failures raise.
  handler.addFilter(_FILTER)
