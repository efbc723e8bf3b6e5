"""Seconds per OMGD fused step, for each of the method's step kinds.

  python benchmarks/omgd_step.py --config=configs/omgd.py:unet_s16 --batch_size=4 \
      [--precision=bfloat16] [--json]
  python benchmarks/omgd_step.py --config=configs/omgd_cycle.py:horse2zebra_s16 --batch_size=1 \
      [--precision=bfloat16] [--json]

pix2pix OMGD (configs/omgd.py): the full step (teachers + discriminator + student) and the
student-only step. CycleGAN-OMGD (configs/omgd_cycle.py): the teacher step (G_A + G_B, then D_A +
D_B) and the student step against the selected G_A.

Random inputs at the config's image size; the VGG16 perceptual terms are timed with randomly
initialised VGG weights when no weights file is found (timing only: training never does this).
Reports the median of --steps timed steps after --warmup steps (compilation excluded), and the
step's GMAC/s (XLA's count of its multiply-adds, gankd_jax/stats.py `executed_macs`, over that
time: compare with the machine's peak). Time the PyTorch reference beside it in the same sitting
(benchmarks/README.md): times from another hour are not comparable.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from gankd_jax.cli import fail, parse_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/omgd.py:unet_s16", "Config (optionally :VARIANT).")
flags.DEFINE_integer("batch_size", 4, "Global batch size.")
flags.DEFINE_enum("precision", None, ["float32", "bfloat16"],
                  "config.precision for the step (default: the config's).")
flags.DEFINE_integer("warmup", 1, "Untimed steps per kind after compilation.")
flags.DEFINE_integer("steps", 3, "Timed steps per kind (median reported).")
flags.DEFINE_bool("json", False, "Print {\"full_step_s\": x, \"student_step_s\": y, ...} (CycleGAN-OMGD: "
                  "teacher_step_s for full_step_s) as the last line.")

# method -> its step kinds: (name, label, the phase's training step number).
STEP_KINDS = {
    "omgd": (("full", "full step (teachers + D + student)", 0),
             ("student", "student-only step", 1)),
    "omgd_cycle": (("teacher", "teacher step (G_A + G_B, D_A + D_B)", 0),
                   ("student", "student step (selected G_A -> S)", None)),  # None: after the teachers'.
}


def time_step(step_fn, state, batch, frozen, warmup, steps):
  """(median seconds, GMAC per step, the state after)."""
  import jax
  from gankd_jax import stats
  gmac = stats.executed_macs(step_fn, state, batch, frozen) / 1e9
  state, _ = step_fn(state, batch, frozen)  # Compile.
  jax.block_until_ready(state)
  for _ in range(warmup):
    state, _ = step_fn(state, batch, frozen)
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step_fn(state, batch, frozen)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  return sorted(times)[len(times) // 2], gmac, state


def main(argv):
  del argv
  if FLAGS.config.get("method") not in STEP_KINDS:
    fail(f"--config: method '{FLAGS.config.get('method')}': this benchmark times the OMGD steps "
         "(configs/omgd.py, configs/omgd_cycle.py); for other methods `python -m gankd_jax.main` "
         "logs steps/s")
  from gankd_jax import xla_cpu
  xla_note = xla_cpu.configure(FLAGS.config.data.crop_size)
  import jax
  import jax.numpy as jnp
  from gankd_jax import parallel, train
  from gankd_jax.methods import build_method

  config = FLAGS.config
  config.batch_size = FLAGS.batch_size
  if config.method == "omgd":
    config.n_dis = 2  # Step 0 updates teachers + D, step 1 only the student.
  if FLAGS.precision:
    config.precision = FLAGS.precision
  try:
    method = build_method(config)
  except ValueError as e:
    fail(str(e))
  mesh = parallel.make_mesh()
  size = config.data.crop_size
  keys = jax.random.split(jax.random.key(0), 3)
  local = {"A": jax.random.uniform(keys[0], (FLAGS.batch_size, size, size, 3), minval=-1, maxval=1),
           "B": jax.random.uniform(keys[1], (FLAGS.batch_size, size, size, 3), minval=-1, maxval=1)}
  batch = parallel.global_batch(jax.device_get(local), mesh)
  frozen = method.load_frozen()
  vgg_note = "VGG16 terms on, weights from file"
  if not (config.loss.lambda_style or config.loss.lambda_feature):
    frozen, vgg_note = {}, "VGG16 terms off"
  elif "vgg" not in frozen:
    frozen = {"vgg": method.vgg.init(keys[2], jnp.zeros((1, size, size, 3)))["params"]}
    vgg_note = "VGG16 terms on, random VGG weights (timing only)"
  frozen = parallel.replicate(frozen, mesh)
  state = jax.jit(method.init_state, out_shardings=parallel.replicated(mesh))(keys[2], batch, frozen)

  results = {}
  for name, label, step in STEP_KINDS[config.method]:
    phase = method.phase(method.schedule.teacher_steps if step is None else step)
    seconds, gmac, state = time_step(train.make_train_step(method, mesh, phase), state, batch,
                                     frozen, FLAGS.warmup, FLAGS.steps)
    results[name] = (label, seconds, gmac)
  print(f"{size}x{size}, batch {FLAGS.batch_size}, {mesh.size} device(s) "
        f"({jax.devices()[0].platform}), {config.precision}, {vgg_note}"
        + (f"; {xla_note}" if xla_note else ""))
  width = max(len(label) for label, _, _ in results.values()) + 1
  for label, seconds, gmac in results.values():
    print(f"{label + ':':<{width}} {seconds:.3f} s  {gmac:8.1f} GMAC  {gmac / seconds:6.1f} GMAC/s")
  if FLAGS.json:
    record = {"precision": config.precision}
    for name, (_, seconds, gmac) in results.items():
      record.update({f"{name}_step_s": round(seconds, 4), f"{name}_step_gmac": round(gmac, 2)})
    print(json.dumps(record))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
