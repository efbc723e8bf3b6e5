"""The launchers: local multi-process runs for real, the TPU and SLURM scripts with stand-in tools.

The local launcher runs a throwaway program in 2 processes x 2 CPU devices that builds a global
array from per-process data, the way the training loop does. gcloud, srun and scontrol are not
installed here: the scripts are checked with DRY_RUN=1 and with small stand-in executables.
"""

import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "launch"))

import local_multiprocess  # noqa: E402

TPU_SCRIPT = os.path.join(REPO_ROOT, "launch", "tpu_pod.sh")
SLURM_SCRIPT = os.path.join(REPO_ROOT, "launch", "slurm_gpu.sbatch")

GLOBAL_SUM_PROGRAM = """
import argparse
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

parser = argparse.ArgumentParser()
parser.add_argument("--coordinator_address")
parser.add_argument("--num_processes", type=int)
parser.add_argument("--process_id", type=int)
flags = parser.parse_args()
jax.distributed.initialize(flags.coordinator_address, flags.num_processes, flags.process_id)
mesh = Mesh(np.asarray(jax.devices()), ("data",))
n = jax.local_device_count()
local = np.arange(n, dtype=np.float32) + n * jax.process_index() + 1  # 1..n, n+1..2n, ...
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local)
total = jax.jit(lambda v: v.sum(), out_shardings=NamedSharding(mesh, P()))(x)
print(f"devices={jax.device_count()} process={jax.process_index()} sum={float(total):g}")
"""

# Process 1 fails at once; process 0 sleeps for an hour unless killed (the launcher's timeout in
# the test, far below that, would then end the launch with status 124 instead of process 1's 3).
FAILING_PROGRAM = """
import argparse, sys, time
parser = argparse.ArgumentParser()
parser.add_argument("--coordinator_address"); parser.add_argument("--num_processes", type=int)
parser.add_argument("--process_id", type=int)
if parser.parse_args().process_id == 1:
  sys.exit(3)
time.sleep(3600)
"""

# Waits for SIGTERM and reports it, as the training loop checkpoints and stops on SIGTERM.
SIGTERM_PROGRAM = """
import argparse, signal, sys, time
parser = argparse.ArgumentParser()
parser.add_argument("--coordinator_address"); parser.add_argument("--num_processes", type=int)
parser.add_argument("--process_id", type=int)
parser.parse_args()
def stop(signum, frame):
  print("got SIGTERM", flush=True)
  sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
time.sleep(3600)
"""


def _write_module(directory, name: str, source: str) -> None:
  (directory / f"{name}.py").write_text(textwrap.dedent(source))


def _env_with_path(directory) -> dict:
  return {**os.environ, "PYTHONPATH": str(directory)}


def test_two_processes_see_all_devices_and_the_global_sum(tmp_path, capfd):
  _write_module(tmp_path, "global_sum", GLOBAL_SUM_PROGRAM)
  status = local_multiprocess.launch_local([], num_processes=2, devices_per_process=2,
                                           module="global_sum", env=_env_with_path(tmp_path),
                                           timeout=3600)  # hang guard
  out = capfd.readouterr().out
  assert status == 0, out
  # Data 1, 2 on process 0 and 3, 4 on process 1: the sum over the global array is 10.
  assert "[p0] devices=4 process=0 sum=10" in out.splitlines()
  assert "[p1] devices=4 process=1 sum=10" in out.splitlines()


def test_a_failing_process_stops_the_others_and_sets_the_status(tmp_path, capfd):
  _write_module(tmp_path, "fails", FAILING_PROGRAM)
  status = local_multiprocess.launch_local([], num_processes=2, devices_per_process=1,
                                           module="fails", env=_env_with_path(tmp_path),
                                           timeout=600)
  assert status == 3  # Process 0 was stopped, not waited for (that would end in 124).


def test_timeout_stops_everything(tmp_path, capfd):
  _write_module(tmp_path, "sleeps", SIGTERM_PROGRAM)
  status = local_multiprocess.launch_local([], num_processes=2, devices_per_process=1,
                                           module="sleeps", env=_env_with_path(tmp_path),
                                           timeout=2)
  assert status == local_multiprocess.TIMEOUT_STATUS


