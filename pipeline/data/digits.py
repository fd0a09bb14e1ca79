"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download), scaled to [-1, 1],
with a fixed stratified 80/20 train/test split (seed 0)."""
from __future__ import annotations

import functools

import numpy as np

from pipeline.errors import choose

SPLITS = ("train", "test", "all")


@functools.lru_cache(maxsize=1)
def _digits():
    from sklearn.datasets import load_digits as sk_load

    d = sk_load()
    images = (d.images.astype(np.float32) / 8.0 - 1.0)[..., None]  # [0, 16] -> [-1, 1]
    labels = d.target.astype(np.int32)
    rng = np.random.default_rng(0)
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test[idx[: int(round(0.2 * len(idx)))]] = True
    return images, labels, test


def load_digits(split: str = "train"):
    """(images float32 [N, 8, 8, 1] in [-1, 1], labels int32 [N]) for split "train", "test" or "all"."""
    choose("digits split", split, SPLITS)
    images, labels, test = _digits()
    keep = {"train": ~test, "test": test, "all": np.ones_like(test)}[split]
    return images[keep].copy(), labels[keep].copy()
