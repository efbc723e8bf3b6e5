"""One evaluation pass, for the training loop, `gankd_jax.evaluate` and the experiments.

Evaluators are declared by name in the config, as big_vision declares its own:

  config.eval.evaluators.fid = dict(type="fid", roles=("student",), every=1000, num_samples=5000)

  type         paired | sharpness | fid | inception_score | kid | precision_recall (default: the name)
  roles        generator roles it evaluates; () for all of the method's
  every        evaluate every this many steps; 0: at every evaluation of the run (`eval_every`);
               -1: declared but off (turn it on with --config.eval.evaluators.NAME.every=0;
               configs/base.py declares every type, the distribution ones off)
  num_samples  the first N evaluation examples; 0: all the pass covers (eval.max_examples)
  features     distribution types: the feature network, inception (pytorch-fid's InceptionV3,
               default), digit_classifier (metrics/digit_classifier.py, for digits / MNIST) or
               vgg16_fc2 (torchvision VGG16's fc2, precision_recall's default)
  k            precision_recall: the k of the k-NN manifolds (3)
  reference    fid / kid / precision_recall: the real images of the reference side, "eval" (the
               evaluation split's, default) or "train+eval" (the training split's too, prepared
               as for evaluation: CycleGAN's FID statistics are of train + test real images)

Per-example evaluators (paired, sharpness) run inside the jitted evaluation step and are averaged
over the real (unpadded) examples; distribution evaluators accumulate features of every batch and
report at the end. The method says what each role is compared with (`Method.paired_targets`,
`Method.real_images`; with several real sets, e.g. the two domains of unpaired translation,
`Method.compared_with` names each role's set) and which examples count for a role or a real set
(`Method.counted_by`: a batch mask beside the padding, e.g. unpaired evaluation batches repeat the
smaller domain); evaluators know no method. A distribution evaluator whose feature network's
weights cannot be found is skipped with a one-line note, and the rest is reported.

Results are {group: {metric: value}} with group a role ("student") or a role against a target
("student_vs_teacher_wide").
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from gankd_jax import parallel, visualize
from gankd_jax.data import pipeline

PER_EXAMPLE_TYPES = ("paired", "sharpness")
DISTRIBUTION_TYPES = ("fid", "inception_score", "kid", "precision_recall")
TYPES = (*PER_EXAMPLE_TYPES, *DISTRIBUTION_TYPES)
FEATURES = ("inception", "digit_classifier", "vgg16_fc2")
DEFAULT_FEATURES = {"precision_recall": "vgg16_fc2"}  # Else inception.
FIELDS = ("type", "roles", "every", "num_samples", "features", "k", "reference")
REFERENCES = ("eval", "train+eval")
INCEPTION_FLAG = "--config.eval.inception_weights"
VGG_FLAG = "--config.eval.vgg16_weights"
OFF = -1


# --------------------------------------------------------------------------------- declarations
@dataclasses.dataclass(frozen=True)
class EvaluatorSpec:
  name: str
  type: str
  roles: tuple[str, ...] = ()
  every: int = 0
  num_samples: int = 0
  features: str = "inception"
  k: int = 3
  reference: str = "eval"

  def due(self, step: int, eval_every: int, final_step: int) -> bool:
    """Whether it runs at `step` (always at step 0 and at the end, unless off)."""
    if self.every == OFF:
      return False
    return step in (0, final_step) or step % (self.every or eval_every) == 0

  def evaluates(self, role: str) -> bool:
    return not self.roles or role in self.roles


def parse(evaluators) -> list[EvaluatorSpec]:
  """Specs from `config.eval.evaluators` (a mapping name -> fields, or a sequence of names as
  shorthand); one-line ValueErrors name the evaluator and the field."""
  if isinstance(evaluators, (list, tuple)):
    evaluators = {name: {"type": name} for name in evaluators}
  specs = []
  for name, fields in dict(evaluators).items():
    fields = dict(fields)
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
      raise ValueError(f"eval.evaluators.{name}: unknown field '{unknown[0]}'; fields: "
                       f"{', '.join(FIELDS)}")
    kind = fields.pop("type", name)
    if kind not in TYPES:
      raise ValueError(f"eval.evaluators.{name}: unknown type '{kind}'; choose from "
                       f"{', '.join(TYPES)}")
    fields.setdefault("features", DEFAULT_FEATURES.get(kind, "inception"))
    if fields["features"] not in FEATURES:
      raise ValueError(f"eval.evaluators.{name}.features: unknown '{fields['features']}'; choose "
                       f"from {', '.join(FEATURES)}")
    for field in ("every", "num_samples"):
      if int(fields.get(field, 0)) < (OFF if field == "every" else 0):
        raise ValueError(f"eval.evaluators.{name}.{field} must be >= "
                         f"{OFF if field == 'every' else 0}, got {fields[field]}")
    if kind == "precision_recall" and int(fields.get("k", 3)) < 1:
      raise ValueError(f"eval.evaluators.{name}.k must be >= 1, got {fields['k']}")
    if fields.get("reference", "eval") not in REFERENCES:
      raise ValueError(f"eval.evaluators.{name}.reference: unknown '{fields['reference']}'; "
                       f"choose from {', '.join(REFERENCES)}")
    if fields.get("reference", "eval") != "eval" and kind == "inception_score":
      raise ValueError(f"eval.evaluators.{name}.reference: an inception score has no real side")
    fields["roles"] = tuple(fields.get("roles", ()) or ())
    specs.append(EvaluatorSpec(name, kind, **fields))
  return specs


def wants_training_reals(specs: Iterable[EvaluatorSpec]) -> bool:
  """Whether an evaluator that is on takes training images into its reference side."""
  return any(s.reference == "train+eval" and s.every != OFF for s in specs)


def check_roles(specs: list[EvaluatorSpec], generator_roles: Iterable[str]) -> None:
  """A declared role the method does not have is a one-line error."""
  generator_roles = tuple(generator_roles)
  for spec in specs:
    for role in spec.roles:
      if role not in generator_roles:
        raise ValueError(f"eval.evaluators.{spec.name}.roles: this method has no generator role "
                         f"'{role}' (it has {', '.join(generator_roles)})")


# --------------------------------------------------------------------------------- per example
def paired_metrics(outputs, targets, roles) -> dict[str, jax.Array]:
  """PSNR / SSIM / L1 of each role's output against each of its targets."""
  from gankd_jax.losses import image
  metrics = {}
  for role in roles:
    for name, target in targets.get(role, {}).items():
      group = role if name == "target" else f"{role}_vs_{name}"
      generated = outputs[role]
      metrics[f"{group}/psnr"] = image.psnr(generated, target)
      metrics[f"{group}/ssim"] = image.ssim_per_image(generated, target)
      metrics[f"{group}/l1"] = jnp.mean(jnp.abs(generated - target), axis=(1, 2, 3))
  return metrics


