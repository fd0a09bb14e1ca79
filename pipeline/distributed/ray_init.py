"""Connecting to Ray: join a cluster given an address (argument or RAY_ADDRESS), otherwise
start a private local Ray bound to the loopback interface.

An address is probed before ray.init, which otherwise retries for many minutes: nothing
listening there, or something that is not a gRPC server (a Ray head's GCS and its Ray Client
server both are), is one line naming the address. Ray dials a loopback address at this
machine's outward IP instead; a cluster that listens on loopback only (a private Ray started
as below) is joined in Ray's single-machine mode, which keeps 127.0.0.1.
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket

LOOPBACK = "127.0.0.1"
# On Linux Ray advertises and binds the machine's outward address even when asked for
# 127.0.0.1; its single-machine mode (the default on macOS/Windows, selected by this
# variable) keeps every Ray process on loopback.
_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Ray Train's placement-group cleaner polls the state API, which needs the dashboard: with
# the dashboard off it warns every second. Its own cleanup is moot on a private local Ray.
_NOISY_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)
PROBE_TIMEOUT_S = 5.0  # for a connection to an address and its first answer
# An HTTP/2 client's connection preface and an empty SETTINGS frame: a gRPC server answers with
# a SETTINGS frame (type 4) of its own.
_H2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_NO_PROBE = ("auto", "local")  # Ray finds these itself


def quiet_loggers():
    """Worker-process setup hook: silence the per-second warnings listed above."""
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = False):
    """Initialise Ray once per process; a second call is a no-op.

    address (or env RAY_ADDRESS) joins that cluster; without one, a local Ray is started
    with every process on 127.0.0.1 and the dashboard off (dashboard=True: on 127.0.0.1).
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _join(address, loopback_only=check_address(address))
        return
    with _single_machine_mode(), _without_token_auth_notice():
        ray.init(
            address="local",  # a private Ray, even when a `ray start` head runs on this machine
            num_cpus=num_cpus,
            include_dashboard=dashboard,
            dashboard_host=LOOPBACK,
            runtime_env=None if dashboard else {"worker_process_setup_hook": f"{__name__}.quiet_loggers"},
        )


# Ray >= 2.52 enables token authentication for a new local cluster and says so at WARNING on every
# start. That notice (only it: the cluster keeps its token) is dropped for the private Ray.
_TOKEN_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"
_TOKEN_AUTH_NOTICE = "Token authentication is enabled for this Ray cluster"


class _DropTokenAuthNotice(logging.Filter):
    def filter(self, record):
        return not record.getMessage().startswith(_TOKEN_AUTH_NOTICE)


@contextlib.contextmanager
def _without_token_auth_notice():
    """While a private Ray starts; joining a user's cluster keeps every message of Ray."""
    log, notice = logging.getLogger(_TOKEN_SETUP_LOGGER), _DropTokenAuthNotice()
    log.addFilter(notice)
    try:
        yield
    finally:
        log.removeFilter(notice)


_AUTH_SIGNS = ("AuthenticationError", "InvalidAuthToken", "Unauthenticated")


def _join(address: str, loopback_only: bool):
    """ray.init(address=...), its failure (a refused auth token, after Ray's ~20 s of retries)
    one line."""
    import ray
    import ray.exceptions

    from pipeline.errors import UserError

    AuthenticationError = getattr(ray.exceptions, "AuthenticationError", RuntimeError)  # Ray >= 2.52

    try:
        with _single_machine_mode() if loopback_only else contextlib.nullcontext():
            env = _forwarded_env()
            ray.init(address=address, **({"runtime_env": env} if env else {}))
    except (ConnectionError, RuntimeError, AuthenticationError) as e:
        chain, c = [], e
        while c is not None and len(chain) < 10:
            chain.append(f"{type(c).__name__}: {c}")
            c = c.__cause__ or c.__context__
        if any(sign in text for text in chain for sign in _AUTH_SIGNS):
            raise UserError(f"the Ray cluster at {address} refused this process's auth token (none or a wrong one): "
                            "set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN, the file named by "
                            "RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot join the Ray cluster at {address}: {first}") from None


FORWARDED = ("DDSS_ALLOW_MODULES",)  # the driver's settings its workers and actors need on a cluster


def _forwarded_env() -> dict | None:
    """A job-level runtime_env carrying FORWARDED variables to the cluster's workers (a job made by
    `ddss submit` has them in its own runtime_env already, which ray.init must not replace)."""
    env = {k: os.environ[k] for k in FORWARDED if os.environ.get(k)}
    if not env or os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        return None
    return {"env_vars": env}


def check_address(address: str) -> bool:
    """A one-line UserError unless a gRPC server answers at `address` (HOST:PORT of a Ray head's
    GCS, or ray://HOST:PORT of its Ray Client server) within PROBE_TIMEOUT_S; True when it
    answers on loopback only (Ray must then keep the loopback address: single-machine mode)."""
    from pipeline.errors import UserError

    if address in _NO_PROBE or ("://" in address and not address.startswith("ray://")):
        return False
    host, port = _host_port(address)
    reason = _probe(host, port)
    if reason:
        raise UserError(f"no Ray cluster answers at {address}: {reason} (give a running head's GCS address "
                        "HOST:6379, or ray://HOST:10001 for Ray Client)")
    if address.startswith("ray://") or not _is_loopback(host):
        return False
    from ray._private import services

    dialled = services.resolve_ip_for_localhost(host)  # what ray.init would dial instead
    return not _is_loopback(dialled) and _probe(dialled, port) is not None


def _host_port(address: str) -> tuple[str, int]:
    from pipeline.errors import UserError

    rest = address.removeprefix("ray://").rstrip("/")
    host, sep, port = rest.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--address {address!r}: expected HOST:PORT (a Ray head's GCS, e.g. 10.0.0.2:6379) "
                        "or ray://HOST:PORT")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _probe(host: str, port: int) -> str | None:
    """None if a gRPC (HTTP/2) server answers at host:port, else why not."""
    tls = os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")  # no plain HTTP/2 then: TCP only
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as s:
            if tls:
                return None
            s.settimeout(PROBE_TIMEOUT_S)
            s.sendall(_H2_HELLO)
            head = b""
            while len(head) < 9:
                chunk = s.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
    except socket.timeout:
        return f"no answer within {PROBE_TIMEOUT_S:g} s"
    except OSError as e:  # refused, unreachable, unknown host
        return e.strerror or str(e) or type(e).__name__
    if len(head) < 9 or head[3] != 4:
        return "something answers there, but not a gRPC server (a dashboard or other port?)"
    return None


@contextlib.contextmanager
def _single_machine_mode():
    """Ray's loopback-only mode while the local processes start (they inherit it); restored
    afterwards so that a later connection to a real cluster from this process is unaffected."""
    from ray._private import ray_constants

    old_env, old_flag = os.environ.get(_SINGLE_MACHINE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_flag
        if old_env is None:
            os.environ.pop(_SINGLE_MACHINE_ENV)
        else:
            os.environ[_SINGLE_MACHINE_ENV] = old_env
