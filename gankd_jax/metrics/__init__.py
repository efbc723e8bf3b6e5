"""Evaluators by name, declared in `config.eval.evaluators` (as big_vision declares its own).

Two kinds; a new metric is one module plus an entry here.
- Per-example (`EVALUATORS`): (generator outputs by role, batch) -> per-example metric arrays,
  inside the jitted eval step; the loop masks padded examples and averages.
- Distribution (`distribution.NAMES`: fid, inception_score, kid): accumulate features of every
  evaluation batch and report at the end of the pass (`distribution.build`); their networks' weights
  may be missing, in which case they are skipped with a note, not an error.
"""

from gankd_jax.metrics import distribution, paired, sharpness

EVALUATORS = {
    "paired": paired.per_example_metrics,
    "sharpness": sharpness.per_example_metrics,
}


def get_evaluators(names):
  """The per-example evaluators among `names`; raises on a name of neither kind."""
  unknown = [n for n in names if n not in EVALUATORS and n not in distribution.NAMES]
  if unknown:
    raise ValueError(f"eval.evaluators: unknown evaluator '{unknown[0]}'; choose from "
                     f"{', '.join([*EVALUATORS, *distribution.NAMES])}")
  return [EVALUATORS[n] for n in names if n in EVALUATORS]


def get_distribution_evaluators(eval_config, mesh, batch_size):
  """(evaluators, notes): the distribution evaluators `eval_config.evaluators` names, built."""
  return distribution.build(eval_config.evaluators, eval_config, mesh, batch_size)
