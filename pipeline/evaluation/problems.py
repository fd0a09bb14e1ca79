"""What is evaluated: a `Problem` is a picklable recipe of a model and its feature space, built
again in every worker — a trained teacher against its test split, or a Gaussian mixture's exact
denoiser against exact samples.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import numpy as np

from pipeline.errors import choose
from pipeline.evaluation.features import features_in_batches, pixel_features


@dataclasses.dataclass(frozen=True)
class Problem:
    """Picklable recipe of a model and its feature space (built again in every worker).

    model(): a teacher-like object (`schedule`, `data_shape`, `num_classes` (0: unconditional),
    `eps_fn(y, w=None)`); features(): feature_fn(x [B, ...]) -> [B, F] (jittable), or None for
    the flattened samples themselves; reference(feature_fn): reference features [M, F] (NumPy;
    None: sampling only). label: how results name the feature space ("digit-classifier", ...).
    prepare(): run once by the driver before the workers start (e.g. train and cache a feature
    network). moments=False: the "features" are images for the driver to featurize (Inception),
    so the workers return them whole and compute no moments.
    """

    model: Callable[[], Any]
    reference: Callable[[Callable], np.ndarray] | None = None  # None: sampling only, nothing to score
    features: Callable[[], Callable] | None = None
    label: str = "samples"
    prepare: Callable[[], Any] | None = None
    moments: bool = True


@dataclasses.dataclass(frozen=True)
class AnalyticModel:
    """A Gaussian mixture's exact denoiser as an unconditional teacher."""

    mixture: Any
    schedule: Any
    num_classes: int = 0

    @property
    def data_shape(self) -> tuple:
        return (self.mixture.dim,)

    def eps_fn(self, y=None, w=None):
        """The exact eps_fn (labels and guidance do not apply)."""
        return self.mixture.eps_fn(self.schedule)


def _analytic_model(means, stds, weights, schedule):
    from pipeline import schedules
    from pipeline.models.analytic import GaussianMixture

    return AnalyticModel(GaussianMixture(np.asarray(means), np.asarray(stds), np.asarray(weights)), schedules.get(schedule))


def _analytic_reference(means, stds, weights, num, seed, feature_fn):
    import jax

    from pipeline.models.analytic import GaussianMixture

    x = GaussianMixture(np.asarray(means), np.asarray(stds), np.asarray(weights)).sample(jax.random.key(seed), num)
    return np.asarray(feature_fn(x))


def analytic_problem(means, stds, weights, schedule: str = "cosine", reference_samples: int = 1000,
                     reference_seed: int = 12345, features: Callable[[], Callable] | None = None) -> Problem:
    """A Gaussian mixture as the model, its exact samples as the reference; features default
    to the samples themselves."""
    args = (np.asarray(means, np.float64).tolist(), np.asarray(stds, np.float64).tolist(),
            np.asarray(weights, np.float64).tolist())
    return Problem(
        model=functools.partial(_analytic_model, *args, schedule),
        reference=functools.partial(_analytic_reference, *args, reference_samples, reference_seed),
        features=features,
        label="samples" if features is None else "features",
    )


def _identity():
    return lambda x: x


def _load_teacher(run_dir):
    from pipeline.teacher.model import load_teacher

    return load_teacher(run_dir)


def _digit_features(cache_dir):
    from pipeline.models.classifier import feature_fn, load_or_train_feature_net

    return feature_fn(load_or_train_feature_net(cache_dir))


def _digits_reference(feature_fn):
    """Features of the digits test split (the reference of FD/KID on digits)."""
    from pipeline.data.digits import load_digits

    images, _ = load_digits("test")
    return np.asarray(feature_fn(images))


def _pixels():
    return pixel_features


def _data_reference(data, split, feature_fn):
    """Features of a split of a teacher's data set (pipeline.data.loading.DataConfig `data`)."""
    from pipeline.data.loading import load_data

    images, _ = load_data(data, split)
    return features_in_batches(feature_fn, images)


TEACHER_REFERENCE_SEED = 314159  # the teacher's reference samples: a seed no evaluation uses
REFERENCES = ("test", "teacher")


