"""Orbax checkpoints of an arbitrary pytree (params, EMA, optimizer state, step, RNG key data).

`Checkpointer(directory)` wraps one orbax `CheckpointManager`; the directory is a local path
or a bucket URL (anything orbax's paths accept). Every JAX process calls `save` (orbax
coordinates the writes); `restore` reads into a target structure whose leaves give the
shape, dtype and sharding. A checkpoint that cannot be read, or that does not match the
target (another model or config), is a one-line UserError; nothing is overwritten.

Typed PRNG keys are not arrays orbax can store: save `jax.random.key_data(key)`.
"""
from __future__ import annotations

import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from pipeline.errors import UserError


def _is_url(path: str) -> bool:
    return "://" in path


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


class Checkpointer:
    """Numbered checkpoints of one pytree under `directory`, keeping the newest `max_to_keep`."""

    def __init__(self, directory, *, max_to_keep: int = 3, async_save: bool = True):
        directory = os.fspath(directory)
        self.directory = directory if _is_url(directory) else os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save,
        )
        try:
            self._mngr = ocp.CheckpointManager(
                self.directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
            )
        except Exception as e:  # unreadable directory, foreign files with step-like names
            raise UserError(f"cannot open checkpoint directory {self.directory}: {_first_line(e)}") from None

    # -- queries -------------------------------------------------------------------------

    def latest_step(self) -> int | None:
        """The newest committed step, or None when there is no checkpoint."""
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    # -- writing ---------------------------------------------------------------------------

    def save(self, step: int, state, *, force: bool = False) -> bool:
        """Save `state` as checkpoint `step` (every process calls this); False if skipped
        because `step` is not newer than the latest checkpoint."""
        latest = self.latest_step()
        if latest is not None and step <= latest and not force:
            return False
        return bool(self._mngr.save(int(step), args=ocp.args.StandardSave(state), force=force))

    def wait(self):
        """Block until an asynchronous save has been committed."""
        self._mngr.wait_until_finished()

    def close(self):
        self._mngr.wait_until_finished()
        self._mngr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reading ---------------------------------------------------------------------------

    def restore(self, target, step: int | None = None):
        """Checkpoint `step` (default: the latest) read into the structure of `target`, a pytree
        of arrays or jax.ShapeDtypeStruct (with sharding) like the one that was saved."""
        return _restore(self._mngr, self.directory, target, step, ocp.args.StandardRestore(target), subset=False)


def read_subtree(directory, target, step: int | None = None):
    """The entries of `target` (a sub-pytree of what was saved, e.g. {"ema": ..., "step": ...})
    read from checkpoint `step` (default: the latest) of `directory`, which is only read: no
    directory is created, cleaned or written."""
    directory = os.fspath(directory)
    directory = directory if _is_url(directory) else os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # orbax warns that a read-only manager is read-only
    try:
        mngr = ocp.CheckpointManager(directory, options=options, item_handlers=ocp.PyTreeCheckpointHandler())
    except Exception as e:
        raise UserError(f"cannot open checkpoint directory {directory}: {_first_line(e)}") from None
    finally:
        absl.setLevel(level)
    try:
        args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                      partial_restore=True)
        return _restore(mngr, directory, target, step, args, subset=True)
    finally:
        mngr.close()


def _restore(mngr, directory: str, target, step, args, subset: bool):
    """Checkpoint `step` (default: the latest) of `mngr`, checked against `target` first."""
    step = mngr.latest_step() if step is None else int(step)
    if step is None:
        raise UserError(f"no checkpoint in {directory}")
    where = f"checkpoint step {step} in {directory}"
    try:
        stored = mngr.item_metadata(step)
    except Exception as e:
        raise UserError(f"{where} is unreadable (corrupt or not an orbax checkpoint): {_first_line(e)}") from None
    stored = getattr(stored, "tree", stored)
    if stored is None:
        raise UserError(f"{where} is unreadable (corrupt or not an orbax checkpoint): no metadata")
    _check_compatible(stored, target, where, subset)
    try:
        return mngr.restore(step, args=args)
    except Exception as e:
        raise UserError(f"{where} is unreadable (corrupt): {_first_line(e)}") from None


def _leaves_by_path(tree) -> dict[str, object]:
    """{'a/b/0': leaf} for the leaves of a pytree (orbax metadata or a target)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
    out = {}
    for path, leaf in flat:
        if leaf is None:
            continue
        out["/".join(_key_name(k) for k in path)] = leaf
    return out


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _check_compatible(stored, target, where: str, subset: bool = False):
    """A UserError naming the first entry whose presence, shape or dtype differs (subset: the
    stored tree may hold more entries than the target)."""
    have, want = _leaves_by_path(stored), _leaves_by_path(target)
    missing = sorted(set(want) - set(have))
    extra = [] if subset else sorted(set(have) - set(want))
    if missing or extra:
        what = f"lacks {missing[0]!r}" if missing else f"has unexpected entry {extra[0]!r}"
        raise UserError(f"{where} is incompatible with this run (written by another model or config): it {what}")
    for key, w in want.items():
        h = have[key]
        h_shape, w_shape = tuple(getattr(h, "shape", ())), tuple(np.shape(w))
        if h_shape != w_shape:
            raise UserError(
                f"{where} is incompatible with this run (written by another model or config): "
                f"{key!r} has shape {h_shape}, expected {w_shape}"
            )
        h_dtype, w_dtype = getattr(h, "dtype", None), getattr(w, "dtype", None)
        if h_dtype is not None and w_dtype is not None and np.dtype(h_dtype) != np.dtype(w_dtype):
            raise UserError(
                f"{where} is incompatible with this run (written by another model or config): "
                f"{key!r} has dtype {np.dtype(h_dtype)}, expected {np.dtype(w_dtype)}"
            )
