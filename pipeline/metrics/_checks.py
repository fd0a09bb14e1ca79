"""Shape checks shared by the metrics: bad input is one UserError line."""
from __future__ import annotations

import numpy as np

from pipeline.errors import UserError


def as_features(feats, name: str, dtype=np.float64) -> np.ndarray:
    """`feats` as a [N, F] array of `dtype`, or a UserError naming `name`."""
    a = np.asarray(feats, dtype=dtype)
    if a.ndim != 2:
        raise UserError(f"{name} must be a [N, F] feature array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise UserError(f"{name} contains non-finite values")
    return a


def same_dim(a: np.ndarray, b: np.ndarray):
    """Both feature sets must have the same feature dimension F."""
    if a.shape[1] != b.shape[1]:
        raise UserError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
