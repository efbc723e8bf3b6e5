"""Shared command-line plumbing: bad input is one line on stderr and exit status 2."""

import sys

from absl import flags


def fail(message: str, status: int = 2) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


def parse_flags(argv):
  """absl's parser, but a bad flag or config override is a one-line error, not a usage dump."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: an override of a field that doesn't exist
    field = str(e).strip("\"'")
    fail(f"unknown config field '{field}' (in a --config.* override)")
  except (flags.Error, ValueError, TypeError) as e:
    fail(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
