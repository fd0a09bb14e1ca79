"""The SPMD runner on a real local Ray: 2 CPU workers (multi-process JAX over gloo) reproduce
the 1-worker trajectory; a killed worker is restarted and the loop resumes from its checkpoint
to the same parameters."""
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

from helpers import read_metrics
from pipeline import rundir
from pipeline.distributed.spmd import run_spmd
from pipeline.errors import UserError

pytestmark = pytest.mark.ray

N_DATA, DIM = 256, 4


def toy_loop(ctx):
    """Least squares by SGD on a fixed data set; rows of each global batch drawn from
    (seed, step); checkpoints every step; optionally pauses (waiting to be killed)."""
    import jax
    import jax.numpy as jnp

    cfg = ctx.config
    if cfg.get("fail"):
        from pipeline.errors import UserError

        raise UserError("toy loop refuses: fail=true")
    B = cfg["batch"]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N_DATA, DIM)).astype(np.float32)
    Y = X @ rng.normal(size=DIM).astype(np.float32) + 0.1 * rng.normal(size=N_DATA).astype(np.float32)

    @jax.jit
    def step_fn(state, x, y):
        def loss_fn(w):
            return jnp.mean((x @ w - y) ** 2)

        loss, g = jax.value_and_grad(loss_fn)(state["w"])
        return {"w": state["w"] - 0.2 * g, "step": state["step"] + 1}, loss

    ck = ctx.checkpointer(max_to_keep=2, async_save=False)
    state = ctx.replicate({"w": np.zeros(DIM, np.float32), "step": np.int32(0)})
    resumed_from = ck.latest_step()
    if resumed_from is not None:
        state = ck.restore(state)
    losses = {}
    for s in range(int(state["step"]), cfg["steps"]):
        if s == cfg.get("pause_at") and resumed_from is None:
            with open(os.path.join(ctx.run_dir, f"pid.{ctx.process_index}"), "w") as f:
                f.write(str(os.getpid()))
            time.sleep(120)  # killed here by the test
        idx = np.random.default_rng([cfg["seed"], s]).integers(0, N_DATA, B)
        r = ctx.local_rows(B)
        x, y = (jax.make_array_from_process_local_data(ctx.data_sharding, a[idx[r]], (B,) + a.shape[1:]) for a in (X, Y))
        state, loss = step_fn(state, x, y)
        losses[s] = float(loss)
        ctx.report(s, loss=loss)
        ck.save(s + 1, state)
    ck.close()
    return {
        "losses": losses, "w": np.asarray(state["w"]).tolist(), "resumed_from": resumed_from,
        "process_count": ctx.process_count, "devices": ctx.num_devices,
    }


def report_loop(ctx):
    """Four reports in quick succession; what reaches Ray Train (ctx.on_report, which calls
    ray.train.report) is also written to RUN_DIR/train_reports.<process>.jsonl."""
    import json

    send = ctx.on_report

    def record(metrics):
        with open(os.path.join(ctx.run_dir, f"train_reports.{ctx.process_index}.jsonl"), "a") as f:
            f.write(json.dumps(metrics) + "\n")
        send(metrics)

    ctx.on_report = record if send is not None else None
    for s in range(4):
        ctx.report(s, loss=1.0 / (s + 1))
    return {"process_count": ctx.process_count, "ray_train": send is not None}


