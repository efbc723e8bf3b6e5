"""benchmarks/omgd_step.py times both OMGD methods' step kinds (run as a user would, tiny config)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_step_benchmark(*args):
  return subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "omgd_step.py"), *args],
                        cwd=REPO, capture_output=True, text=True, timeout=1800)


def test_cycle_omgd_step_benchmark_times_the_teacher_and_student_steps():
  result = run_step_benchmark("--config=configs/omgd_cycle.py", "--batch_size=1", "--warmup=0",
                              "--steps=1", "--json")
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.strip().splitlines()
  assert lines[1].startswith("teacher step (G_A + G_B, D_A + D_B):")
  assert lines[2].startswith("student step (selected G_A -> S):")
  record = json.loads(lines[-1])
  assert set(record) == {"precision", "teacher_step_s", "teacher_step_gmac", "student_step_s",
                         "student_step_gmac"}
  assert record["precision"] == "float32"
  assert all(record[k] > 0 for k in record if k != "precision")


def test_step_benchmark_refuses_other_methods_in_one_line():
  result = run_step_benchmark("--config=configs/aguinaldo.py")
  assert result.returncode != 0
  err = result.stderr.strip().splitlines()
  assert len(err) == 1, err
  assert err[0].startswith("error: --config: method 'aguinaldo'") and "configs/omgd_cycle.py" in err[0]