def sharpness_metrics(outputs, targets, roles) -> dict[str, jax.Array]:
  from gankd_jax.metrics import sharpness
  return {f"{role}/vol": sharpness.variance_of_laplacian(outputs[role]) for role in roles}


PER_EXAMPLE = {"paired": paired_metrics, "sharpness": sharpness_metrics}


# --------------------------------------------------------------------------------- features
@dataclasses.dataclass
class FeatureNetwork:
  """A frozen network: images in [-1, 1] -> {"features": (N, F), "logits": (N, K) or absent}."""
  name: str
  extractor: Any  # metrics.features.FeatureExtractor
  weights_path: str | None

  def output_dims(self) -> tuple[int, int]:
    """(feature size, number of classes or 0)."""
    shapes = self.extractor.output_shapes()
    return shapes["features"].shape[-1], shapes["logits"].shape[-1] if "logits" in shapes else 0


def _inception(eval_config):
  from gankd_jax.metrics import distribution
  from gankd_jax.models import inception
  from gankd_jax.weights import download
  path = download.resolve(download.INCEPTION_FID, eval_config.get("inception_weights") or None,
                          flag=INCEPTION_FLAG)
  model = inception.InceptionV3()

  def apply(variables, images):
    out = model.apply(variables, distribution.to_inception_input(images))
    return {"features": out["pool"], "logits": out["logits"]}
  return apply, inception.load_inception(path), path


def _digit_classifier(eval_config):
  from gankd_jax.metrics import digit_classifier
  return digit_classifier.apply, digit_classifier.load_weights(), None


