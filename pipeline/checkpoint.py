"""Orbax checkpoints of an arbitrary pytree (params, EMA, optimizer state, step, RNG key data).

`Checkpointer(directory)` wraps one orbax `CheckpointManager`; the directory is a local path
or a bucket URL (anything orbax's paths accept). Every JAX process calls `save` (orbax
coordinates the writes); `restore` reads into a target structure whose leaves give the
shape, dtype and sharding. A checkpoint that cannot be read, or that does not match the
target (another model or config), is a one-line UserError; nothing is overwritten.

Integrity: orbax does not notice a flipped byte in a data file. Once a step is committed, process
0 writes the SHA-256 of the step directory's files (sorted relative paths and contents) into
STEP/checksum.sha256 (for the previous step at the next save, and at `wait` / `close`, so that
saves stay asynchronous); `restore` and `read_subtree` verify it when it is there (a step
without one, from an older run or a job killed before it was written, loads as before).

Typed PRNG keys are not arrays orbax can store: save `jax.random.key_data(key)`.
"""
from __future__ import annotations

import hashlib
import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from pipeline.errors import UserError
from pipeline.io import atomic_write_text

CHECKSUM = "checksum.sha256"  # STEP/checksum.sha256: "<hex digest>\n"


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
        self._unsealed = None  # the step saved last, its checksum not yet written

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
        self._seal()  # orbax waits for the previous save here anyway
        saved = bool(self._mngr.save(int(step), args=ocp.args.StandardSave(state), force=force))
        if saved and jax.process_index() == 0 and not _is_url(self.directory):
            self._unsealed = int(step)
        return saved

    def _seal(self):
        """Wait for the last save to be committed, then write its checksum (process 0)."""
        self._mngr.wait_until_finished()
        step, self._unsealed = self._unsealed, None
        step_dir = None if step is None else os.path.join(self.directory, str(step))
        if step_dir is not None and os.path.isdir(step_dir):
            atomic_write_text(os.path.join(step_dir, CHECKSUM), _digest(step_dir) + "\n")

    def wait(self):
        """Block until an asynchronous save has been committed (and its checksum written)."""
        self._seal()

    def close(self):
        self._seal()
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


class TrainingDiverged(UserError):
    """A training loop's loss or gradient became non-finite; its last good checkpoint stays."""


class FiniteGuard:
    """The divergence check of a training loop saving to Checkpointer `ck`: step(n, ok, loss)
    takes step n's device flag `ok` (loss and gradient norm finite) and checks it when step n+1
    has been dispatched (the host does not wait for every step), or at once with now=True (before
    anything of step n is logged or saved). The first failing step closes `ck` (what it saved
    stays) and raises TrainingDiverged naming the step and the config keys to lower."""

    def __init__(self, ck: Checkpointer, what: str, keys: str):
        self.ck, self.what, self.keys, self._pending = ck, what, keys, None

    def step(self, n: int, ok, loss, now: bool = False):
        if self._pending is not None:
            self._check(*self._pending)
        self._pending = (n, ok, loss)
        if now:
            self._pending = self._check(n, ok, loss)

    def _check(self, n, ok, loss):
        if bool(ok):
            return None
        self.ck.close()
        last = self.ck.latest_step()
        kept = (f"the last good checkpoint (step {last}) stays in {self.ck.directory}" if last is not None
                else "no checkpoint was written")
        bad = "loss" if not np.isfinite(float(loss)) else "gradient (or its norm overflowed)"
        raise TrainingDiverged(f"{self.what} diverged at step {n}: non-finite {bad}; {kept}; lower {self.keys}")


def read_subtree(directory, target, step: int | None = None):
    """The entries of `target` (a sub-pytree of what was saved, e.g. {"ema": ..., "step": ...})
    read from checkpoint `step` (default: the latest) of `directory`, which is only read: no
    directory is created, cleaned or written."""
    directory = os.fspath(directory)
    directory = directory if _is_url(directory) else os.path.abspath(directory)
    args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                  partial_restore=True)
    for attempt in range(10):
        # a training job keeps only its newest steps: the one read may be removed under the reader
        # once a newer one is committed; then the newest is read again
        again = step is None and attempt < 9
        try:
            mngr = _read_only_manager(directory)
        except UserError:
            if not again:
                raise
            continue
        tried = mngr.latest_step() if step is None else int(step)
        try:
            return _restore(mngr, directory, target, tried, args, subset=True)
        except UserError:
            if not again or tried is None or _newest(directory) in (None, tried):
                raise
        finally:
            mngr.close()


def _read_only_manager(directory: str):
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # orbax warns that a read-only manager is read-only
    try:
        return ocp.CheckpointManager(directory, options=options, item_handlers=ocp.PyTreeCheckpointHandler())
    except Exception as e:
        raise UserError(f"cannot open checkpoint directory {directory}: {_first_line(e)}") from None
    finally:
        absl.setLevel(level)


def _newest(directory: str) -> int | None:
    """The newest committed step of `directory` now (None when there is none or it cannot be read)."""
    try:
        mngr = _read_only_manager(directory)
    except UserError:
        return None
    try:
        return mngr.latest_step()
    finally:
        mngr.close()


def _restore(mngr, directory: str, target, step, args, subset: bool):
    """Checkpoint `step` (default: the latest) of `mngr`, checked against `target` first."""
    step = mngr.latest_step() if step is None else int(step)
    if step is None:
        raise UserError(f"no checkpoint in {directory}")
    where = f"checkpoint step {step} in {directory}"
    _verify(directory, step, where)
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


def _digest(step_dir: str) -> str:
    """SHA-256 over the files of a step directory: each relative path, size and content, in
    sorted order (the checksum file and temporaries left out)."""
    files = []
    for root, _, names in os.walk(step_dir):
        files += [os.path.join(root, n) for n in names if n != CHECKSUM and not n.startswith(".tmp-")]
    h = hashlib.sha256()
    for path in sorted(files, key=lambda p: os.path.relpath(p, step_dir)):
        rel = os.path.relpath(path, step_dir).replace(os.sep, "/")
        h.update(f"{rel}\0{os.path.getsize(path)}\0".encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _verify(directory: str, step: int, where: str):
    """A one-line UserError if step's recorded checksum (when there is one) does not match its files."""
    step_dir = os.path.join(directory, str(step))
    path = os.path.join(step_dir, CHECKSUM)
    if _is_url(directory) or not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            recorded = f.read().strip()
        actual = _digest(step_dir)
    except OSError as e:
        raise UserError(f"{where} is unreadable: {_first_line(e)}") from None
    if actual != recorded:
        raise UserError(f"{where} is unreadable (corrupt): checksum mismatch, its files changed after it was "
                        f"saved (SHA-256 {actual[:12]}..., recorded {recorded[:12]}...)")


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