def teacher_reference_samples(run_dir, cache_dir, steps: int = 512, num: int = 1000, stride: str = "quadratic",
                              seed: int = TEACHER_REFERENCE_SEED, progress: bool = True) -> np.ndarray:
    """The teacher's own converged samples [num, *data_shape]: `steps`-step DDIM from
    key(seed), the reference of a metric without the teacher's floor (it measures a sampler's
    error, not the teacher's). Cached in cache_dir/teacher-reference under a digest of the
    teacher's weights and these arguments, so a retrained teacher never reuses stale samples."""
    import hashlib

    import jax

    from pipeline import io
    from pipeline.data.arrays import read_npz
    from pipeline.evaluation.evaluator import Evaluator
    from pipeline.evaluation.spec import EvalSpec
    from pipeline.progress import bar

    teacher = _load_teacher(run_dir)
    digest = hashlib.sha256(f"{steps}/{num}/{stride}/{seed}/{teacher.schedule.name}".encode())
    for leaf in jax.tree.leaves(teacher.params):
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    path = os.path.join(os.path.abspath(cache_dir), "teacher-reference", digest.hexdigest()[:20] + ".npz")
    if os.path.isfile(path):
        return read_npz(path, what="teacher reference samples")["images"]
    spec = EvalSpec(sampling_problem(run_dir), "ddim", steps, num, seed=seed, stride=stride, batch_size=min(250, num))
    with bar(total=num, desc=f"teacher reference ({steps}-step ddim)", unit="sample", disable=not progress) as pb:
        images, _ = Evaluator(spec).generate(pb.update)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    io.atomic_write_npz(path, {"images": images})
    return images


def _teacher_reference(run_dir, cache_dir, steps, num, feature_fn):
    images = teacher_reference_samples(run_dir, cache_dir, steps, num)
    return features_in_batches(feature_fn, images)


def sampling_problem(run_dir) -> Problem:
    """A trained teacher to sample from (no features, no reference)."""
    from pipeline import rundir

    return Problem(functools.partial(_load_teacher, rundir.require_run_dir(run_dir, "teacher")))


def teacher_problem(run_dir, cache_dir=".cache", inception: bool = False, reference: str = "test",
                    reference_steps: int = 512, reference_samples: int = 1000) -> Problem:
    """A trained teacher (pipeline.teacher.model.load_teacher) in its data set's feature space:
    the digit classifier's penultimate layer for digits (label "digit-classifier"), the
    flattened pixels for npz (label "pixels"), or with inception=True the images themselves, for
    the driver to put through Inception. reference "test": against its test split; "teacher":
    against its own converged samples (teacher_reference_samples: reference_samples samples of
    reference_steps-step DDIM), which measures the sampler's error without the teacher's floor."""
    from pipeline import rundir
    from pipeline.data.loading import require_data
    from pipeline.teacher.config import load_config

    run_dir, cache_dir = rundir.require_run_dir(run_dir, "teacher"), os.path.abspath(cache_dir)
    data = load_config(rundir.read_config(run_dir)).data
    require_data(data, "an evaluation (FD/KID against the test split)")
    model = functools.partial(_load_teacher, run_dir)
    choose("reference", reference, REFERENCES)
    if reference == "teacher":
        ref = functools.partial(_teacher_reference, run_dir, cache_dir, reference_steps, reference_samples)
        if inception:
            return Problem(model, reference=ref, features=_identity, label="inception", moments=False)
        features = (functools.partial(_digit_features, cache_dir) if data.name == "digits" else _pixels)
        return Problem(model, reference=ref, features=features, label="digit-classifier" if data.name == "digits" else "pixels",
                       prepare=features if data.name == "digits" else None)
    if data.name != "digits":
        reference = functools.partial(_data_reference, data, "test")
        if inception:
            return Problem(model, reference=reference, features=_identity, label="inception", moments=False)
        return Problem(model, reference=reference, features=_pixels, label="pixels")
    if inception:
        return Problem(model, reference=_digits_reference, features=_identity, label="inception", moments=False)
    return Problem(model, reference=_digits_reference, features=functools.partial(_digit_features, cache_dir),
                   label="digit-classifier", prepare=functools.partial(_digit_features, cache_dir))
