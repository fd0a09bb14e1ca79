"""User-provided image arrays in .npz files (e.g. CIFAR-10, ImageNet 64x64), validated once."""
from __future__ import annotations

import os
import zipfile

import numpy as np

from pipeline.errors import UserError


def _images(arr, where):
    if arr.ndim != 4:
        raise UserError(f"{where}: expected rank 4 [N, H, W, C], got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 127.5 - 1.0
    if arr.dtype not in (np.float32, np.float64):
        raise UserError(f"{where}: dtype {arr.dtype} not supported (uint8 in [0, 255] or float32/float64 in [-1, 1])")
    if not np.all(np.isfinite(arr)):
        raise UserError(f"{where}: float values must be finite (found NaN or inf)")
    if arr.size and (arr.min() < -1.0 or arr.max() > 1.0):
        raise UserError(f"{where}: float values must be in [-1, 1], got range [{arr.min()}, {arr.max()}]")
    return arr.astype(np.float32)


def load_npz(path, key: str = "images", labels_key: str | None = None):
    """(images float32 [N, H, W, C] in [-1, 1], labels int32 [N] or None) from an .npz file.

    Images are uint8 in [0, 255] (scaled to [-1, 1]) or float32/float64 already in [-1, 1].
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"array file {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = list(f.keys())
            if key not in keys:
                raise UserError(f"{path}: no array {key!r}; arrays present: {', '.join(keys) or 'none'}")
            if labels_key is not None and labels_key not in keys:
                raise UserError(f"{path}: no labels array {labels_key!r}; arrays present: {', '.join(keys)}")
            images = _images(f[key], f"{path}[{key!r}]")
            labels = None if labels_key is None else f[labels_key]
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"{path}: not a readable .npz file ({type(e).__name__})") from None
    if labels is not None:
        if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise UserError(f"{path}[{labels_key!r}]: labels must be integers of shape ({images.shape[0]},), got {labels.dtype} {labels.shape}")
        labels = labels.astype(np.int32)
    return images, labels