def _vgg16_fc2(eval_config):
  from gankd_jax.metrics import distribution
  from gankd_jax.models import vgg16_fc2
  from gankd_jax.weights import download
  path = download.resolve(download.VGG16, eval_config.get("vgg16_weights") or None, flag=VGG_FLAG)
  model = vgg16_fc2.VGG16FC2()
  return (lambda v, x: {"features": model.apply(v, distribution.to_inception_input(x))},
          vgg16_fc2.load_vgg16_fc2(path), path)


FEATURE_LOADERS: dict[str, Callable] = {
    "inception": _inception, "digit_classifier": _digit_classifier, "vgg16_fc2": _vgg16_fc2}


# --------------------------------------------------------------------------------- distribution
class DistributionEvaluator:
  """One declared fid / inception_score / kid / precision_recall over a feature network.

  The real images' side (statistics or feature sample) does not change within a run: the first
  complete pass keeps it (`references`, one per real set; `reference` is the one of a method
  with a single set), later passes skip the real images; `gankd_jax.evaluate` also caches it on
  disk.
  """

  def __init__(self, spec: EvaluatorSpec, network: FeatureNetwork):
    self.spec, self.network = spec, network
    self.network_dim, self.num_classes = network.output_dims()
    if spec.type == "inception_score" and not self.num_classes:
      raise ValueError(f"eval.evaluators.{spec.name}: features '{spec.features}' give no class "
                       "logits for an inception score")
    self.references: dict[str | None, dict[str, np.ndarray]] = {}

  @property
  def reference(self) -> dict[str, np.ndarray] | None:
    """The real images' side of the single real set (None: not known yet)."""
    return self.references.get(None)

  @reference.setter
  def reference(self, value: dict[str, np.ndarray] | None) -> None:
    self.set_stored(None, value)

  def set_stored(self, real_set: str | None, value: dict[str, np.ndarray] | None) -> None:
    """The real side of `real_set` as stored (e.g. read from a cache); None forgets it."""
    if value is None:
      self.references.pop(real_set, None)
    else:
      self.references[real_set] = value

  def _accumulator(self, num_examples: int, real: bool):
    from gankd_jax.metrics import fid, inception_score, kid
    kind = self.spec.type
    if kind == "fid":
      return fid.GaussianStats(self.network_dim)
    if kind in ("kid", "precision_recall"):
      return kid.FeatureSample(self.network_dim)
    if real:
      return None  # IS needs no real images.
    return inception_score.InceptionScore(num_examples, self.num_classes)

  def start(self, num_examples: int, compared_with: Callable[[str], str | None] = lambda role: None):
    """A pass over `num_examples`; `compared_with(role)`: the real set of a role (None: the one)."""
    return _DistributionPass(self, min(num_examples, self.spec.num_samples or num_examples),
                             compared_with)

  def set_reference(self, accumulator, real_set: str | None = None) -> None:
    if self.spec.type == "fid":
      mu, sigma = accumulator.result()
      self.references[real_set] = {"mu": mu, "sigma": sigma}
    else:
      self.references[real_set] = {"rows": accumulator.rows}

  def score(self, accumulator, real_set: str | None = None) -> dict[str, float]:
    from gankd_jax.metrics import fid, kid, precision_recall
    kind = self.spec.type
    reference = self.references.get(real_set)
    if kind == "inception_score":
      value, std = accumulator.result()
      return {"is": value, "is_std": std}
    if kind == "fid":
      return {"fid": fid.frechet_distance(*accumulator.result(), reference["mu"],
                                          reference["sigma"])}
    if kind == "kid":
      value, std = kid.kernel_inception_distance(reference["rows"], accumulator.rows)
      return {"kid": value, "kid_std": std}
    # On this process's devices: every process holds all features and computes the result.
    local = jax.sharding.Mesh(np.asarray(jax.local_devices()), (parallel.DATA_AXIS,))
    return precision_recall.precision_recall(reference["rows"], accumulator.rows,
                                             k=self.spec.k, mesh=local)


