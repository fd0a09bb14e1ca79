"""Fault tolerance of the SPMD jobs on a real local Ray with 2 CPU workers (multi-process JAX
over gloo): a worker SIGKILLed during a DDSS search or a distillation round makes Ray Train
(FailureConfig) restart the group, the loop resumes from the latest orbax checkpoint, and the
final parameters equal those of an uninterrupted 2-worker run bit for bit.

The kill is test_spmd's: on the first attempt every process, right after checkpoint PAUSE_AT
is committed, writes its pid to RUN_DIR/pid.<process> and sleeps; the test SIGKILLs process 1.
The loops themselves are the production ones; only their checkpointer is wrapped to pause."""
import os
import signal
import sys
import threading
import time

import jax
import numpy as np
import pytest

from helpers import read_metrics
from pipeline import checkpoint, config, ddss, rundir
from pipeline.teacher import model as tmodel
from pipeline.ddss import artefact
from pipeline.ddss.problem import build_problem
from pipeline.ddss.search import init_state, search_loop
from pipeline.distill import config as dconfig
from pipeline.distill import rounds
from pipeline.distill.loop import round_loop
from pipeline.distill.student import load_student_params
from pipeline.distributed.spmd import run_spmd

pytestmark = pytest.mark.ray

PAUSE_AT = 2  # the checkpoint after which the first attempt pauses (of 6 steps, one every 2)
SEARCH = {"gmm": "ring2d", "steps": 3, "batch_size": 8, "train_steps": 6, "eval_every": 3, "eval_samples": 16,
          "checkpoint_every": 2, "reference_samples": 64, "learning_rate": 0.01, "remat": "none"}
DISTILL = {"start_steps": 2, "stage1": {"train_steps": 6, "lr": 1e-3, "batch": 4}, "checkpoint_every": 2, "log_every": 2}


