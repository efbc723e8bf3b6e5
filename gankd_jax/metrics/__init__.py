"""Evaluators by name, declared in `config.eval.evaluators` (as big_vision declares its own).

An evaluator maps (generator outputs by role, batch) to per-example metric arrays inside jit; the
loop masks padded examples and averages. A new metric is one module plus an entry here.
"""

from gankd_jax.metrics import paired

EVALUATORS = {
    "paired": paired.per_example_metrics,
}


def get_evaluators(names):
  unknown = [n for n in names if n not in EVALUATORS]
  if unknown:
    raise ValueError(f"eval.evaluators: unknown evaluator '{unknown[0]}'; choose from "
                     f"{', '.join(EVALUATORS)}")
  return [EVALUATORS[n] for n in names]
