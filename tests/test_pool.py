"""The Ray actor pool (pipeline/distributed/pool.py) on a real local Ray, with the exact
Gaussian-mixture denoiser of tests/test_evaluation_evaluator.py: identical results for 1, 2 and 4 actors,
the same numbers after an actor is killed or a node removed mid-evaluation, one pool serving
many specs, an actor's user error as one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import psutil
import pytest

from pipeline import evaluation as E
from pipeline.distributed.pool import EvalPool
from pipeline.errors import UserError
from test_evaluation_evaluator import PROBLEM, local_result, spec  # noqa: F401  (local_result: a fixture)

HALF_CPU = {"CPU": 0.5}  # four actors fit on the two CPUs of the shared local Ray


@pytest.fixture(scope="module")
def pool_results(local_ray):
    from pipeline.distributed import evaluation

    return {w: evaluation.evaluate(spec(), workers=w, resources=HALF_CPU, progress=False) for w in (1, 2, 4)}


@pytest.mark.ray
def test_results_identical_for_1_2_4_workers(pool_results, local_result):
    one = pool_results[1]
    for w in (2, 4):
        assert pool_results[w]["kid"] == one["kid"] and pool_results[w]["fd"] == one["fd"], w
    assert one["kid"] == pytest.approx(local_result["metrics"]["kid"], rel=1e-6)
    assert one["fd"] == pytest.approx(local_result["metrics"]["fd"], rel=1e-6)
    assert one["num_samples"] == 240 and one["retried"] == 0


@pytest.mark.ray
def test_killed_actor_range_is_retried_with_the_same_numbers(pool_results, local_ray):
    from pipeline.distributed import evaluation

    killed = []

    def kill_a_busy_actor(info):
        if not killed and info["busy"]:
            actor, _ = info["busy"][0]
            killed.append(actor)
            local_ray.kill(actor)

    out = evaluation.evaluate(spec(), workers=2, resources=HALF_CPU, progress=False, on_range_done=kill_a_busy_actor)
    assert killed and out["retried"] >= 1 and out["actors_started"] >= 3
    assert out["kid"] == pool_results[1]["kid"] and out["fd"] == pool_results[1]["fd"]


@pytest.mark.ray
def test_user_error_in_an_actor_is_one_line(local_ray):
    from pipeline.distributed import evaluation

    with pytest.raises(UserError, match="takes no artefact"):
        evaluation.evaluate(E.EvalSpec(PROBLEM, "ddim:x", steps=4, num_samples=8), workers=1,
                            resources=HALF_CPU, progress=False)


@pytest.mark.ray
def test_one_pool_serves_many_specs_with_the_same_numbers(pool_results, local_result, local_ray):
    """EvalPool: specs evaluated together and one after another on the same two actors give the
    numbers of a pool per spec; a spec's bad input takes its place without stopping the others."""
    from pipeline.distributed import evaluation

    bad = E.EvalSpec(PROBLEM, "ddim:x", steps=4, num_samples=8)
    with EvalPool(2, resources=HALF_CPU) as pool:
        outs = evaluation.evaluate_many([spec(), bad, spec("ddim")], workers=2, pool=pool, progress=False,
                                        keep_samples=5, return_errors=True)
        again = evaluation.evaluate(spec(), workers=2, pool=pool, progress=False)
        assert pool.actors_started == 2 and len(pool.references) == 1  # one reference for the problem
    assert outs[0]["kid"] == pool_results[1]["kid"] and outs[0]["fd"] == pool_results[1]["fd"]
    assert again["kid"] == pool_results[1]["kid"] and again["fd"] == pool_results[1]["fd"]
    assert isinstance(outs[1], UserError) and "takes no artefact" in str(outs[1])
    assert outs[2]["fd"] != outs[0]["fd"]  # ddim's own numbers, not ddpm's
    np.testing.assert_array_equal(outs[0]["samples"], local_result["samples"][:5])