class _DistributionPass:
  """One evaluation pass of one evaluator. Each role and each real set counts its own examples
  (the first `num_examples` its mask lets through)."""

  def __init__(self, owner: DistributionEvaluator, num_examples: int,
               compared_with: Callable[[str], str | None]):
    self.owner, self.num_examples, self.compared_with = owner, num_examples, compared_with
    self.roles: dict[str, Any] = {}
    self.real: dict[str | None, Any] = {}  # Real sets whose side is not known yet.
    self.seen: dict[Any, int] = {}

  def _counted(self, key, mask) -> np.ndarray:
    """`mask` less the examples past `num_examples` of `key` (a role or ("real", set))."""
    mask = np.asarray(mask, bool)
    mask = mask & (self.seen.get(key, 0) + np.cumsum(mask) <= self.num_examples)
    self.seen[key] = self.seen.get(key, 0) + int(np.sum(mask))
    return mask

  def _update(self, accumulator, features, mask) -> None:
    if self.owner.spec.type == "inception_score":
      accumulator.update(features["logits"], mask)
    else:
      accumulator.update(features["features"], mask)

  def needs_training_reals(self, real_sets) -> bool:
    return self.owner.spec.reference == "train+eval" and any(
        s not in self.owner.references for s in real_sets)

  def add_training_reals(self, features_of: Callable[[Any], dict], mask_of, real_sets) -> None:
    """Training images of the reference side (spec.reference train+eval), all of them; the
    evaluation split's are added by `update`."""
    for real_set in real_sets:
      if real_set in self.owner.references:
        continue
      mask = np.asarray(mask_of(real_set), bool)
      if mask.any():
        accumulator = self.real.setdefault(real_set, self.owner._accumulator(0, True))
        self._update(accumulator, features_of(("real", real_set)), mask)

  def update(self, features_of: Callable[[Any], dict], roles, mask_of: Callable[[Any], Any],
             real_sets) -> None:
    """`features_of(role or ("real", set))`: this batch's features (computed once per network);
    `mask_of(role or set)`: the examples of this batch that count for it; `real_sets`: the
    real sets this batch holds."""
    owner = self.owner
    if owner.spec.type == "inception_score" and self.num_examples < 10:
      return  # IS is over 10 splits.
    for role in roles:
      if owner.spec.evaluates(role):
        mask = self._counted(role, mask_of(role))
        if mask.any():
          accumulator = self.roles.setdefault(role, owner._accumulator(self.num_examples, False))
          self._update(accumulator, features_of(role), mask)
    if owner.spec.type == "inception_score":
      return  # No real side.
    for real_set in real_sets:
      if real_set in owner.references:
        continue
      mask = self._counted(("real", real_set), mask_of(real_set))
      if mask.any():
        accumulator = self.real.setdefault(real_set, owner._accumulator(self.num_examples, True))
        self._update(accumulator, features_of(("real", real_set)), mask)

  def result(self) -> dict[str, float]:
    owner = self.owner
    for real_set, accumulator in self.real.items():
      if self._count(accumulator) >= 2:
        owner.set_reference(accumulator, real_set)
    out = {}
    for role, accumulator in self.roles.items():
      real_set = self.compared_with(role)
      if owner.spec.type != "inception_score" and (real_set not in owner.references or
                                                   self._count(accumulator) < 2):
        continue  # Too few samples (or no real images in these batches).
      out.update({f"{role}/{k}": v for k, v in owner.score(accumulator, real_set).items()})
    return out

  @staticmethod
  def _count(accumulator) -> int:
    return int(getattr(accumulator, "count", None) or len(getattr(accumulator, "rows", ())))


# --------------------------------------------------------------------------------- building
@dataclasses.dataclass
class Evaluators:
  """What a run evaluates with: specs, built distribution evaluators, notes of skipped ones."""
  specs: list[EvaluatorSpec]
  distribution: dict[str, DistributionEvaluator]
  notes: list[str]

  def distribution_specs(self) -> list[EvaluatorSpec]:
    """The specs of the distribution evaluators that were built (not skipped)."""
    return [e.spec for e in self.distribution.values()]

  def set_roles(self, roles: tuple[str, ...]) -> None:
    """Evaluates only `roles` from now on (keeping what the evaluators learnt of the real images)."""
    self.specs = [dataclasses.replace(spec, roles=roles) for spec in self.specs]
    for evaluator in self.distribution.values():
      evaluator.spec = dataclasses.replace(evaluator.spec, roles=roles)

  def due(self, step: int, eval_every: int, final_step: int, *, every_step: bool = False
          ) -> "Evaluators":
    """Those due at `step`; `every_step`: every one that is on."""
    specs = [s for s in self.specs if s.due(step, eval_every, final_step)
             or (every_step and s.every != OFF)]
    names = {s.name for s in specs}
    return Evaluators(specs, {n: e for n, e in self.distribution.items() if n in names},
                      self.notes)