def test_sigterm_is_forwarded_to_every_process(tmp_path):
  _write_module(tmp_path, "waits", SIGTERM_PROGRAM)
  launcher = subprocess.Popen(
      [sys.executable, os.path.join(REPO_ROOT, "launch", "local_multiprocess.py"),
       "--num_processes=2", "--devices_per_process=1", "--module=waits", "--timeout=600"],
      env=_env_with_path(tmp_path), stdout=subprocess.PIPE, text=True)
  ready = set()
  while len(ready) < 2:
    line = launcher.stdout.readline()
    assert line, "launcher ended before its processes were ready"
    if line.endswith("ready\n"):
      ready.add(line.split()[0])
  launcher.send_signal(signal.SIGTERM)
  out, _ = launcher.communicate(timeout=3600)  # hang guard
  assert {"[p0] got SIGTERM", "[p1] got SIGTERM"} <= set(out.splitlines())
  assert launcher.returncode == 128 + signal.SIGTERM


@pytest.mark.parametrize("args, message", [
    (["--process_id=0"], "--process_id is set by the launcher"),
    (["--coordinator_address=h:1"], "--coordinator_address is set by the launcher"),
])
def test_distributed_flags_are_rejected(args, message):
  with pytest.raises(ValueError, match=message):
    local_multiprocess.launch_local(args, num_processes=2, devices_per_process=1)


def test_command_line_splits_launcher_flags_from_program_arguments():
  options, args = local_multiprocess.parse_command_line(
      ["--num_processes=3", "--devices_per_process=2", "--", "--config=configs/omgd.py",
       "--workdir=/tmp/x"])
  assert (options.num_processes, options.devices_per_process) == (3, 2)
  assert args == ["--config=configs/omgd.py", "--workdir=/tmp/x"]
  command = local_multiprocess.child_command(args, "gankd_jax.main", "127.0.0.1:5", 3, 1)
  assert command[1:] == ["-m", "gankd_jax.main", "--config=configs/omgd.py", "--workdir=/tmp/x",
                         "--coordinator_address=127.0.0.1:5", "--num_processes=3",
                         "--process_id=1"]
  env = local_multiprocess.child_env({"XLA_FLAGS": "--xla_x=1", "PYTHONPATH": "/a"}, 2)
  assert env["JAX_PLATFORMS"] == "cpu" and env["JAX_NUM_CPU_DEVICES"] == "2"
  assert env["XLA_FLAGS"] == "--xla_x=1"
  assert env["PYTHONPATH"].split(os.pathsep) == [REPO_ROOT, "/a"]


# ---- Shell scripts ----------------------------------------------------------------------------

@pytest.mark.parametrize("script", [TPU_SCRIPT, SLURM_SCRIPT])
def test_shell_scripts_parse(script):
  subprocess.run(["bash", "-n", script], check=True)