NODE_LOSS = textwrap.dedent("""
    import json, sys
    import ray
    from ray.cluster_utils import Cluster
    sys.path.insert(0, {tests!r})
    from test_evaluation_evaluator import spec
    from pipeline.distributed import evaluation

    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=0, include_dashboard=False,
        _system_config={{"health_check_period_ms": 500, "health_check_failure_threshold": 3}}))
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=cluster.address)
    removed = []

    def remove_a_busy_node(info):
        if removed or not info["busy"]:
            return
        _, node_id = info["busy"][0]
        node = next(n for n in nodes if n.node_id == node_id)
        cluster.remove_node(node, allow_graceful=False)
        removed.append(node_id)

    try:
        out = evaluation.evaluate(spec(), workers=2, progress=False, on_range_done=remove_a_busy_node)
        print("RESULT " + json.dumps(dict(out, removed=len(removed))))
    finally:
        ray.shutdown()
        cluster.shutdown()
""")


def _run_reaping(cmd, timeout, env):
    """Run cmd; afterwards (or on timeout) kill every process it started that is still alive
    (a killed Ray node can leave its agents behind)."""
    seen = {}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        parent = psutil.Process(proc.pid)
        deadline = time.time() + timeout
        while proc.poll() is None and time.time() < deadline:
            try:
                seen.update({c.pid: c for c in parent.children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.5)
        if proc.poll() is None:
            proc.kill()
        rc = proc.wait()
        for p in seen.values():
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        out.seek(0)
        err.seek(0)
        return rc, out.read(), err.read()


@pytest.mark.ray
def test_lost_node_range_is_retried_with_the_same_numbers(pool_results, tmp_path):
    """A two-node ray.cluster_utils.Cluster (own processes, in a subprocess so the shared
    local Ray is untouched); one node is removed while its actor holds a range."""
    script = tmp_path / "node_loss.py"
    script.write_text(NODE_LOSS.format(tests=os.path.dirname(__file__)))
    rc, stdout, stderr = _run_reaping([sys.executable, str(script)], timeout=240, env=dict(os.environ, RAY_ADDRESS=""))
    lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
    assert rc == 0 and lines, stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["removed"] == 1 and out["retried"] >= 1
    assert out["kid"] == pool_results[1]["kid"] and out["fd"] == pool_results[1]["fd"]


NO_DEVICE = textwrap.dedent("""
    import json, sys
    import ray
    from ray.cluster_utils import Cluster
    sys.path.insert(0, {tests!r})
    from test_evaluation_evaluator import spec
    from pipeline.distributed import evaluation
    from pipeline.errors import UserError

    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, include_dashboard=False))
    gpu = cluster.add_node(num_cpus=1, num_gpus=1)
    ray.init(address=cluster.address)
    out = {{}}
    try:
        try:
            evaluation.evaluate(spec(), workers=1, resources={{"GPU": 1}}, progress=False)
        except UserError as e:
            out["error"] = str(e)
        cpu = evaluation.evaluate(spec(), workers=1, resources={{"CPU": 1}}, progress=False)
        out["cpu"] = {{"platforms": cpu["platforms"], "kid": cpu["kid"]}}
        print("RESULT " + json.dumps(out))
    finally:
        ray.shutdown()
        cluster.shutdown()
""")


@pytest.mark.ray
def test_an_actor_given_a_gpu_jax_cannot_see_stops_the_evaluation_with_one_line(pool_results, tmp_path):
    """A Cluster whose second node declares a GPU (in a subprocess: the shared local Ray is
    another): the actor asking for it lands there, its ready() finds only a CPU, and the
    evaluation ends before any sampling with one line naming the node and what JAX sees; a CPU
    actor on the same cluster evaluates as before and records its platform."""
    script = tmp_path / "no_device.py"
    script.write_text(NO_DEVICE.format(tests=os.path.dirname(__file__)))
    env = dict(os.environ, RAY_ADDRESS="", JAX_PLATFORMS="")
    env.pop("XLA_FLAGS", None)
    rc, stdout, stderr = _run_reaping([sys.executable, str(script)], timeout=240, env=env)
    lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
    assert rc == 0 and lines, stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert "\n" not in out["error"] and out["error"].startswith("node "), out
    assert "was given 1 GPU but JAX sees [CpuDevice(id=0)]" in out["error"], out
    assert out["cpu"] == {"platforms": {"cpu": 1}, "kid": pool_results[1]["kid"]}
