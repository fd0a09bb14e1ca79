"""One writer per run directory: a lock file with a lease and a heartbeat.

`hold(path, what)` is a context manager: it creates the lock file `path` holding the host,
pid and start time of this process (and what it runs), keeps it fresh while the block runs
(a daemon thread touches it every `refresh_s` seconds) and removes it at the end. A lock
held by a live process is refused with one line naming that holder, before any work. A
lock is stale, and taken over (with a log line saying so), when its holder is gone: the
same machine (host name, boot id and pid namespace) and its pid no longer runs, or its
heartbeat is older than the lease (any machine: on shared storage the pid may be on
another host; a process killed there stops beating).

Race-free between processes on one file system: a new lock is a complete file linked onto
`path` (fails if `path` exists; O_CREAT|O_EXCL where links are not supported); a stale
lock is replaced only by the one process that creates the marker `path.takeover-<token of
the stale lock>` with O_EXCL, after checking that `path` still holds that stale lock.
Tokens are random and never reused, so a marker never applies to a newer lock.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import threading
import time

from pipeline.errors import UserError

LEASE_S = 30.0  # a lock whose heartbeat is older than this is stale
REFRESH_S = 5.0  # how often the holder refreshes it


def _read_or_none(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def machine() -> dict:
    """What identifies this machine and pid namespace (a pid is only meaningful inside one)."""
    boot = _read_or_none("/proc/sys/kernel/random/boot_id")
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = None
    return {"host": socket.gethostname(), "boot_id": boot, "pid_ns": ns}


def _record(what: str, lease_s: float) -> dict:
    now = time.time()
    return {**machine(), "pid": os.getpid(), "what": what, "token": secrets.token_hex(8), "lease_s": lease_s,
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now)), "started_unix": now}


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _read_or_none(f"/proc/{pid}/stat")  # a zombie has exited: it holds nothing
    return not (stat and stat.rpartition(")")[2].split()[:1] == ["Z"])


def read(path: str) -> tuple[dict | None, str, float] | None:
    """(the holder's record or None when unreadable, its identity, heartbeat age in s), or
    None when there is no lock file."""
    try:
        with open(path) as f:
            st = os.fstat(f.fileno())
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
        key = str(holder["token"])
    except (ValueError, KeyError, TypeError):
        holder, key = None, f"ino{st.st_ino}-{st.st_mtime_ns}"
    return holder, key, time.time() - st.st_mtime


def stale_reason(holder: dict | None, age: float, lease_s: float) -> str | None:
    """Why the lock is stale (its holder is gone), or None while its holder may still run."""
    if age > lease_s:
        return f"its heartbeat is {age:.0f} s old (lease {lease_s:g} s)"
    if holder and all(holder.get(k) == v for k, v in machine().items()):
        try:
            pid = int(holder.get("pid"))
        except (TypeError, ValueError):
            return None
        if not _pid_running(pid):
            return f"process {pid} on this host has ended"
    return None


def describe(holder: dict | None) -> str:
    if not holder:
        return "an unknown process (unreadable lock file)"
    return (f"{holder.get('what') or 'a job'} (host {holder.get('host')}, pid {holder.get('pid')}, "
            f"started {holder.get('started')})")


def _write_new(path: str, me: dict, replace: bool):
    """Put the complete record `me` at `path`: replacing whatever is there (replace=True) or
    only if `path` does not exist (FileExistsError otherwise)."""
    tmp = f"{path}.new-{me['token']}"
    with open(tmp, "x") as f:
        json.dump(me, f, sort_keys=True)
    try:
        if replace:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
            return
        except FileExistsError:
            raise
        except OSError:  # no hard links here: exclusive create, then write
            pass
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w") as f:
            json.dump(me, f, sort_keys=True)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def acquire(path, what: str, *, lease_s: float = LEASE_S, log=None, target=None) -> dict:
    """Create the lock `path` for this process (a fresh record, returned), taking over a stale
    one; a UserError naming the holder when a live process holds it."""
    path = os.path.abspath(os.fspath(path))
    target = target or os.path.dirname(path)
    log = log or _stderr
    me = _record(what, lease_s)
    for _ in range(400):  # each pass either ends or sees the lock change hands
        try:
            _write_new(path, me, replace=False)
        except FileExistsError:
            pass
        except OSError as e:
            raise UserError(f"cannot write the lock file {path}: {e.strerror or e}") from None
        else:
            if _key(path) == me["token"]:
                return me
        found = read(path)
        if found is None:
            continue  # released meanwhile
        holder, key, age = found
        reason = stale_reason(holder, age, lease_s)
        if reason is None:
            if holder is None and age < 2.0:
                time.sleep(0.05)  # being written (file systems without hard links)
                continue
            raise UserError(f"{target} is in use by {describe(holder)}: one job at a time may write it; "
                            f"wait for that one to end (a lock whose holder has died is taken over)")
        if _take_over(path, key, me):
            log(f"took over the lock {path} of {describe(holder)}: {reason}")
            return me
        time.sleep(0.05)  # another process is taking it over: look again
    raise UserError(f"cannot take the lock {path}: it keeps changing hands")


def _stderr(msg: str):
    print(msg, file=sys.stderr, flush=True)


def _key(path: str) -> str | None:
    found = read(path)
    return None if found is None else found[1]


def _take_over(path: str, key: str, me: dict) -> bool:
    """Replace the stale lock identified by `key` with `me`, unless another process does it
    first; True when `path` now holds `me`."""
    marker = f"{path}.takeover-{key}"
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileExistsError:
        with contextlib.suppress(OSError):  # a marker left by a taker that died mid-way
            if time.time() - os.stat(marker).st_mtime > LEASE_S:
                os.unlink(marker)
        return False
    try:
        found = read(path)
        if found is None or found[1] != key:
            return False  # released or replaced meanwhile: look again
        _write_new(path, me, replace=True)
        return _key(path) == me["token"]
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(marker)


def release(path, me: dict):
    """Remove the lock `path` if it is still `me`'s."""
    path = os.path.abspath(os.fspath(path))
    found = read(path)
    if found is not None and found[1] == me["token"]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@contextlib.contextmanager
def hold(path, what: str, *, lease_s: float = LEASE_S, refresh_s: float = REFRESH_S, log=None, target=None):
    """Hold the lock file `path` while the block runs (see the module docstring); `target`
    names what it protects in the refusal (default: the folder holding `path`)."""
    log = log or _stderr
    me = acquire(path, what, lease_s=lease_s, log=log, target=target)
    path = os.path.abspath(os.fspath(path))
    stop = threading.Event()

    def beat():
        while not stop.wait(refresh_s):
            found = read(path)
            if found is None or found[1] != me["token"]:
                now = "removed" if found is None else f"now held by {describe(found[0])}"
                log(f"warning: lost the lock {path} ({now}): another job may write the same files")
                return
            with contextlib.suppress(OSError):
                os.utime(path)

    thread = threading.Thread(target=beat, name=f"lock-heartbeat:{path}", daemon=True)
    thread.start()
    try:
        yield me
    finally:
        stop.set()
        thread.join()
        release(path, me)