def build(eval_config, mesh, batch_size: int, precision: str = "float32") -> Evaluators:
  """The declared evaluators, with their feature networks loaded once each (shared) and run in
  `precision` (the run's config.precision)."""
  from gankd_jax.metrics.features import FeatureExtractor
  from gankd_jax.models import layers
  specs = parse(eval_config.evaluators)
  networks: dict[str, FeatureNetwork | str] = {}
  distribution, notes = {}, []
  for spec in specs:
    if spec.type not in DISTRIBUTION_TYPES or spec.every == OFF:
      continue
    if spec.features not in networks:
      try:
        apply, variables, path = FEATURE_LOADERS[spec.features](eval_config)
        networks[spec.features] = FeatureNetwork(
            spec.features, FeatureExtractor(layers.with_precision(precision, apply), variables,
                                            batch_size, mesh), path)
      except ValueError as error:
        networks[spec.features] = str(error)
    network = networks[spec.features]
    if isinstance(network, str):
      notes.append(f"{spec.name} skipped: {network}")
      continue
    distribution[spec.name] = DistributionEvaluator(spec, network)
  return Evaluators(specs, distribution, notes)


# --------------------------------------------------------------------------------- the pass
@dataclasses.dataclass
class PassResult:
  results: dict[str, dict[str, float]]  # group -> metric -> value
  num_examples: int
  columns: list[np.ndarray]             # Sample-grid columns.
  roles: list[str]                      # Generator roles the method returned.
  labels: list[str]                     # The columns' labels (Method.sample_columns' keys).


def make_eval_step(method, mesh, specs: list[EvaluatorSpec]):
  """Jitted `(state, batch, frozen) -> (batch, outputs, real images, per-example metrics)`."""
  from gankd_jax.models import layers
  per_example = [s for s in specs if s.type in PER_EXAMPLE_TYPES]

  # A method without a config (a test's stand-in) evaluates in float32.
  @functools.partial(layers.with_precision, layers.precision_of(getattr(method, "config", None) or {}))
  def step(state, batch, frozen):
    outputs = method.generate(state, batch, frozen)
    targets = method.paired_targets(batch, outputs)
    metrics = {}
    for spec in per_example:
      roles = [r for r in outputs if spec.evaluates(r)]
      metrics.update(PER_EXAMPLE[spec.type](outputs, targets, roles))
    return batch, outputs, method.real_images(batch), metrics

  rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  # Outputs replicated so every process can read the whole batch without extra collectives.
  return jax.jit(step, in_shardings=(rep, shard, rep), out_shardings=rep)


