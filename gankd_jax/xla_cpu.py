"""XLA:CPU options chosen from the workload; they take effect only if set before JAX creates its
CPU backend, so commands call `configure` first thing."""

from __future__ import annotations

import os

# XLA:CPU computes a convolution's weight gradient about 4x faster with its dots in YNNPACK
# (3x3 conv 128->128 on 128x128 maps, batch 4, 2 cores: 408 -> 105 ms), which takes the 256x256
# OMGD fused step from 16.6 to 13.8 s. On 64x64 images the same option makes the fused step
# slower (0.50 -> 0.64 s: many small dots), so training turns it on from 128x128 up.
# Forward-only passes (the inference path, gankd_jax/inference.py) are faster with it at every
# size (batch 1, 2 cores, 256 px: ResNet-9 ngf 64 1720 -> 550 ms, U-Net ngf 64 85 -> 70-82 ms,
# the students unchanged; 64 px: ResNet-9 70 -> 40 ms, U-Net ngf 64 13.3 -> 9.5 ms), so commands
# that only run generators forward (evaluate, translate, generate) ask for `inference=True`.
YNN_DOTS_OPTION = "xla_cpu_experimental_ynn_fusion_type"
YNN_DOTS_FLAG = f"--{YNN_DOTS_OPTION}=dot"
YNN_DOTS_MIN_IMAGE_SIZE = 128


def configure(image_size: int = 0, *, inference: bool = False) -> str | None:
  """Adds the options that suit training on `image_size` images (or, with `inference`, forward
  passes of any size) to XLA_FLAGS; returns a note of what it set.

  Leaves XLA_FLAGS alone when the user already chose the option, or when JAX's backends already
  exist (the option could no longer apply).
  """
  from jax._src import xla_bridge
  current = os.environ.get("XLA_FLAGS", "")
  if ((image_size < YNN_DOTS_MIN_IMAGE_SIZE and not inference) or YNN_DOTS_OPTION in current
      or xla_bridge.backends_are_initialized()):
    return None
  os.environ["XLA_FLAGS"] = f"{current} {YNN_DOTS_FLAG}".strip()
  return f"XLA:CPU: {YNN_DOTS_FLAG} for " + (
      "forward passes" if inference else f"{image_size}x{image_size} images")


# What decides the bits XLA:CPU computes: the instruction set it generates code for and the
# number of threads it splits reductions over. Measured on one machine (README, "Reproducible
# runs"): the same run is bitwise equal under any load; capped at AVX2 it drifts 6 % in 50 steps.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile")


def environment() -> dict[str, object]:
  """The machine facts a run's numbers depend on, for summary.json."""
  import platform
  import jax
  model, flags = platform.processor() or platform.machine(), set()
  try:
    with open("/proc/cpuinfo") as handle:
      for line in handle:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
          model = value.strip()
        elif key.strip() == "flags":
          flags = set(value.split())
          break
  except OSError:
    pass
  cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return {"cpu": model, "isa": [flag for flag in ISA_FLAGS if flag in flags], "cpus": cpus,
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "jax": jax.__version__,
          "backend": jax.default_backend()}
