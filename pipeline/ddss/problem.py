"""What a search optimises for: a model, a feature function, the reference features of its
training data (the KID loss's target) and a held-out validation reference (what selects the best
parameters), built from the config in every process.

- teacher: a trained teacher (pipeline.train.load_teacher), the digit classifier's features
  (digits) or the flattened pixels (npz data). The training split (reference "data") or the
  teacher's own converged samples (reference "teacher": what a sampler's error is measured
  against without the teacher's floor, and with nothing of the training set to memorise) is
  divided by a fixed permutation (holdout_split): holdout_fraction of it is the validation
  reference, the rest the loss's; the test split is never read (it stays for evaluation).
- gmm: a preset Gaussian mixture's exact denoiser, its samples as features; the loss's reference
  and the validation reference are exact samples from two seeds that no evaluation uses.
holdout_fraction = 0: the validation reference is the loss's (the search's behaviour before it had one).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from pipeline.errors import UserError

REFERENCE_SEED = 271828  # gmm: the exact reference samples of the loss (evaluate.py uses 12345)
VALIDATION_SEED = 314159  # gmm: the exact samples of the validation reference
HOLDOUT_SEED = 161803  # teacher: the permutation of the training split that holds out the validation part
TEACHER_SAMPLES_SEED = 141421  # teacher, reference "teacher": its samples (evaluation's reference: problems.TEACHER_REFERENCE_SEED)


@dataclasses.dataclass(frozen=True, eq=False)
class SearchProblem:
    model: Any  # teacher-like: schedule, data_shape, num_classes, eps_fn(y, w)
    feature_fn: Callable  # x [B, ...] -> [B, F], jittable
    reference: np.ndarray  # [M, F] features of the training data: the KID loss's target
    meta: dict  # what the artefact records: schedule, teacher or gmm, features
    validation_reference: np.ndarray | None = None  # [V, F] held-out features for selection (None: reference)

    @property
    def validation(self) -> np.ndarray:
        """The reference the validation FD/KID is measured against."""
        return self.reference if self.validation_reference is None else self.validation_reference


def build_problem(cfg) -> SearchProblem:
    """The SearchProblem of a SearchConfig."""
    return _teacher_problem(cfg) if cfg.teacher else _gmm_problem(cfg)


def holdout_split(n: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(loss rows, held-out rows) of n training items: a fixed permutation (seed HOLDOUT_SEED), its
    first round(fraction n) rows held out, both sorted; fraction 0: (all rows, none). Each part
    needs two items (KID needs two samples): else a one-line UserError."""
    held = int(round(fraction * n))
    if fraction and (held < 2 or n - held < 2):
        raise UserError(f"config key 'holdout_fraction': {fraction} of the {n} training items leaves "
                        f"{held} held out and {n - held} for the loss; each needs at least 2")
    perm = np.random.default_rng(HOLDOUT_SEED).permutation(n)
    return np.sort(perm[held:]), np.sort(perm[:held])


def _gmm_problem(cfg) -> SearchProblem:
    import jax

    from pipeline import schedules
    from pipeline.data.gmm import gmm_preset
    from pipeline.evaluation import AnalyticModel, pixel_features

    mixture = gmm_preset(cfg.gmm)
    model = AnalyticModel(mixture, schedules.get("cosine"))
    exact = lambda seed: np.asarray(mixture.sample(jax.random.key(seed), cfg.reference_samples), np.float32)  # noqa: E731
    return SearchProblem(model, pixel_features, exact(REFERENCE_SEED),
                         {"gmm": cfg.gmm, "schedule": "cosine", "features": "samples", "data_shape": [mixture.dim]},
                         exact(VALIDATION_SEED) if cfg.holdout_fraction else None)


def _teacher_problem(cfg) -> SearchProblem:
    """A trained teacher, its training split (less the held-out part) as the reference: in
    digit-classifier features (digits) or flattened pixels (npz)."""
    import os

    from pipeline.data import loading
    from pipeline.teacher import model as tmodel
    from pipeline.evaluation import data_features, features_in_batches
    from pipeline.evaluation.problems import teacher_reference_samples

    teacher = tmodel.load_teacher(cfg.teacher)
    if cfg.reference == "teacher":
        images = teacher_reference_samples(cfg.teacher, cfg.cache_dir, cfg.reference_steps, cfg.reference_samples,
                                           seed=TEACHER_SAMPLES_SEED)
        reference = {"reference": "teacher", "reference_steps": cfg.reference_steps, "reference_samples": cfg.reference_samples}
    else:
        images, _ = loading.load_data(teacher.config.data, "train")
        reference = {"reference": "data"}
    loss_rows, held_rows = holdout_split(len(images), cfg.holdout_fraction)
    feature_fn, label = data_features(teacher.config.data.name, cfg.cache_dir)
    feats = features_in_batches(feature_fn, images).reshape(len(images), -1).astype(np.float32)
    return SearchProblem(teacher, feature_fn, feats[loss_rows], {
        "teacher": os.path.abspath(cfg.teacher), "teacher_step": teacher.step, "schedule": teacher.schedule.name,
        "features": label, "data_shape": list(teacher.data_shape),
        "guidance": teacher.default_w if cfg.guidance is None else cfg.guidance, **reference,
    }, feats[held_rows] if len(held_rows) else None)