def evaluation_pass(method, state, frozen, dataset, mesh, evaluators: Evaluators, *,
                    batch_size: int, max_examples: int = 0, num_sample_images: int = 8,
                    eval_step=None, training_reals=None) -> PassResult:
  """One pass over the first `max_examples` (0: all) examples of `dataset`: per-example means,
  distribution metrics and the sample grid's columns. Every process computes it.
  `training_reals`: the training split prepared as for evaluation (`data.build_dataset(...,
  "train_eval")`), read first when an evaluator's reference side wants it and lacks it."""
  batch_size = -(-batch_size // mesh.size) * mesh.size
  num_examples = min(dataset.num_examples, max_examples or dataset.num_examples)
  eval_step = eval_step or make_eval_step(method, mesh, evaluators.specs)
  passes = [e.start(num_examples, method.compared_with)
            for e in evaluators.distribution.values()]
  _add_training_reals(method, training_reals, mesh, passes, batch_size)
  sums: dict[str, float] = {}
  counts: dict[str, int] = {}
  count, roles, labels = 0, [], []
  samples = visualize.SampleRows(num_examples, num_sample_images)
  for local in pipeline.eval_batches(dataset, batch_size, jax.process_index(),
                                     jax.process_count(), max_examples=num_examples):
    on_device = eval_step(state, parallel.global_batch(local, mesh), frozen)
    batch, outputs, _, per_example = jax.device_get(on_device)
    roles = roles or [role for role in method.generator_roles if role in outputs]
    mask = np.asarray(batch["mask"], bool)
    mask_of = functools.partial(_counted_mask, method, batch, mask)
    if passes:  # Features from the device arrays: no host round trip.
      features_of = _feature_cache(on_device[1], on_device[2])
      real = on_device[2]
      real_sets = [] if real is None else list(real) if isinstance(real, dict) else [None]
      for evaluator_pass in passes:
        evaluator_pass.update(functools.partial(features_of, evaluator_pass.owner.network),
                              roles, mask_of, real_sets)
    for name, values in per_example.items():
      # "role/metric" or "role_vs_target/metric": counted as the role's examples.
      counted = mask_of(name.split("/", 1)[0].split("_vs_", 1)[0])
      sums[name] = sums.get(name, 0.0) + float(np.sum(np.asarray(values, np.float64)[counted]))
      counts[name] = counts.get(name, 0) + int(counted.sum())
    count += int(mask.sum())
    labelled = method.sample_columns(batch, outputs)
    labels = list(labelled)
    samples.add(len(mask), lambda: list(labelled.values()))
  results: dict[str, dict[str, float]] = {}
  for name, total in sums.items():
    group, metric = name.split("/", 1)
    results.setdefault(group, {})[metric] = total / max(counts[name], 1)
  for evaluator_pass in passes:
    for name, value in evaluator_pass.result().items():
      group, metric = name.split("/", 1)
      results.setdefault(group, {})[metric] = value
  return PassResult(results, count, samples.columns(), roles, labels)


def compared_real_sets(method) -> list[str | None]:
  """The real sets the method's generators are compared with (None: the one real set), sorted."""
  return sorted({method.compared_with(role) for role in method.generator_roles},
                key=lambda s: (s is not None, s or ""))


def _add_training_reals(method, dataset, mesh, passes, batch_size: int) -> None:
  """The real images of `dataset` into the reference side of the passes that want them."""
  wanting = [p for p in passes if p.needs_training_reals(compared_real_sets(method))]
  if not wanting:
    return
  if dataset is None:
    names = ", ".join(p.owner.spec.name for p in wanting)
    raise ValueError(f"eval.evaluators.{names}: reference=train+eval, but no training images were "
                     "given to the evaluation pass")
  rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  reals_step = jax.jit(lambda batch: (batch, method.real_images(batch)), in_shardings=(shard,),
                       out_shardings=rep)
  for local in pipeline.eval_batches(dataset, batch_size, jax.process_index(),
                                     jax.process_count()):
    on_device = reals_step(parallel.global_batch(local, mesh))
    batch = jax.device_get(on_device[0])
    mask_of = functools.partial(_counted_mask, method, batch, np.asarray(batch["mask"], bool))
    real = on_device[1]
    features_of = _feature_cache({}, real)
    present = [None] if not isinstance(real, dict) else list(real)
    for evaluator_pass in wanting:
      evaluator_pass.add_training_reals(functools.partial(features_of, evaluator_pass.owner.network),
                                        mask_of, present)


def _counted_mask(method, batch, mask, name) -> np.ndarray:
  """The examples of `batch` that count for `name` (a role or a real set): the padding mask, and
  the method's own mask for it (`Method.counted_by`)."""
  key = method.counted_by(name)
  return mask if key is None else mask & (np.asarray(batch[key]) > 0)


def _feature_cache(outputs, real):
  """features_of(network, role or ("real", set)) for one batch, each computed at most once."""
  cache = {}

  def features_of(network: FeatureNetwork, key):
    if (network.name, key) not in cache:
      if isinstance(key, tuple):  # ("real", set): set None is the single real array.
        images = real if key[1] is None else real[key[1]]
      else:
        images = outputs[key]
      if images.shape[0] != network.extractor.batch_size:
        images = np.asarray(jax.device_get(images))
      cache[network.name, key] = network.extractor(images)
    return cache[network.name, key]
  return features_of


def format_results(results: dict[str, dict[str, float]]) -> str:
  return "; ".join(f"{group} " + " ".join(f"{k}={v:.4g}" for k, v in values.items())
                   for group, values in results.items())
