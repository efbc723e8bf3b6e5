"""Runs N local CPU processes of a multi-process JAX program, to test multi-host code on one machine.

    python launch/local_multiprocess.py --num_processes=2 --devices_per_process=4 -- \
        --config=configs/omgd.py --workdir=runs/mp

starts `python -m gankd_jax.main <args> --coordinator_address=127.0.0.1:PORT --num_processes=2
--process_id=i` for i = 0, 1, each with JAX_PLATFORMS=cpu and JAX_NUM_CPU_DEVICES=4, so the run
sees 8 global devices across 2 processes, exactly as on a 2-host machine. Every output line is
prefixed with `[p<i>]`. SIGTERM/SIGINT are forwarded to every process (a second one kills them).
If a process fails the others are killed, and the exit status is that of the first one to fail.

As a library: `launch_local(args, num_processes, devices_per_process, module=..., env=...)`.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Mapping, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DISTRIBUTED_FLAGS = ("--coordinator_address", "--num_processes", "--process_id")
TIMEOUT_STATUS = 124  # What coreutils `timeout` returns.
KILL_GRACE_SECONDS = 5.0
POLL_SECONDS = 0.05


def free_port() -> int:
  """A TCP port nobody listens on right now (the kernel's pick for port 0)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def child_command(args: Sequence[str], module: str, coordinator: str, num_processes: int,
                  process_id: int) -> list[str]:
  return [sys.executable, "-m", module, *args, f"--coordinator_address={coordinator}",
          f"--num_processes={num_processes}", f"--process_id={process_id}"]


def child_env(base: Mapping[str, str], devices_per_process: int) -> dict[str, str]:
  """CPU-only JAX with `devices_per_process` devices; the repo importable from any directory."""
  env = dict(base)
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_NUM_CPU_DEVICES"] = str(devices_per_process)
  env["PYTHONUNBUFFERED"] = "1"  # Lines show up as they are printed, not when a buffer fills.
  paths = [REPO_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
  env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
  return env


def exit_status(returncode: int) -> int:
  """Popen's -N for "killed by signal N" as a shell would report it (128 + N)."""
  return 128 - returncode if returncode < 0 else returncode


def _check_arguments(args: Sequence[str], num_processes: int, devices_per_process: int) -> None:
  if num_processes < 1:
    raise ValueError(f"num_processes={num_processes} must be at least 1")
  if devices_per_process < 1:
    raise ValueError(f"devices_per_process={devices_per_process} must be at least 1")
  for arg in args:
    if arg.split("=", 1)[0] in DISTRIBUTED_FLAGS:
      raise ValueError(f"{arg.split('=', 1)[0]} is set by the launcher; remove it from the arguments")


def _copy_prefixed(stream, prefix: str, lock: threading.Lock) -> None:
  for raw in iter(stream.readline, b""):
    line = raw.decode("utf-8", errors="replace").rstrip("\n")
    with lock:
      sys.stdout.write(f"{prefix} {line}\n")
      sys.stdout.flush()
  stream.close()


def _send(processes: Sequence[subprocess.Popen], signum: int) -> None:
  for p in processes:
    if p.poll() is None:
      try:
        p.send_signal(signum)
      except ProcessLookupError:
        pass


def _stop_all(processes: Sequence[subprocess.Popen]) -> None:
  """SIGTERM, then SIGKILL whatever is still running after a grace period."""
  _send(processes, signal.SIGTERM)
  deadline = time.monotonic() + KILL_GRACE_SECONDS
  while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
    time.sleep(POLL_SECONDS)
  _send(processes, signal.SIGKILL)
  for p in processes:
    p.wait()


class _ForwardSignals:
  """Forwards SIGTERM/SIGINT to the children; a second signal kills them."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, processes: Sequence[subprocess.Popen]):
    self.processes = processes
    self.received: int | None = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    first = self.received is None
    self.received = self.received or signum
    _send(self.processes, signum if first else signal.SIGKILL)

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


def _supervise(processes: Sequence[subprocess.Popen], forwarder: _ForwardSignals,
               timeout: float | None) -> int:
  """Waits for all processes; the first failure (or the timeout) stops the others."""
  deadline = None if timeout is None else time.monotonic() + timeout
  while True:
    codes = [p.poll() for p in processes]
    failed = [c for c in codes if c not in (None, 0)]
    if failed:
      first = failed[0]
      _stop_all(processes)
      return exit_status(first)
    if all(c == 0 for c in codes):
      return 128 + forwarder.received if forwarder.received else 0
    if deadline is not None and time.monotonic() > deadline:
      sys.stderr.write(f"launch_local: timed out after {timeout} s; stopping all processes\n")
      _stop_all(processes)
      return TIMEOUT_STATUS
    time.sleep(POLL_SECONDS)


def launch_local(args: Sequence[str], num_processes: int, devices_per_process: int,
                 module: str = "gankd_jax.main", env: Mapping[str, str] | None = None,
                 timeout: float | None = None) -> int:
  """Runs `python -m module args` as `num_processes` coordinated CPU processes; returns the status.

  0 when all succeed; otherwise the status of the first process that failed (128 + N if killed
  by signal N), 124 after `timeout` seconds, or 128 + N after the launcher got signal N.
  """
  _check_arguments(args, num_processes, devices_per_process)
  coordinator = f"127.0.0.1:{free_port()}"
  environment = child_env(os.environ if env is None else env, devices_per_process)
  lock = threading.Lock()
  processes, copiers = [], []
  forwarder = _ForwardSignals(processes)
  with forwarder:
    try:
      for i in range(num_processes):
        # Own session: a terminal's Ctrl-C reaches only the launcher, which forwards it once.
        p = subprocess.Popen(child_command(args, module, coordinator, num_processes, i),
                             env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        processes.append(p)
        copier = threading.Thread(target=_copy_prefixed, args=(p.stdout, f"[p{i}]", lock),
                                  daemon=True)
        copier.start()
        copiers.append(copier)
      status = _supervise(processes, forwarder, timeout)
    except BaseException:
      _stop_all(processes)
      raise
  for copier in copiers:
    copier.join(timeout=KILL_GRACE_SECONDS)  # A leftover grandchild may hold the pipe open.
  return status


def parse_command_line(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  """Launcher flags before `--`, the program's arguments after it."""
  argv = list(argv)
  split = argv.index("--") if "--" in argv else len(argv)
  parser = argparse.ArgumentParser(
      prog="launch/local_multiprocess.py",
      description="Run N local CPU processes of a multi-process JAX program.",
      usage="%(prog)s --num_processes=N --devices_per_process=D [--module=M] [--timeout=S] "
            "-- ARGS...")
  parser.add_argument("--num_processes", type=int, default=2,
                      help="processes to start (default: 2)")
  parser.add_argument("--devices_per_process", type=int, default=4,
                      help="CPU devices each process sees (default: 4)")
  parser.add_argument("--module", default="gankd_jax.main",
                      help="module run with `python -m` (default: gankd_jax.main)")
  parser.add_argument("--timeout", type=float, default=None,
                      help="seconds before all processes are stopped (exit status 124)")
  return parser.parse_args(argv[:split]), argv[split + 1:]


def main(argv: Sequence[str]) -> int:
  options, args = parse_command_line(argv)
  try:
    return launch_local(args, options.num_processes, options.devices_per_process,
                        module=options.module, timeout=options.timeout)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
