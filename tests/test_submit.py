"""Job submission against a real Ray head started here on loopback (auth disabled), stopped
afterwards by the PIDs of the processes it started (never `ray stop`: other Ray instances
may run on this machine)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from pipeline.app import cli
from pipeline.distributed import jobs_client

pytestmark = pytest.mark.ray
ROOT = jobs_client.project_root()
VENV_BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _head_processes(temp_dir: str) -> list[psutil.Process]:
    """Every process of the head whose command line names our temp dir, and their children."""
    procs = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid != os.getpid() and any(temp_dir in arg for arg in p.info["cmdline"] or []):
                procs[p.pid] = p
                for c in p.children(recursive=True):
                    procs[c.pid] = c
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(procs.values())


def _stop(procs: list[psutil.Process]):
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="module")
def head():
    """A Ray head on 127.0.0.1 with its dashboard (the job server) on a free port."""
    temp_dir = tempfile.mkdtemp(prefix="rh-", dir="/tmp")  # short: Ray's socket paths are limited
    gcs, dash, agent, metrics, client, rt_env, agent_grpc = _free_ports(7)
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray's single-machine mode, every port on loopback
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               PATH=f"{VENV_BIN}:{os.environ['PATH']}")
    env.pop("RAY_ADDRESS", None)
    cmd = [
        str(VENV_BIN / "ray"), "start", "--head", "--port", str(gcs), "--node-ip-address", "127.0.0.1",
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", "1",
        "--dashboard-agent-listen-port", str(agent), "--metrics-export-port", str(metrics),
        "--ray-client-server-port", str(client), "--runtime-env-agent-port", str(rt_env),
        "--dashboard-agent-grpc-port", str(agent_grpc), "--temp-dir", temp_dir, "--disable-usage-stats",
    ]
    try:
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
        yield {"address": f"http://127.0.0.1:{dash}", "env": env, "temp_dir": temp_dir}
    finally:
        _stop(_head_processes(temp_dir))
        assert not _head_processes(temp_dir), "head processes survived"


def _ddss(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_ddss_submit_runs_tiny_job_and_jobs_commands_see_it(head, capsys, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    rc, out, err = _ddss(capsys, "submit", "tiny", "--address", head["address"], "--", "--set", "tasks=3")
    assert rc == 0, err
    assert "tiny job OK: 3 tasks, sum of squares below 1000 = 332833500" in out
    job_id = err.split("submitted ")[1].split()[0]
    assert job_id.startswith("ddss-tiny-")

    rc, out, _ = _ddss(capsys, "jobs", "status", job_id, "--address", head["address"])
    assert rc == 0 and f"{job_id}  SUCCEEDED  python jobs/tiny.py --config configs/tiny.yaml --set tasks=3" in out
    rc, out, _ = _ddss(capsys, "jobs", "logs", job_id, "--address", head["address"])
    assert rc == 0 and "tiny job OK: 3 tasks" in out
    rc, out, _ = _ddss(capsys, "jobs", "list", "--address", head["address"])
    assert rc == 0 and job_id in out


def test_ddss_jobs_stop_stops_a_running_job(head, capsys, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    rc, out, err = _ddss(capsys, "submit", "tiny", "--address", head["address"], "--no-follow",
                         "--", "--set", "sleep_s=120")
    assert rc == 0, err
    job_id = out.strip()
    c = jobs_client.client(head["address"])
    deadline = time.time() + 60
    while jobs_client.status(c, job_id) == "PENDING" and time.time() < deadline:
        time.sleep(0.5)
    rc, out, _ = _ddss(capsys, "jobs", "stop", job_id, "--address", head["address"])
    assert rc == 0 and "stop requested" in out
    while jobs_client.status(c, job_id) not in jobs_client.TERMINAL and time.time() < deadline:
        time.sleep(0.5)
    assert jobs_client.status(c, job_id) == "STOPPED"


def test_head_listens_on_loopback_only(head):
    ports = [c.laddr for p in _head_processes(head["temp_dir"]) for c in _listening(p)]
    assert ports and all(a.ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for a in ports), ports


def _listening(p: psutil.Process):
    try:
        return [c for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def test_plain_ray_job_submit_runs_the_job_file(head):
    """The documented raw path: `ray job submit --working-dir . -- python jobs/NAME.py --config ...`."""
    env = dict(head["env"], RAY_ADDRESS=head["address"])
    proc = subprocess.run(
        [str(VENV_BIN / "ray"), "job", "submit", "--working-dir", ".", "--",
         "python", "jobs/tiny.py", "--config", "configs/tiny.yaml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tiny job OK: 4 tasks" in proc.stdout
    assert "succeeded" in (proc.stdout + proc.stderr).lower()


def test_bad_input_is_one_line(capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    rc, _, err = _ddss(capsys, "submit", "no-such-job", "--address", "http://127.0.0.1:1")
    assert rc == 2 and "no job 'no-such-job'" in err and "tiny" in err and len(err.strip().splitlines()) == 1
    rc, _, err = _ddss(capsys, "submit", "tiny")
    assert rc == 2 and "--address" in err and len(err.strip().splitlines()) == 1
    rc, _, err = _ddss(capsys, "jobs", "status", "--address", "http://127.0.0.1:1")
    assert rc == 2 and "needs a JOB_ID" in err


def test_job_config_is_checked_before_upload(tmp_path, capsys):
    """A bad key fails locally, with the job's own loader, naming the key."""
    bad = ROOT / "configs" / f".tmp-test-{os.getpid()}.yaml"
    bad.write_text("tasks: 2\ncolour: blue\n")
    try:
        rc, _, err = _ddss(capsys, "submit", "tiny", "--config", str(bad.relative_to(ROOT)), "--address", "http://127.0.0.1:1")
    finally:
        bad.unlink()
    assert rc == 2 and "unknown config key 'colour'" in err
    rc, _, err = _ddss(capsys, "submit", "tiny", "--address", "http://127.0.0.1:1", "--", "--set", "tasks=0")
    assert rc == 2 and "'tasks'" in err and "[1, 1000]" in err


def test_entrypoint_and_excludes():
    assert jobs_client.entrypoint("evaluate", None, ["--set", "w=0.5"]) == (
        "python jobs/evaluate.py --config configs/evaluate.yaml --set w=0.5")
    for heavy in (".venv", ".venv-tfgan", "runs", ".git", "bench/out"):
        assert heavy in jobs_client.EXCLUDES


def test_submit_refuses_a_path_as_job_name(capsys, tmp_path):
    """`ddss submit ../../x` names a file outside jobs/: one line listing the jobs; the file is
    never run and no cluster is contacted (the address is a dead port)."""
    from helpers import one_line_exit_2

    (tmp_path / "x.py").write_text("open(__file__ + '.ran', 'w').close()\n")
    rel = os.path.relpath(tmp_path / "x", ROOT / "jobs")  # ../../../tmp/.../x
    err = one_line_exit_2(["submit", rel, "--address", "http://127.0.0.1:9"], capsys, f"no job {rel!r}", "jobs: ")
    assert all(n in err for n in jobs_client.job_names())
    one_line_exit_2(["submit", str(tmp_path / "x"), "--address", "http://127.0.0.1:9"], capsys, "no job")
    assert not (tmp_path / "x.py.ran").exists()
