"""Distribution evaluators: metrics of the set of generated images, not of each image.

Declared by name in `config.eval.evaluators` next to the per-example ones ("paired", "sharpness"):
  fid              Frechet Inception Distance of each generator role's outputs to the reference
  inception_score  IS (10 splits) of each role's outputs
  kid              Kernel Inception Distance of each role's outputs to the reference
All three read pytorch-fid's InceptionV3 once (shared). The reference images are the evaluation
batch's targets: `batch["B"]` (paired translation) or `batch["image"]` (unconditional data).
Generator outputs and references are [-1, 1] images; they enter Inception as `(x + 1) / 2`, grey
images repeated to RGB (as pytorch-fid converts them).

Protocol (what the training loop and `gankd_jax.evaluate` call):
  evaluator.start(num_examples) -> a pass; pass.update(outputs, batch, mask) per evaluation batch
  (device arrays, the batch global; `mask` marks real rows); pass.result() -> {"role/metric": v}.
Reference statistics do not change within a run: the first complete pass caches them, later
passes skip the reference images. When the Inception weights cannot be found, `build` returns no
evaluator and a note saying what to get; the caller records the note and carries on.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gankd_jax.metrics import fid, inception_score, kid
from gankd_jax.metrics.features import FeatureExtractor

NAMES = ("fid", "inception_score", "kid")
REFERENCE_KEYS = ("B", "image")
WEIGHTS_FLAG = "--config.eval.inception_weights"


def reference_images(batch) -> Any:
    for key in REFERENCE_KEYS:
        if key in batch:
            return batch[key]
    return None


def to_inception_input(images: jax.Array) -> jax.Array:
    """[-1, 1] NHWC (1 or 3 channels) -> [0, 1] RGB."""
    x = (images.astype(jnp.float32) + 1.0) * 0.5
    return jnp.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x[..., :3]


class InceptionMetrics:
    """The Inception-based evaluators named in `names` (a subset of NAMES), sharing one network."""

    def __init__(self, names: Sequence[str], variables: Any, batch_size: int, mesh,
                 kid_subsets: int = 100, kid_subset_size: int = 1000):
        from gankd_jax.models.inception import InceptionV3
        self.names = tuple(names)
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        model = InceptionV3()
        self.extractor = FeatureExtractor(lambda v, x: model.apply(v, to_inception_input(x)),
                                          variables, batch_size, mesh)
        self.reference: dict[str, Any] | None = None  # Cached after the first complete pass.

    def start(self, num_examples: int) -> "InceptionPass":
        return InceptionPass(self, num_examples)


class InceptionPass:
    def __init__(self, owner: InceptionMetrics, num_examples: int):
        self.owner = owner
        self.num_examples = num_examples
        self.roles: dict[str, dict[str, Any]] = {}
        self.reference = None if owner.reference is not None else self._accumulators(reference=True)

    def _accumulators(self, reference: bool = False) -> dict[str, Any]:
        acc = {"stats": fid.GaussianStats(2048)}
        if "kid" in self.owner.names:
            acc["sample"] = kid.FeatureSample(2048)
        if "inception_score" in self.owner.names and not reference and self.num_examples >= 10:
            acc["is"] = inception_score.InceptionScore(self.num_examples)
        return acc

    def _features(self, images, mask):
        if images.shape[0] != self.owner.extractor.batch_size:
            images = np.asarray(jax.device_get(images))
        return self.owner.extractor(images), mask

    @staticmethod
    def _add(acc, features, mask) -> None:
        acc["stats"].update(features["pool"], mask)
        if "sample" in acc:
            acc["sample"].update(features["pool"], mask)
        if "is" in acc:
            acc["is"].update(features["logits"], mask)

    def update(self, outputs: dict[str, jax.Array], batch, mask) -> None:
        mask = np.asarray(mask, bool)
        for role, images in outputs.items():
            self._add(self.roles.setdefault(role, self._accumulators()), *self._features(images, mask))
        if self.reference is not None:
            real = reference_images(batch)
            if real is not None:
                self._add(self.reference, *self._features(real, mask))

    def result(self) -> dict[str, float]:
        owner = self.owner
        if self.reference is not None and self.reference["stats"].count >= 2:
            owner.reference = {"stats": self.reference["stats"].result(),
                               "sample": self.reference.get("sample")}
        reference = owner.reference
        out = {}
        for role, acc in self.roles.items():
            if "is" in acc:
                out[f"{role}/is"], out[f"{role}/is_std"] = acc["is"].result()
            if reference is None or acc["stats"].count < 2:
                continue  # No reference images in these batches (IS only), or too few samples.
            if "fid" in owner.names:
                out[f"{role}/fid"] = fid.frechet_distance(*acc["stats"].result(), *reference["stats"])
            if "kid" in owner.names:
                out[f"{role}/kid"], out[f"{role}/kid_std"] = kid.kernel_inception_distance(
                    reference["sample"].rows, acc["sample"].rows, owner.kid_subsets, owner.kid_subset_size)
        return out


def build(names: Sequence[str], eval_config, mesh, batch_size: int) -> tuple[list, list[str]]:
    """The distribution evaluators among `names`, and notes for those skipped (one line each)."""
    wanted = [n for n in names if n in NAMES]
    if not wanted:
        return [], []
    from gankd_jax.models import inception
    from gankd_jax.weights import download
    try:
        path = download.resolve(download.INCEPTION_FID, eval_config.get("inception_weights") or None,
                                flag=WEIGHTS_FLAG)
        variables = inception.load_inception(path)
    except ValueError as error:
        return [], [f"{', '.join(wanted)} skipped: {error}"]
    return [InceptionMetrics(wanted, variables, batch_size, mesh)], []
