"""Atomic writes: a file or a directory is written as a temporary sibling, then renamed onto
its path, so a reader (or a job killed mid-write) sees the old version or the new one, never
part of one. The temporary is removed when the write fails. Files and directories get the
permissions a plain open() or mkdir() would give them (the umask applies)."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil

from pipeline.errors import UserError


def _sibling(path: str) -> str:
    """A fresh hidden name next to `path` (".tmp-<8 hex>-<name>")."""
    return os.path.join(os.path.dirname(path) or ".", f".tmp-{secrets.token_hex(4)}-{os.path.basename(path)}")


@contextlib.contextmanager
def atomic_open(path, mode: str = "w"):
    """A file object ("w" text or "wb" bytes) on a temporary sibling of `path`, renamed onto
    `path` when the block ends normally; the folder is created if missing."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole file: mode 'w' or 'wb', not {mode!r}")
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = _sibling(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str):
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path, data: bytes):
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_json(path, obj):
    """`obj` as indented JSON with sorted keys and a final newline."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_npz(path, arrays: dict):
    """Arrays as an uncompressed .npz (no pickle: np.load(path) reads it back)."""
    import numpy as np

    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def atomic_savefig(fig, path, **kwargs):
    """A matplotlib figure as a PNG."""
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", **kwargs)


@contextlib.contextmanager
def atomic_dir(path, what: str = "directory"):
    """Yield a new temporary sibling directory of `path` to fill; it is renamed onto `path` when
    the block ends normally and removed otherwise. An existing `path` is refused with the
    UserError "<what> <path> already exists; choose another path"."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path):
        raise UserError(f"{what} {path} already exists; choose another path")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _sibling(path)
    os.mkdir(tmp)
    try:
        yield tmp
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