class _PausingCheckpointer(checkpoint.Checkpointer):
    """The run's checkpointer; on the first attempt it pauses (to be killed) once checkpoint
    `pause_at` is committed."""

    def __init__(self, directory, *, pause_at, pid_file, **kw):
        super().__init__(directory, **kw)
        self.pause_at, self.pid_file = pause_at, pid_file

    def save(self, step, state, **kw):
        saved = super().save(step, state, **kw)
        if step == self.pause_at and not os.path.exists(self.pid_file):
            self.wait()
            with open(self.pid_file, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(120)  # killed here by the test
        return saved


def _instrumented(loop_fn, cache_dir, pause_at=None):
    """loop_fn with JAX's persistent compilation cache (the runs compile the same programs) and,
    with pause_at, the pausing checkpointer."""

    def loop(ctx):
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        if pause_at is not None:
            pid_file = os.path.join(ctx.run_dir, f"pid.{ctx.process_index}")
            ctx.checkpointer = lambda **kw: _PausingCheckpointer(
                rundir.checkpoint_dir(ctx.run_dir), pause_at=pause_at, pid_file=pid_file, **kw)
        return loop_fn(ctx)

    return loop


def _run_killing_worker_1(run, run_dir):
    """run() (a 2-worker run_spmd call pausing in run_dir) with process 1 SIGKILLed at the pause."""
    out = {}

    def fit():
        try:
            out["r"] = run()
        except BaseException as e:  # re-raised in the test thread below
            out["e"] = e

    th = threading.Thread(target=fit)
    th.start()
    pid_file = os.path.join(run_dir, "pid.1")
    deadline = time.time() + 240
    while not os.path.exists(pid_file) and time.time() < deadline and th.is_alive():
        time.sleep(0.1)
    assert os.path.exists(pid_file), f"the loop never reached the pause: {out.get('e')!r}"
    time.sleep(0.2)
    os.kill(int(open(pid_file).read()), signal.SIGKILL)
    th.join(timeout=300)
    assert not th.is_alive()
    if "e" in out:
        raise out["e"]
    return out["r"]


@pytest.fixture(scope="module")
def by_value(local_ray):
    """Ray workers cannot import this test module: ship its functions by value."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jax-cache"))


def _assert_trees_equal(a, b):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


# ---------------------------------------------------------------------------------------
# DDSS search


def _search(run_dir, cache, pause_at=None):
    cfg = ddss.load_config(dict(SEARCH, workers=2, run_dir=str(run_dir)))
    rundir.write_config(run_dir, cfg)
    return run_spmd(_instrumented(search_loop, cache, pause_at), config.to_dict(cfg), num_workers=2, run_dir=run_dir,
                    max_failures=1)


def _search_state(run_dir):
    cfg = ddss.load_config(rundir.read_config(run_dir))
    target = jax.device_get(init_state(cfg, build_problem(cfg).model.schedule))
    with checkpoint.Checkpointer(rundir.checkpoint_dir(run_dir)) as ck:
        assert ck.latest_step() == cfg.train_steps
        return jax.device_get(ck.restore(target))


@pytest.fixture(scope="module")
def search_uninterrupted(by_value, cache_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("search-whole")
    return d, _search(d, cache_dir)


@pytest.mark.slow  # two worker groups and a third after the kill (~125 s): make test covers the restart with
# test_spmd.py's worker-kill test (the same run_spmd) and the search's bit-exact resume with test_ddss_search.py's
# SIGKILL test; `make test-slow` runs this one, the two together on a real search
def test_search_worker_killed_resumes_to_the_uninterrupted_parameters(search_uninterrupted, cache_dir, tmp_path):
    whole_dir, whole = search_uninterrupted
    assert (whole["processes"], whole["devices"], whole["resumed_from"]) == (2, 2, 0)
    killed = _run_killing_worker_1(lambda: _search(tmp_path, cache_dir, PAUSE_AT), tmp_path)
    assert (killed["processes"], killed["resumed_from"]) == (2, PAUSE_AT)  # a new group, from checkpoint 2
    steps = [m["step"] for m in read_metrics(tmp_path) if "loss" in m]
    assert steps == list(range(1, SEARCH["train_steps"] + 1))  # every step once: none lost, none repeated
    # params, Adam state, step, key, best params/score: the whole final state, bit for bit
    _assert_trees_equal(_search_state(whole_dir), _search_state(tmp_path))
    a, b = artefact.load_artefact(whole_dir / "sampler"), artefact.load_artefact(tmp_path / "sampler")
    _assert_trees_equal(a["params"], b["params"])
    assert a["meta"]["best_step"] == b["meta"]["best_step"] and a["meta"]["best_val"] == b["meta"]["best_val"]


# ---------------------------------------------------------------------------------------
# Distillation round


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny digits teacher (U-Net ch=8), untrained: only its being a teacher matters."""
    from cli_fixtures import _write_teachers

    return _write_teachers(tmp_path_factory.mktemp("teacher"), tiny=lambda a: a)["tiny"]


def _round0(teacher, root, cache, pause_at=None):
    """Round 0 as run_round runs it (prepare_round, then round_loop on the SPMD runner)."""
    cfg = dconfig.load(dict(DISTILL, teacher=teacher, dir=str(root)))
    d = rounds.prepare_round(cfg, rounds.root_dir(cfg), 0)
    loop_cfg = {"distill": config.to_dict(cfg), "round": 0, "root": rounds.root_dir(cfg)}
    result = _run_killing_worker_1 if pause_at is not None else (lambda run, _: run())
    summary = result(lambda: run_spmd(_instrumented(round_loop, cache, pause_at), loop_cfg, num_workers=2, run_dir=d,
                                      max_failures=1), d)
    return d, summary


def _round_state(root, like):
    with checkpoint.Checkpointer(rounds.student_dir(root, 0)) as ck:
        assert ck.latest_step() == 0
    return jax.device_get(load_student_params(str(root), 0, like))


@pytest.mark.slow  # three worker groups (~200 s of CPU): test_spmd.py's worker-kill test covers the restart and
# test_distill_loop.py's SIGKILL test the round's bit-exact resume; `make test-slow` runs it
def test_distill_round_worker_killed_resumes_to_the_uninterrupted_parameters(by_value, cache_dir, teacher_dir,
                                                                             tmp_path):
    whole_dir, whole = _round0(teacher_dir, tmp_path / "whole", cache_dir)
    assert (whole["processes"], whole["devices"], whole["resumed_from"]) == (2, 2, 0)
    killed_dir, killed = _round0(teacher_dir, tmp_path / "killed", cache_dir, PAUSE_AT)
    assert (killed["processes"], killed["resumed_from"]) == (2, PAUSE_AT)
    assert rundir.read_results(killed_dir)["finished"] is True
    steps = [m["step"] for m in read_metrics(killed_dir)]
    assert steps == list(range(DISTILL["log_every"], DISTILL["stage1"]["train_steps"] + 1, DISTILL["log_every"]))
    like = tmodel.load_teacher(teacher_dir).params
    whole_params, killed_params = _round_state(tmp_path / "whole", like), _round_state(tmp_path / "killed", like)
    _assert_trees_equal(whole_params, killed_params)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(whole_params), jax.tree.leaves(like)))  # it trained
