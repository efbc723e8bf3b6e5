"""Shared command-line plumbing: bad input is one line on stderr and exit status 2; every command
gets `--verbose` (gankd_jax/console.py: a quiet console by default)."""

import sys
from typing import Any, Callable

from absl import flags, logging

from gankd_jax import console


# config.precision's values (gankd_jax.models.layers.PRECISIONS; kept here so flags and the
# preflight check need no JAX import).
PRECISIONS = ("float32", "bfloat16")


def define_precision_flag(default: str | None, default_meaning: str = "") -> None:
  """`--precision`: a command's products in float32 or bfloat16 (mixed, as config.precision)."""
  flags.DEFINE_enum("precision", default, list(PRECISIONS),
                    "float32, or bfloat16: convolutions and matrix products in bfloat16 with "
                    "float32 results (as config.precision)" + (f"; {default_meaning}"
                                                               if default_meaning else "") + ".")


def fail(message: str, status: int = 2) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


def text_table(rows: list[list[str]]) -> list[str]:
  """Rows of cells as aligned lines: the first column left-aligned, the others right-aligned,
  each as wide as its widest cell, two spaces apart (so no value runs into the next)."""
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  return ["  ".join([row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in
                                                  zip(row[1:], widths[1:])]).rstrip()
          for row in rows]


def parse_flags(argv):
  """absl's parser, but a bad flag or config override is a one-line error, not a usage dump."""
  console.define_flags()
  try:
    remaining = flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: an override of a field that doesn't exist
    field = str(e).strip("\"'")
    fail(f"unknown config field '{field}' (in a --config.* override)")
  except (flags.Error, ValueError, TypeError) as e:
    fail(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
  console.configure(flags.FLAGS[console.VERBOSE_FLAG].value)
  return remaining


def experiment_main(settings_from_flags: Callable[[], Any],
                    run_experiment: Callable[[Any, str], Any],
                    setup: Callable[[], None] = lambda: None) -> Callable[[list], None]:
  """An experiment command's `main` for absl's app.run: its settings from the flags, then
  `run_experiment(settings, --workdir)` after `setup()`; a ValueError is one line, status 2."""
  def main(argv):
    if len(argv) > 1:
      fail(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.INFO)
    setup()
    try:
      run_experiment(settings_from_flags(), flags.FLAGS.workdir)
    except ValueError as error:
      fail(str(error).splitlines()[0])
  return main
