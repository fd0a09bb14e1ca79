"""Shared fixtures: one private local Ray for the whole test session."""
import os
import warnings

import pytest

pytest_plugins = ["cli_fixtures"]  # the `ddss` command tests' teachers, search and .npz files

# `make test` runs the suite on two pytest-xdist workers (-n 2 --dist loadfile --no-loadscope-reorder),
# a module at a time so that its module fixtures are built once. TOGETHER's modules share session
# fixtures that take minutes to build (a trained tiny teacher and its distillation rounds): one
# worker runs them all. FIRST: the longest modules (measured with --durations=0) are queued first,
# so that no worker is left running a long one alone at the end; the rest keep their order.
TOGETHER = {name: "distill rounds on tiny_teacher_dir" for name in
            ("test_distill_loop.py", "test_distill_rounds.py", "test_distill_run.py", "test_distill_student.py")}
FIRST = ("test_demo.py", "test_teacher_train.py", "test_readme.py", "test_fault_tolerance.py", "test_distill_loop.py",
         "test_distill_rounds.py", "test_distill_run.py", "test_distill_student.py", "test_spmd.py",
         "test_ddss_search.py", "test_pool.py", "test_grads.py", "test_commands_evaluate.py", "test_byo.py",
         "test_accelerator.py", "test_evaluation_evaluator.py", "test_commands_sample.py", "test_ggdm.py",
         "test_distill_losses.py", "test_submit.py", "test_tfgan_backend.py", "test_classifier.py")


def pytest_collection_modifyitems(config, items):
    """On an xdist worker: FIRST's modules first, in that order (a stable sort keeps the order of
    the tests within a module, and of the other modules)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {name: i for i, name in enumerate(FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile with TOGETHER's modules as one unit of work (xdist's hook)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid):
            module = super()._split_scope(nodeid)
            return TOGETHER.get(os.path.basename(module), module)

    return Scheduling(config, log)


@pytest.fixture(scope="session")
def local_ray():
    """A real local Ray on 127.0.0.1 (2 CPUs, no dashboard), shut down at the end of the session."""
    import ray

    from pipeline.distributed.ray_init import ensure_ray

    with warnings.catch_warnings():
        # Ray starts its processes with fork+exec; JAX (already imported by other tests)
        # warns about any fork although exec follows at once.
        warnings.filterwarnings("ignore", message="os.fork\\(\\) was called")
        ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def small():
    """Two small float64 feature sets, x [37, 6] and y [29, 6] (tests/test_metrics_*.py)."""
    import numpy as np

    rng = np.random.default_rng(7)
    x = rng.normal(size=(37, 6))
    y = 0.8 * rng.normal(size=(29, 6)) + 0.3
    return x, y


# Guided distillation (tests/test_distill_*.py): trained once per session; builders in distill_fixtures.py.


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory):
    """A tiny digits teacher (U-Net ch=8) trained for 80 steps in this process."""
    from distill_fixtures import train_tiny_teacher

    return train_tiny_teacher(str(tmp_path_factory.mktemp("teacher")))


@pytest.fixture(scope="session")
def stage1_root(tiny_teacher_dir, tmp_path_factory):
    """Round 0 of a 4-step schedule, run in this process (no Ray). Tests only read it."""
    from distill_fixtures import run_stage1

    root = tmp_path_factory.mktemp("distill")
    run_stage1(tiny_teacher_dir, root)
    return root


@pytest.fixture(scope="session")
def until_2(tiny_teacher_dir, stage1_root, tmp_path_factory):
    """(cfg, root, records): round 1 run by run_until(cfg, 2) in a copy of stage1_root."""
    from distill_fixtures import run_until_2

    return run_until_2(tiny_teacher_dir, stage1_root, tmp_path_factory.mktemp("distill-until-2"))
