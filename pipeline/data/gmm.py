"""Preset Gaussian mixtures with exact denoisers (pipeline.models.analytic): "ring2d" (8 equal
modes on the unit circle) and "mix16d" (6 unequal modes in 16 dimensions, fixed seed)."""
from __future__ import annotations

import numpy as np

from pipeline.errors import choose
from pipeline.models.analytic import GaussianMixture

PRESETS = ("ring2d", "mix16d")


def gmm_preset(name: str) -> GaussianMixture:
    """The named preset mixture."""
    choose("gmm preset", name, PRESETS)
    if name == "ring2d":
        angle = 2 * np.pi * np.arange(8) / 8
        return GaussianMixture(np.stack([np.cos(angle), np.sin(angle)], 1), 0.1, np.ones(8))
    rng = np.random.default_rng(0)
    means = rng.normal(0.0, 1.0, (6, 16)) / np.sqrt(16) * 2.0
    return GaussianMixture(means, rng.uniform(0.1, 0.3, 6), rng.uniform(0.5, 1.5, 6))