@pytest.fixture(scope="module")
def by_value(local_ray):
    """Ray workers cannot import this test module: ship its functions by value."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


CFG = {"batch": 8, "steps": 6, "seed": 3}


@pytest.fixture(scope="module")
def one_worker(by_value, tmp_path_factory):
    return run_spmd(toy_loop, CFG, num_workers=1, run_dir=tmp_path_factory.mktemp("w1"))


def test_in_process_path_matches_one_worker(one_worker, tmp_path):
    assert (one_worker["process_count"], one_worker["devices"]) == (1, 1)
    losses = [one_worker["losses"][s] for s in range(CFG["steps"])]
    assert losses[-1] < losses[0] / 2  # it learns
    local = run_spmd(toy_loop, CFG, num_workers=0, run_dir=tmp_path)
    np.testing.assert_array_equal(local["w"], one_worker["w"])


def test_two_workers_killed_one_restarted_match_one_worker(one_worker, tmp_path):
    """2 processes (multi-process JAX over gloo), worker 1 SIGKILLed at step 3: Ray Train
    restarts the group, the loop resumes from checkpoint 3, and the whole loss trajectory
    equals the 1-worker run's (same global batch and seed) to float tolerance."""
    cfg = dict(CFG, pause_at=3)
    out = {}

    def fit():
        try:
            out["r"] = run_spmd(toy_loop, cfg, num_workers=2, run_dir=tmp_path, max_failures=1)
        except BaseException as e:  # re-raised in the test thread below
            out["e"] = e

    th = threading.Thread(target=fit)
    th.start()
    pid_file = tmp_path / "pid.1"
    deadline = time.time() + 240
    while not pid_file.exists() and time.time() < deadline and th.is_alive():
        time.sleep(0.2)
    assert pid_file.exists(), f"the loop never reached the pause: {out.get('e')!r}"
    time.sleep(0.2)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    th.join(timeout=300)
    assert not th.is_alive()
    if "e" in out:
        raise out["e"]
    r = out["r"]
    assert (r["process_count"], r["devices"]) == (2, 2)
    workers = rundir.read_results(tmp_path)["workers"]  # the restarted group's, one per rank
    assert [(w["rank"], w["platform"], w["devices"]) for w in workers] == [(0, "cpu", 1), (1, "cpu", 1)]
    assert r["resumed_from"] == 3  # restarted from the checkpoint written after step 2
    records = {m["step"]: m["loss"] for m in read_metrics(tmp_path)}  # both attempts
    assert sorted(records) == list(range(CFG["steps"]))
    np.testing.assert_allclose(
        [records[s] for s in range(CFG["steps"])], [one_worker["losses"][s] for s in range(CFG["steps"])], rtol=1e-5
    )
    np.testing.assert_allclose(r["w"], one_worker["w"], rtol=1e-5, atol=1e-6)


def test_two_workers_report_to_ray_train_and_tensorboard_without_hanging(by_value, tmp_path):
    """ray.train.report is a barrier over the workers: every process sends the same reports (the
    first at once, the newest after the loop, none between: less than TRAIN_REPORT_EVERY_S
    apart), and process 0 writes the curve to RUN_DIR/tensorboard/."""
    import json

    from test_context import read_event_scalars

    out = {}

    def fit():
        try:
            out["r"] = run_spmd(report_loop, {}, num_workers=2, run_dir=tmp_path, max_failures=0)
        except BaseException as e:  # re-raised in the test thread below
            out["e"] = e

    th = threading.Thread(target=fit)
    th.start()
    th.join(timeout=240)
    assert not th.is_alive(), "the reports hang"
    if "e" in out:
        raise out["e"]
    assert out["r"] == {"process_count": 2, "ray_train": True}
    expected = [{"step": 0, "loss": 1.0}, {"step": 3, "loss": 0.25}]
    for p in (0, 1):
        with open(tmp_path / f"train_reports.{p}.jsonl") as f:
            assert [json.loads(line) for line in f] == expected
    assert read_event_scalars(tmp_path / "tensorboard") == {"loss": [(s, pytest.approx(1.0 / (s + 1))) for s in range(4)]}


def test_user_error_in_loop_is_raised_once(by_value, tmp_path):
    with pytest.raises(UserError, match="toy loop refuses") as e:
        run_spmd(toy_loop, dict(CFG, fail=True), num_workers=1, run_dir=tmp_path, max_failures=2)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("platform, wanted", [("gpu", 1), ("tpu", 4), ("cpu", 1)])
def test_a_worker_given_an_accelerator_jax_does_not_see_gets_one_line_naming_its_node(platform, wanted):
    """_check_devices on this CPU-only machine: GPU/TPU asked for, [CpuDevice] seen (cpu: no check)."""
    import jax
    import ray

    from pipeline.distributed.spmd import _check_devices

    line = _check_devices(platform, wanted)
    if platform == "cpu":
        assert line is None
        return
    assert line.startswith(f"node {ray.util.get_node_ip_address()}: the worker was given {wanted} {platform.upper()} ")
    assert f"JAX sees {jax.local_devices()}" in line and "\n" not in line


def test_two_workers_of_four_devices_each_match_one_worker_of_one(one_worker, tmp_path):
    """2 processes x 4 forced CPU devices (XLA_FLAGS through worker_env), one mesh of 8 devices:
    the same trajectory as 1 process x 1 device; results.json lists each worker's 4 devices."""
    r = run_spmd(toy_loop, CFG, num_workers=2, run_dir=tmp_path,
                 worker_env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert (r["process_count"], r["devices"]) == (2, 8)
    np.testing.assert_allclose([r["losses"][s] for s in range(CFG["steps"])],
                               [one_worker["losses"][s] for s in range(CFG["steps"])], rtol=1e-5)
    np.testing.assert_allclose(r["w"], one_worker["w"], rtol=1e-5, atol=1e-6)
    workers = rundir.read_results(tmp_path)["workers"]
    assert [(w["rank"], w["process"], w["platform"], w["devices"]) for w in workers] == [(0, 0, "cpu", 4), (1, 1, "cpu", 4)]
