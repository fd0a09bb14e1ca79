"""Connecting to Ray (pipeline/distributed/ray_init.py) without starting one: ray.init is
replaced by a recorder, so the address chosen (the argument, else RAY_ADDRESS, else a private
local Ray on loopback), the loopback-only mode while it starts and its undoing are checked."""
from __future__ import annotations

import importlib
import logging
import os
import socket
import subprocess
import sys
import threading

import pytest
import ray
from ray._private import ray_constants

from pipeline.distributed import ray_init
from pipeline.errors import UserError

MODE = ray_init._SINGLE_MACHINE_ENV


@pytest.fixture
def inits(monkeypatch):
    """ray.init's calls: (keyword arguments, the loopback variable and Ray's cluster flag then).
    Every address probed answers (the probe itself: the tests after test_ray_init_is_bounded)."""
    calls = []
    monkeypatch.setattr(ray_init, "_probe", lambda host, port: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: bool(calls))
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append((kw, os.environ.get(MODE), ray_constants.ENABLE_RAY_CLUSTER)))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(MODE, raising=False)
    monkeypatch.delenv("DDSS_ALLOW_MODULES", raising=False)  # an in-process --allow-module sets it
    return calls


def test_an_address_joins_that_cluster_the_argument_first(inits, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "ray://from-env:10001")
    ray_init.ensure_ray("ray://head:10001", num_cpus=3)
    ray_init.ensure_ray("ray://other:10001")  # initialised already: nothing
    assert inits == [({"address": "ray://head:10001"}, None, ray_constants.ENABLE_RAY_CLUSTER)]


