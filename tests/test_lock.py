"""The run-directory lock (pipeline/lock.py): a live holder refuses with one line naming it; a
dead holder (same host, pid gone) or an expired lease (any host) is taken over; processes
racing for a free or a stale lock get exactly one winner; the holder's heartbeat; release."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline import lock
from pipeline.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A process that takes the lock argv[1] when the file argv[2] appears, says WON or REFUSED, and
# (when it won) holds it until argv[3] appears.
CONTENDER = r"""
import os, sys, time
from pipeline import lock
from pipeline.errors import UserError
path, go, done = sys.argv[1:4]
while not os.path.exists(go):
    time.sleep(0.001)
try:
    with lock.hold(path, "contender", log=lambda m: print("LOG", m, file=sys.stderr, flush=True)):
        print("WON", flush=True)
        while not os.path.exists(done):
            time.sleep(0.01)
except UserError as e:
    print("REFUSED", e, flush=True)
"""


def _spawn(*args):
    return subprocess.Popen([sys.executable, "-c", CONTENDER, *map(str, args)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _foreign(path, *, host="elsewhere", pid=1, age=0.0, token="f00d"):
    """A lock file written by another process (host, pid), its heartbeat `age` seconds old."""
    rec = {"host": host, "boot_id": "x", "pid_ns": "x", "pid": pid, "what": "someone else's job", "token": token,
           "started": "2001-02-03 04:05:06 UTC", "lease_s": lock.LEASE_S}
    with open(path, "w") as f:
        json.dump(rec, f)
    t = time.time() - age
    os.utime(path, (t, t))


def test_a_held_lock_refuses_with_one_line_naming_the_holder(tmp_path):
    path = tmp_path / ".lock"
    with lock.hold(path, "teacher training", target="RUN") as me:
        with pytest.raises(UserError) as e:
            lock.acquire(path, "another job", target="RUN")
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith("RUN is in use by teacher training")
        for part in (f"host {me['host']}", f"pid {os.getpid()}", f"started {me['started']}"):
            assert part in msg, msg
        assert json.loads(path.read_text())["token"] == me["token"]  # the refusal changed nothing
    assert os.listdir(tmp_path) == []  # released: the file is gone, and no temporary is left

    # a fresh lock of a live process on another host is refused too (its pid means nothing here)
    _foreign(path, age=5.0)
    with pytest.raises(UserError, match=r"in use by someone else's job \(host elsewhere, pid 1, started 2001"):
        lock.acquire(path, "x")


def test_a_dead_holder_is_taken_over_and_says_so(tmp_path):
    path, go, done = tmp_path / ".lock", tmp_path / "go", tmp_path / "done"
    go.touch()
    holder = _spawn(path, go, done)
    assert holder.stdout.readline().strip() == "WON"
    dead_pid = json.loads(path.read_text())["pid"]
    assert dead_pid == holder.pid
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert path.exists()  # a crash leaves the lock behind ...
    logs = []
    with lock.hold(path, "the next job", log=logs.append) as me:  # ... and the next job takes it over at once
        assert json.loads(path.read_text())["token"] == me["token"]
    assert len(logs) == 1 and f"pid {dead_pid}" in logs[0] and "has ended" in logs[0], logs
    assert not path.exists()


def test_an_expired_lease_is_taken_over_from_another_host(tmp_path):
    path = tmp_path / ".lock"
    _foreign(path, age=lock.LEASE_S + 5)
    logs = []
    with lock.hold(path, "mine", log=logs.append) as me:
        assert json.loads(path.read_text())["pid"] == os.getpid()
        assert me["what"] == "mine"
    assert len(logs) == 1 and "host elsewhere" in logs[0] and "heartbeat" in logs[0], logs


def test_the_heartbeat_keeps_the_lock_fresh_and_a_lost_lock_is_reported(tmp_path):
    path = tmp_path / ".lock"
    logs = []
    with lock.hold(path, "beating", lease_s=1.0, refresh_s=0.05, log=logs.append):
        old = time.time() - 100
        os.utime(path, (old, old))
        time.sleep(0.5)
        assert time.time() - os.stat(path).st_mtime < 1.0  # refreshed: not stale to anyone
        _foreign(path, token="other")  # taken away (as after a heartbeat lost for a whole lease)
        time.sleep(0.5)
    assert any("lost the lock" in m for m in logs), logs
    assert json.loads(path.read_text())["token"] == "other"  # release leaves another's lock alone


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_processes_racing_for_a_lock_get_exactly_one_winner(tmp_path, stale):
    for attempt in range(3):
        d = tmp_path / str(attempt)
        d.mkdir()
        path, go, done = d / ".lock", d / "go", d / "done"
        if stale:
            _foreign(path, age=lock.LEASE_S + 5, token=f"stale{attempt}")
        procs = [_spawn(path, go, done) for _ in range(4)]
        time.sleep(1.0)  # all started and waiting for `go`
        go.touch()
        first = [p.stdout.readline().strip() for p in procs]
        done.touch()
        outs = [p.communicate(timeout=60) for p in procs]
        assert sum(line == "WON" for line in first) == 1, (first, outs)
        assert all(line == "WON" or line.startswith("REFUSED") for line in first), (first, outs)
        assert all(p.returncode == 0 for p in procs), outs
        assert sum("took over" in err for _, err in outs) == (1 if stale else 0), outs
        assert sorted(os.listdir(d)) == ["done", "go"]  # the winner released it; no marker or temporary left
