"""What a search optimises for: a model, a feature function and the reference features of its
training data (the KID loss's target), built from the config in every process.

- teacher: a trained teacher (pipeline.train.load_teacher), the digit classifier's features
  (digits) or the flattened pixels (npz data), the teacher's training split as the reference
  (the test split stays for evaluation).
- gmm: a preset Gaussian mixture's exact denoiser, its samples as features, exact samples drawn
  from a seed that no evaluation uses as the reference.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

REFERENCE_SEED = 271828  # gmm: the exact reference samples of the search (evaluate.py uses 12345)


@dataclasses.dataclass(frozen=True, eq=False)
class SearchProblem:
    model: Any  # teacher-like: schedule, data_shape, num_classes, eps_fn(y, w)
    feature_fn: Callable  # x [B, ...] -> [B, F], jittable
    reference: np.ndarray  # [M, F] features of the training data
    meta: dict  # what the artefact records: schedule, teacher or gmm, features


def build_problem(cfg) -> SearchProblem:
    """The SearchProblem of a SearchConfig."""
    return _teacher_problem(cfg) if cfg.teacher else _gmm_problem(cfg)


def _gmm_problem(cfg) -> SearchProblem:
    import jax

    from pipeline import schedules
    from pipeline.data.gmm import gmm_preset
    from pipeline.evaluation import AnalyticModel, pixel_features

    mixture = gmm_preset(cfg.gmm)
    model = AnalyticModel(mixture, schedules.get("cosine"))
    reference = np.asarray(mixture.sample(jax.random.key(REFERENCE_SEED), cfg.reference_samples), np.float32)
    return SearchProblem(model, pixel_features, reference,
                         {"gmm": cfg.gmm, "schedule": "cosine", "features": "samples", "data_shape": [mixture.dim]})


def _teacher_problem(cfg) -> SearchProblem:
    """A trained teacher, its training split as the reference: in digit-classifier features
    (digits) or flattened pixels (npz)."""
    import os

    from pipeline.data import loading
    from pipeline.teacher import model as tmodel
    from pipeline.evaluation import data_features, features_in_batches

    teacher = tmodel.load_teacher(cfg.teacher)
    images, _ = loading.load_data(teacher.config.data, "train")
    feature_fn, label = data_features(teacher.config.data.name, cfg.cache_dir)
    reference = features_in_batches(feature_fn, images)
    return SearchProblem(teacher, feature_fn, reference.reshape(len(images), -1).astype(np.float32), {
        "teacher": os.path.abspath(cfg.teacher), "teacher_step": teacher.step, "schedule": teacher.schedule.name,
        "features": label, "data_shape": list(teacher.data_shape),
        "guidance": teacher.default_w if cfg.guidance is None else cfg.guidance,
    })
