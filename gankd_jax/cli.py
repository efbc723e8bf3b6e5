"""Shared command-line plumbing: bad input is one line on stderr and exit status 2; every command
gets `--verbose` (gankd_jax/console.py: a quiet console by default)."""

import sys

from absl import flags

from gankd_jax import console


def fail(message: str, status: int = 2) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


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
