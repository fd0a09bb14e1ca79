"""User-provided image arrays in .npz files (e.g. CIFAR-10, ImageNet 64x64), validated once."""
from __future__ import annotations

import io
import math
import os
import zipfile
import zlib

import numpy as np

from pipeline.errors import UserError

MAX_CLASSES = 100_000  # labels are class indices in [0, MAX_CLASSES)
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, MemoryError, NotImplementedError)


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


def _labels(labels, n: int, where):
    """int32 class indices in [0, MAX_CLASSES), checked before the cast (2**32 must not wrap to 0)."""
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{where}: labels must be integers of shape ({n},), got {labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise UserError(f"{where}: labels must be >= 0, got {labels.min()}")
    if labels.size and labels.max() >= MAX_CLASSES:
        raise UserError(f"{where}: labels must be class indices below {MAX_CLASSES}, got {labels.max()}")
    return labels.astype(np.int32)


def _check_member(zf: zipfile.ZipFile, name: str, path):
    """UserError if the .npy member `name` declares more bytes than it holds (a corrupt header
    would otherwise allocate its whole declared size before reading fails)."""
    member = name + ".npy" if name + ".npy" in zf.namelist() else name
    size = zf.getinfo(member).file_size
    with zf.open(member) as m:
        version = np.lib.format.read_magic(m)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if reader is None:
            return
        shape, _, dtype = reader(m)
        have = size - m.tell()  # the bytes after the header
    need = math.prod(shape) * dtype.itemsize
    if need > have:
        raise UserError(f"{path}: array {name!r} declares shape {shape} ({need} bytes) but holds {have} bytes (truncated or corrupt)")


def read_npz(path, pick=None, what: str = ".npz file", data: bytes | None = None) -> dict:
    """The arrays of an .npz file (numpy.savez), without pickles: pick(names) -> the names to
    read (default all; it may raise a UserError, e.g. for a missing name). `data`: the file's
    bytes, already read (`path` then only names it). A file that is not an .npz (empty, a bare
    .npy, truncated, corrupt) is a one-line UserError."""
    path = os.fspath(path)
    if data is None:
        if not os.path.isfile(path):
            raise UserError(f"{what} {path!r} does not exist")
        try:
            with open(path, "rb") as fh:
                head = fh.read(6)
        except OSError as e:
            raise UserError(f"{path}: cannot read the {what} ({e.strerror or type(e).__name__})") from None
    else:
        head = bytes(data[:6])
    if not head.startswith(b"PK"):
        kind = "empty file" if not head else "a .npy array" if head == b"\x93NUMPY" else "not a zip archive"
        raise UserError(f"{path}: not a readable {what} ({kind}; expected an .npz archive as numpy.savez writes)")
    def source():
        return path if data is None else io.BytesIO(data)

    try:
        with zipfile.ZipFile(source()) as zf, np.load(source(), allow_pickle=False) as f:
            names = list(f.files)
            out = {}
            for name in (names if pick is None else pick(names)):
                _check_member(zf, name, path)
                out[name] = f[name]
            return out
    except _READ_ERRORS as e:
        if isinstance(e, UserError):
            raise
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise UserError(f"{path}: not a readable {what} ({type(e).__name__}{': ' + detail if detail else ''})") from None


def load_npz(path, key: str = "images", labels_key: str | None = None):
    """(images float32 [N, H, W, C] in [-1, 1], labels int32 [N] or None) from an .npz file.

    Images are uint8 in [0, 255] (scaled to [-1, 1]) or float32/float64 already in [-1, 1];
    labels are integer class indices in [0, MAX_CLASSES).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"array file {path!r} does not exist")

    def pick(keys):
        if key not in keys:
            raise UserError(f"{path}: no array {key!r}; arrays present: {', '.join(keys) or 'none'}")
        if labels_key is not None and labels_key not in keys:
            raise UserError(f"{path}: no labels array {labels_key!r}; arrays present: {', '.join(keys)}")
        return [key] if labels_key is None else [key, labels_key]

    arrays = read_npz(path, pick)
    images = _images(arrays[key], f"{path}[{key!r}]")
    if labels_key is None:
        return images, None
    return images, _labels(arrays[labels_key], images.shape[0], f"{path}[{labels_key!r}]")