def _stand_in(directory, name: str, body: str) -> None:
  path = directory / name
  path.write_text("#!/usr/bin/env bash\n" + textwrap.dedent(body))
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _tpu_env(tmp_path, **settings) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in ("NUM_WORKERS", "KEEP", "REUSE")}
  env.update(PROJECT="my-project", ZONE="us-central2-b", TPU_NAME="omgd-pod", ACCELERATOR="v4-32",
             WORKDIR="gs://my-bucket/runs/omgd", CONFIG="configs/omgd.py:unet_s16",
             EXTRA_ARGS="--config.batch_size=64", LOG_DIR=str(tmp_path / "logs"),
             PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
  env.update(settings)
  return env


def test_tpu_dry_run_prints_the_gcloud_commands(tmp_path):
  (tmp_path / "bin").mkdir()
  _stand_in(tmp_path / "bin", "gcloud", "touch \"$0.was-run\"; exit 1\n")
  result = subprocess.run([TPU_SCRIPT], env=_tpu_env(tmp_path, DRY_RUN="1", NUM_WORKERS="4"),
                          capture_output=True, text=True, check=True)
  lines = result.stdout.splitlines()
  where = "--project=my-project --zone=us-central2-b"
  assert lines[0] == (f"gcloud compute tpus tpu-vm create omgd-pod {where} "
                      "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base")
  assert f"gcloud compute tpus tpu-vm scp gankd_jax.tgz omgd-pod:gankd_jax.tgz {where} " \
         "--worker=all" in lines
  installs = [l for l in lines if "--worker=all" in l and "jax[tpu]==" in l]
  assert len(installs) == 1 and "requirements" in installs[0]
  trains = [l for l in lines if "gankd_jax.main" in l]
  assert len(trains) == 4
  for worker, line in enumerate(trains):
    assert line.startswith(f"gcloud compute tpus tpu-vm ssh omgd-pod {where} --worker={worker} ")
    assert ("--config=configs/omgd.py:unet_s16 --workdir=gs://my-bucket/runs/omgd "
            "--num_processes=4 --config.batch_size=64") in line
    assert line.endswith(f"> {tmp_path}/logs/worker-{worker}.log 2>&1 &")
  assert lines[-1] == f"gcloud compute tpus tpu-vm delete omgd-pod {where} --quiet"
  assert not (tmp_path / "bin" / "gcloud.was-run").exists()
  assert not (tmp_path / "logs").exists()


def test_tpu_dry_run_with_keep_and_a_git_url(tmp_path):
  result = subprocess.run(
      [TPU_SCRIPT], capture_output=True, text=True, check=True,
      env=_tpu_env(tmp_path, DRY_RUN="1", NUM_WORKERS="2", KEEP="1",
                   REPO_URL="https://example.com/gankd_jax.git", REPO_REF="v1"))
  assert "git clone --depth=1 --branch v1 https://example.com/gankd_jax.git" in result.stdout
  assert " scp " not in result.stdout
  assert " delete " not in result.stdout


def test_tpu_help_and_missing_settings(tmp_path):
  result = subprocess.run([TPU_SCRIPT, "--help"], capture_output=True, text=True, check=True)
  assert "DRY_RUN=1" in result.stdout and "ACCELERATOR" in result.stdout
  env = _tpu_env(tmp_path)
  del env["PROJECT"]
  result = subprocess.run([TPU_SCRIPT], env=env, capture_output=True, text=True)
  assert result.returncode != 0 and "PROJECT" in result.stderr


GCLOUD_STAND_IN = """\
echo "$*" >> "$GCLOUD_LOG"
case " $* " in
  *" create "*) exit "${FAIL_CREATE:-0}" ;;
  *" describe "*) echo "10.0.0.1;10.0.0.2" ;;
  *" --worker=1 "*) echo "worker 1 trained"; exit "${FAIL_WORKER1:-0}" ;;
  *" --worker=0 "*) echo "worker 0 trained" ;;
esac
"""


@pytest.mark.parametrize("fail_create, fail_worker, status, deleted", [
    ("0", "0", 0, True),   # Trains on the 2 workers gcloud reports, then deletes the pod.
    ("0", "1", 1, True),   # A failed worker fails the script; the pod is still deleted.
    ("1", "0", 1, False),  # Creation failed: whatever holds that name is not ours to delete.
])
def test_tpu_run_with_a_stand_in_gcloud(tmp_path, fail_create, fail_worker, status, deleted):
  (tmp_path / "bin").mkdir()
  _stand_in(tmp_path / "bin", "gcloud", GCLOUD_STAND_IN)
  log = tmp_path / "gcloud.log"
  result = subprocess.run(
      [TPU_SCRIPT], capture_output=True, text=True,
      env=_tpu_env(tmp_path, GCLOUD_LOG=str(log), FAIL_CREATE=fail_create,
                   FAIL_WORKER1=fail_worker))
  assert result.returncode == status, result.stderr
  calls = log.read_text().splitlines()
  assert any(" delete omgd-pod " in c for c in calls) == deleted
  if fail_create == "0":
    assert sum("--num_processes=2" in c for c in calls) == 2
    for worker in (0, 1):
      assert (tmp_path / "logs" / f"worker-{worker}.log").read_text() == f"worker {worker} trained\n"


def test_slurm_script_starts_one_process_per_node_with_all_its_gpus(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _stand_in(bin_dir, "scontrol", 'printf "gpu-node-07\\ngpu-node-08\\n"\n')
  # srun: runs its command once per task, the way SLURM would on two nodes with 4 GPUs each.
  _stand_in(bin_dir, "srun", """\
      while [[ "$1" == --* ]]; do shift; done
      for id in 0 1; do
        SLURM_NTASKS=2 SLURM_PROCID=$id SLURM_LOCALID=0 SLURM_GPUS_ON_NODE=4 "$@"
      done
      """)
  _stand_in(bin_dir, "fake_python", 'echo "JAX_LOCAL_DEVICE_IDS=$JAX_LOCAL_DEVICE_IDS $*"\n')
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
         "SLURM_JOB_NODELIST": "gpu-node-[07-08]", "SLURM_SUBMIT_DIR": str(tmp_path),
         "WORKDIR": "/shared/runs/omgd", "PYTHON": str(bin_dir / "fake_python")}
  result = subprocess.run(["bash", SLURM_SCRIPT, "--config.batch_size=64"], env=env,
                          capture_output=True, text=True, check=True)
  runs = [l for l in result.stdout.splitlines() if l.startswith("JAX_LOCAL_DEVICE_IDS")]
  coordinator = f"gpu-node-07:{20000 + 4242}"
  assert runs == [
      f"JAX_LOCAL_DEVICE_IDS=0,1,2,3 -m gankd_jax.main --config=configs/omgd.py "
      f"--workdir=/shared/runs/omgd --config.batch_size=64 --coordinator_address={coordinator} "
      f"--num_processes=2 --process_id={i}" for i in (0, 1)]