def test_ray_address_is_used_without_an_argument(inits, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")
    ray_init.ensure_ray()
    assert [kw for kw, _, _ in inits] == [{"address": "10.0.0.2:6379"}]


def test_the_allowed_model_packages_reach_a_cluster_s_workers(inits, monkeypatch):
    monkeypatch.setenv("DDSS_ALLOW_MODULES", "mypkg")
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    ray_init.ensure_ray("10.0.0.2:6379")
    assert inits[0][0] == {"address": "10.0.0.2:6379", "runtime_env": {"env_vars": {"DDSS_ALLOW_MODULES": "mypkg"}}}


def test_inside_a_submitted_job_its_own_runtime_env_is_kept(inits, monkeypatch):
    monkeypatch.setenv("DDSS_ALLOW_MODULES", "mypkg")
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    ray_init.ensure_ray("10.0.0.2:6379")
    assert inits[0][0] == {"address": "10.0.0.2:6379"}


def test_no_address_starts_a_private_ray_on_loopback(inits, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "")  # empty: no cluster
    flag = ray_constants.ENABLE_RAY_CLUSTER
    ray_init.ensure_ray(num_cpus=2)
    (kw, mode, cluster_flag), = inits
    assert kw == {"address": "local", "num_cpus": 2, "include_dashboard": False, "dashboard_host": "127.0.0.1",
                  "runtime_env": {"worker_process_setup_hook": "pipeline.distributed.ray_init.quiet_loggers"}}
    assert (mode, cluster_flag) == ("0", False)  # single-machine mode while Ray starts ...
    assert MODE not in os.environ and ray_constants.ENABLE_RAY_CLUSTER == flag  # ... and undone after


def test_with_the_dashboard_no_setup_hook(inits):
    ray_init.ensure_ray(dashboard=True)
    (kw, _, _), = inits
    assert kw["include_dashboard"] is True and kw["runtime_env"] is None and kw["num_cpus"] is None


def test_single_machine_mode_restores_a_set_variable_even_on_error(monkeypatch):
    monkeypatch.setenv(MODE, "1")
    flag = ray_constants.ENABLE_RAY_CLUSTER
    with pytest.raises(RuntimeError, match="start failed"):
        with ray_init._single_machine_mode():
            assert os.environ[MODE] == "0" and ray_constants.ENABLE_RAY_CLUSTER is False
            raise RuntimeError("start failed")
    assert os.environ[MODE] == "1" and ray_constants.ENABLE_RAY_CLUSTER == flag


def test_the_setup_hook_names_quiet_loggers_which_silences_them():
    path = f"{ray_init.__name__}.quiet_loggers"
    module, _, name = path.rpartition(".")
    assert getattr(importlib.import_module(module), name) is ray_init.quiet_loggers
    loggers = [logging.getLogger(n) for n in ray_init._NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        ray_init.quiet_loggers()
        assert loggers and all(lg.level == logging.ERROR for lg in loggers)
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _server(reply: bytes | None):
    """A TCP server on 127.0.0.1 that answers each connection with `reply` (None: accepts and
    says nothing); returns its port."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    held = []

    def serve():
        while True:
            conn, _ = srv.accept()
            held.append(conn)
            if reply is not None:
                conn.recv(64)
                conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1]


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def test_an_address_where_no_ray_answers_is_one_line_before_ray_init(monkeypatch):
    """A dead port, a port that speaks something else, one that never answers, a malformed
    address: one line naming it, within the probe timeout, and ray.init is never called."""
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail(f"ray.init called with {kw}"))
    monkeypatch.setattr(ray_init, "PROBE_TIMEOUT_S", 0.5)
    dead, http, silent = _dead_port(), _server(b"HTTP/1.1 400 Bad Request\r\n\r\n"), _server(None)
    for address, expect in ((f"127.0.0.1:{dead}", "Connection refused"), (f"ray://127.0.0.1:{dead}", "refused"),
                            (f"127.0.0.1:{http}", "not a gRPC server"), (f"localhost:{silent}", "no answer within 0.5 s"),
                            ("nohost.invalid:6379", ".")):
        with pytest.raises(UserError, match=f"^no Ray cluster answers at {address}: .*{expect}") as e:
            ray_init.ensure_ray(address)
        assert "\n" not in str(e.value)
    for bad in ("head", "head:port", "10.0.0.1:0", "10.0.0.1:70000", "ray://:10001"):
        with pytest.raises(UserError, match=f"^--address '{bad}': expected HOST:PORT"):
            ray_init.ensure_ray(bad)
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{dead}")  # RAY_ADDRESS is probed too
    with pytest.raises(UserError, match="refused"):
        ray_init.ensure_ray()


def test_a_cluster_on_loopback_only_is_joined_in_single_machine_mode(inits, monkeypatch):
    """Ray dials 127.0.0.1:P at this machine's outward address; when only loopback answers (a
    private Ray of ensure_ray), the join keeps loopback; when both answer, Ray dials as usual."""
    from ray._private import services

    monkeypatch.setattr(services, "resolve_ip_for_localhost", lambda host: "192.0.2.77")
    outward = []
    monkeypatch.setattr(ray_init, "_probe", lambda host, port: None if host == "127.0.0.1" or outward else "refused")
    ray_init.ensure_ray("127.0.0.1:6379")
    outward.append(True)
    inits_before = list(inits)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    ray_init.ensure_ray("127.0.0.1:6379")
    assert [(kw, mode) for kw, mode, _ in inits_before] == [({"address": "127.0.0.1:6379"}, "0")]
    assert [(kw, mode) for kw, mode, _ in inits[1:]] == [({"address": "127.0.0.1:6379"}, None)]


def test_a_refused_auth_token_or_failed_join_is_one_line(monkeypatch):
    """ray.init fails after its retries with a ConnectionError whose cause holds Ray's
    AuthenticationError as text: one line saying how to give the token."""
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_init, "_probe", lambda host, port: None)

    def refused(**kw):
        try:
            raise RuntimeError("Failed to connect to GCS. Last connection error: Traceback ...\nray.exceptions."
                               "AuthenticationError: RPC error: InvalidAuthToken: Authentication token is missing")
        except RuntimeError as e:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.2:6379") from e

    monkeypatch.setattr(ray, "init", refused)
    with pytest.raises(UserError, match=r"^the Ray cluster at 10.0.0.2:6379 refused this process's auth token .*"
                                        r"RAY_AUTH_MODE=token.*RAY_AUTH_TOKEN") as e:
        ray_init.ensure_ray("10.0.0.2:6379")
    assert "\n" not in str(e.value)
    monkeypatch.setattr(ray, "init", lambda **kw: (_ for _ in ()).throw(ConnectionError("GCS went away\nmore")))
    with pytest.raises(UserError, match="^cannot join the Ray cluster at 10.0.0.2:6379: GCS went away$"):
        ray_init.ensure_ray("10.0.0.2:6379")


@pytest.mark.ray
def test_a_private_ray_is_joined_by_its_loopback_address_from_another_process(local_ray):
    """The session's private Ray (loopback only, token auth): another process given
    127.0.0.1:<its GCS port> joins it (it hung for minutes), and without the token it gets one
    line, not a traceback."""
    gcs = local_ray._private.worker._global_node.gcs_address
    port = gcs.rpartition(":")[2]
    code = ("import ray; from pipeline.distributed.ray_init import ensure_ray; "
            f"ensure_ray('127.0.0.1:{port}'); print('CPUs', ray.cluster_resources().get('CPU'))")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0 and "CPUs 2.0" in out.stdout, out.stderr[-2000:]


@pytest.mark.ray
def test_a_private_ray_starts_without_the_token_auth_notice_and_keeps_its_token():
    """Ray warns "Token authentication is enabled for this Ray cluster ..." at every start of a
    local cluster: dropped for the private Ray, whose token authentication stays on."""
    code = ("import logging, os, ray; from pipeline.distributed.ray_init import ensure_ray, _TOKEN_SETUP_LOGGER; "
            "ensure_ray(num_cpus=1); print('mode', os.environ.get('RAY_AUTH_MODE')); "
            "print('filters', len(logging.getLogger(_TOKEN_SETUP_LOGGER).filters)); ray.shutdown()")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE"):  # unset: Ray turns token auth on, and used to say so
        env.pop(name, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Token authentication" not in out.stderr and "RAY_AUTH_MODE" not in out.stderr, out.stderr
    assert "Started a local Ray instance" in out.stderr  # Ray's other messages stay
    assert "mode token" in out.stdout and "filters 0" in out.stdout, out.stdout  # token auth on; filter gone


def test_joining_a_cluster_keeps_ray_s_token_auth_messages(monkeypatch):
    """The notice is dropped only while a private Ray starts."""
    seen = []

    def init(**kw):
        logging.getLogger(ray_init._TOKEN_SETUP_LOGGER).warning(ray_init._TOKEN_AUTH_NOTICE + ". Set ...")
        seen.append(kw)

    class Catch(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    monkeypatch.setattr(ray_init, "_probe", lambda host, port: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("DDSS_ALLOW_MODULES", raising=False)
    log, handler = logging.getLogger(ray_init._TOKEN_SETUP_LOGGER), Catch()
    log.addHandler(handler)
    try:
        ray_init.ensure_ray("10.0.0.2:6379")
        joined = [s for s in seen if isinstance(s, str)]
        seen.clear()
        monkeypatch.setenv("RAY_ADDRESS", "")
        ray_init.ensure_ray()
        private = [s for s in seen if isinstance(s, str)]
    finally:
        log.removeHandler(handler)
    assert len(joined) == 1 and joined[0].startswith(ray_init._TOKEN_AUTH_NOTICE)
    assert private == []
