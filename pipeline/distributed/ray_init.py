"""Connecting to Ray: join a cluster given an address (argument or RAY_ADDRESS), otherwise
start a private local Ray bound to the loopback interface."""
from __future__ import annotations

import contextlib
import logging
import os

LOOPBACK = "127.0.0.1"
# On Linux Ray advertises and binds the machine's outward address even when asked for
# 127.0.0.1; its single-machine mode (the default on macOS/Windows, selected by this
# variable) keeps every Ray process on loopback.
_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Ray Train's placement-group cleaner polls the state API, which needs the dashboard: with
# the dashboard off it warns every second. Its own cleanup is moot on a private local Ray.
_NOISY_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


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
        ray.init(address=address)
        return
    with _single_machine_mode():
        ray.init(
            address="local",  # a private Ray, even when a `ray start` head runs on this machine
            num_cpus=num_cpus,
            include_dashboard=dashboard,
            dashboard_host=LOOPBACK,
            runtime_env=None if dashboard else {"worker_process_setup_hook": f"{__name__}.quiet_loggers"},
        )


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
