"""Connecting to Ray (pipeline/distributed/ray_init.py) without starting one: ray.init is
replaced by a recorder, so the address chosen (the argument, else RAY_ADDRESS, else a private
local Ray on loopback), the loopback-only mode while it starts and its undoing are checked."""
from __future__ import annotations

import importlib
import logging
import os

import pytest
import ray
from ray._private import ray_constants

from pipeline.distributed import ray_init

MODE = ray_init._SINGLE_MACHINE_ENV


@pytest.fixture
def inits(monkeypatch):
    """ray.init's calls: (keyword arguments, the loopback variable and Ray's cluster flag then)."""
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: bool(calls))
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append((kw, os.environ.get(MODE), ray_constants.ENABLE_RAY_CLUSTER)))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(MODE, raising=False)
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
