"""Run directories: one per job, holding everything it writes.

    RUN_DIR/config.yaml     the resolved config
    RUN_DIR/checkpoints/    orbax checkpoints (pipeline.checkpoint)
    RUN_DIR/metrics.jsonl   one JSON record per logged step, appended
    RUN_DIR/results.json    final figures, merged key by key (atomic read-modify-write)

A new run gets a unique id (UTC timestamp + random suffix) under a root folder unless the
caller names the directory; a named directory that is not empty is only reused with
resume=True, so nothing already written is overwritten by accident.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import secrets
import tempfile
import time

from pipeline import config as cfg
from pipeline import lock as lockfile
from pipeline.errors import UserError
from pipeline.io import atomic_write_json

CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
LOCK = ".lock"  # held by the one job writing the run (pipeline.lock)


def new_run_id(prefix: str = "") -> str:
    """`<prefix>-YYYYmmdd-HHMMSS-<8 hex>`: sortable by start time, unique across concurrent jobs."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    rid = f"{stamp}-{secrets.token_hex(4)}"
    return f"{prefix}-{rid}" if prefix else rid


def prepare(run_dir=None, *, resume: bool = False, root="runs", prefix: str = "") -> str:
    """The absolute run directory to use, created if new, and writable.

    run_dir=None makes `root/<prefix>-<id>`; resume=True needs an existing run (with config.yaml);
    a non-empty run_dir without resume is refused with one line, and so is a directory that
    cannot be created or written (nothing is left behind).
    """
    if run_dir is None:
        if resume:
            raise UserError("--resume needs --run-dir naming the run to continue")
        while True:
            path = os.path.abspath(os.path.join(os.fspath(root), new_run_id(prefix)))
            try:
                _make_dir(path, exist_ok=False)
                return path
            except FileExistsError:  # same second and same suffix: draw again
                continue
    path = os.path.abspath(os.fspath(run_dir))
    if resume:
        if not os.path.isfile(os.path.join(path, CONFIG)):
            raise UserError(f"cannot resume {path}: it has no {CONFIG} (not a run directory)")
        check_writable(path)
        return path
    if os.path.lexists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise UserError(f"run directory {path} is not empty; pass --resume to continue it or choose another --run-dir")
    _make_dir(path, exist_ok=True)
    return path


def _make_dir(path: str, exist_ok: bool):
    """os.makedirs(path) and check_writable(path); on failure, the folders it made are removed
    and a one-line UserError raised (FileExistsError passes through when not exist_ok)."""
    made, p = [], path
    while not os.path.lexists(p) and os.path.dirname(p) != p:
        made.append(p)  # the missing folders, deepest first
        p = os.path.dirname(p)
    try:
        os.makedirs(path, exist_ok=exist_ok)
        check_writable(path)
    except FileExistsError:
        if not exist_ok:
            raise
        _remove_empty(made)
        raise UserError(f"cannot create the run directory {path}: a file is in the way") from None
    except OSError as e:
        _remove_empty(made)
        raise UserError(f"cannot create the run directory {path}: {e.strerror or type(e).__name__}") from None
    except UserError:
        _remove_empty(made)
        raise


def _remove_empty(dirs):
    for d in dirs:
        try:
            os.rmdir(d)
        except OSError:
            pass


def check_writable(path, what: str = "run directory"):
    """A one-line UserError unless a file can be created in the existing folder `path` (a
    read-only or immutable folder, or one under /proc); the probe file is removed."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=os.fspath(path))
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write in the {what} {os.fspath(path)}: {e.strerror or type(e).__name__}") from None


def require_run_dir(path, what: str = "teacher") -> str:
    """The absolute path of an existing run directory (one holding config.yaml), else a one-line
    UserError naming `path` as given."""
    full = os.path.abspath(os.fspath(path))
    if not os.path.isdir(full):
        raise UserError(f"{what} run directory not found: {path}")
    if not os.path.isfile(os.path.join(full, CONFIG)):
        raise UserError(f"{path} is not a {what} run directory (no {CONFIG})")
    return full


@contextlib.contextmanager
def lock(run_dir, what: str, *, new: bool = False, log=None):
    """Hold RUN_DIR/.lock while the block runs: one writer per run directory (pipeline.lock:
    a second writer is refused with one line naming the holder; a dead holder's lock is taken
    over). new=True: take it right after prepare() made the directory, which must then hold
    nothing else (of two new runs racing for one --run-dir, the second is refused)."""
    run_dir = os.path.abspath(os.fspath(run_dir))
    with lockfile.hold(os.path.join(run_dir, LOCK), what, log=log, target=run_dir) as me:
        if new and any(not n.startswith(LOCK) for n in os.listdir(run_dir)):
            raise UserError(f"run directory {run_dir} is not empty; pass --resume to continue it or choose another --run-dir")
        yield me


def checkpoint_dir(run_dir) -> str:
    return os.path.join(os.fspath(run_dir), CHECKPOINTS)


def write_config(run_dir, config):
    """Write the resolved config (a dataclass or dict) as RUN_DIR/config.yaml."""
    cfg.dump_yaml(config, os.path.join(os.fspath(run_dir), CONFIG))


def read_config(run_dir) -> dict:
    return cfg.load_yaml(os.path.join(os.fspath(run_dir), CONFIG))


def append_metrics(run_dir, record: dict):
    """Append one JSON line to RUN_DIR/metrics.jsonl (a resumed run may repeat a step: readers
    keep the last record of each step)."""
    line = json.dumps(_jsonable(record), sort_keys=True) + "\n"
    with open(os.path.join(os.fspath(run_dir), METRICS), "a") as f:
        f.write(line)


def read_results(run_dir) -> dict:
    """RUN_DIR/results.json ({} if absent); one that is not a JSON object is a one-line UserError
    (and is never overwritten by update_results)."""
    path = os.path.join(os.fspath(run_dir), RESULTS)
    if not os.path.lexists(path):
        return {}
    try:
        with open(path, "rb") as f:
            results = json.loads(f.read())
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or type(e).__name__}") from None
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep
        raise UserError(f"{path} is not valid JSON") from None
    if not isinstance(results, dict):
        raise UserError(f"{path} holds a JSON {type(results).__name__}, not an object of results; move it away "
                        "(it is not overwritten)")
    return results


def update_results(run_dir, updates: dict) -> dict:
    """Merge `updates` into RUN_DIR/results.json (nested dicts merged key by key) under a
    file lock, writing atomically; returns the merged results."""
    run_dir = os.fspath(run_dir)
    read_results(run_dir)  # a bad results.json is refused before the lock file is made
    with _locked(os.path.join(run_dir, ".results.lock")):
        merged = _merge(read_results(run_dir), _jsonable(updates))
        atomic_write_json(os.path.join(run_dir, RESULTS), merged)
    return merged


@contextlib.contextmanager
def _locked(path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _merge(old: dict, new: dict) -> dict:
    out = dict(old)
    for k, v in new.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _jsonable(v):
    """Plain JSON values: numpy/JAX scalars to Python numbers, non-finite floats to None."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "tolist"):
        return _jsonable(v.tolist())
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
