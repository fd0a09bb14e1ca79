"""The accelerator setting (pipeline/accelerator.py): its Ray resources, its checks, its flags on
every job, and - on a simulated multi-node cluster whose nodes declare a GPU or a TPU host - a
train-teacher job that asks for them lands there and stops with one line when JAX sees no such
device (pipeline/distributed/spmd.py's check), the platform each worker used in results.json."""
import argparse
import json
import os
import subprocess
import sys

import pytest

from pipeline import accelerator
from pipeline.accelerator import AcceleratorConfig
from pipeline.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_resources_of_each_kind():
    assert AcceleratorConfig().resources() == {"CPU": 1}
    assert AcceleratorConfig("gpu", 2).resources() == {"GPU": 2}
    assert AcceleratorConfig("gpu", 0.5).resources() == {"GPU": 0.5}
    assert AcceleratorConfig("tpu", 4, "2x2x2", "TPU-V4").resources() == {"TPU": 4}
    assert accelerator.from_resources({"GPU": 1}) == AcceleratorConfig("gpu", 1)
    assert accelerator.from_resources(None) == AcceleratorConfig()


@pytest.mark.parametrize("kw, words", [
    (dict(accelerator="npu"), "accelerator must be one of cpu, gpu, tpu"),
    (dict(accelerator="gpu", devices_per_worker=0), "devices per worker must be > 0"),
    (dict(accelerator="tpu", devices_per_worker=1.5), "whole number"),
    (dict(accelerator="gpu", topology="2x2"), "needs accelerator tpu"),
])
def test_bad_settings_are_one_line_user_errors(kw, words):
    with pytest.raises(UserError, match=words) as e:
        AcceleratorConfig(**kw)
    assert "\n" not in str(e.value)


def _flags(*argv):
    p = argparse.ArgumentParser()
    accelerator.add_arguments(p)
    return p.parse_args(argv)


def test_flags_give_the_setting():
    assert accelerator.from_args(_flags()) is None
    assert accelerator.from_args(_flags("--accelerator", "tpu", "--devices-per-worker", "4", "--tpu-topology", "2x2x2",
                                        "--tpu-type", "TPU-V4")) == AcceleratorConfig("tpu", 4, "2x2x2", "TPU-V4")


def test_every_job_has_the_flags():
    from pipeline.app.commands import distill, evaluate, search, train_teacher

    for command in (train_teacher, search, distill, evaluate):
        p = argparse.ArgumentParser()
        command.add_arguments(p)
        args = p.parse_args(["--accelerator", "gpu", "--devices-per-worker", "2"])
        assert (args.accelerator, args.devices_per_worker) == ("gpu", 2), command.NAME


def test_evaluate_maps_the_setting_onto_actor_resources():
    from pipeline.app.commands import evaluate

    p = argparse.ArgumentParser()
    evaluate.add_arguments(p)
    assert evaluate.actor_resources(p.parse_args([])) == {}
    assert evaluate.actor_resources(p.parse_args(["--accelerator", "gpu", "--devices-per-worker", "0.5"])) == {
        "worker_gpus": 0.5, "worker_tpus": 0.0}
    assert evaluate.actor_resources(p.parse_args(["--accelerator", "tpu", "--devices-per-worker", "4"])) == {
        "worker_gpus": 0.0, "worker_tpus": 4}
    with pytest.raises(UserError, match="SPMD jobs"):
        evaluate.actor_resources(p.parse_args(["--tpu-topology", "2x2x2"]))


def test_search_and_distill_configs_carry_the_setting_as_invocation_keys():
    from pipeline.ddss import config as sconfig
    from pipeline.ddss.search import INVOCATION
    from pipeline.distill import config as dconfig

    cfg = sconfig.load(None, {"gmm": "ring2d", "accelerator": "tpu", "devices_per_worker": 4})
    assert cfg.placement() == AcceleratorConfig("tpu", 4)
    assert {"accelerator", "devices_per_worker", "tpu_topology", "tpu_type"} <= set(INVOCATION)
    with pytest.raises(UserError, match="accelerator must be one of"):
        sconfig.load(None, {"gmm": "ring2d", "accelerator": "npu"})
    job = dconfig.load_job(None, {"distill.teacher": "t", "worker_gpus": 0.5})  # the old key still works
    assert job.placement() == AcceleratorConfig("gpu", 0.5)
    assert dconfig.load_job(None, {"distill.teacher": "t", "accelerator": "tpu", "devices_per_worker": 4}).placement() == \
        AcceleratorConfig("tpu", 4)
    with pytest.raises(UserError, match="not both"):
        dconfig.load_job(None, {"distill.teacher": "t", "worker_gpus": 1, "accelerator": "gpu"})


def test_a_multi_host_tpu_job_without_topology_is_refused_before_ray(tmp_path):
    from pipeline.distributed.spmd import run_spmd

    with pytest.raises(UserError, match="--tpu-topology and --tpu-type"):
        run_spmd(lambda ctx: None, {}, num_workers=2, run_dir=tmp_path, accelerator=AcceleratorConfig("tpu", 4))


@pytest.mark.ray
def test_gpu_and_tpu_jobs_land_on_their_nodes_and_stop_when_jax_sees_no_such_device(tmp_path):
    """A Cluster of its own (a script: the session's Ray is another): each job's one worker runs
    on the node declaring the resource, finds only a CPU, and the job ends with exit 2 and one
    line naming the node and what JAX sees; results.json records the platform it used."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "accelerator_cluster.py"), str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for kind, n in (("gpu", 1), ("tpu", 4)):
        job = out[kind]
        assert job["rc"] == 2, job
        [line] = job["errors"]  # one line
        assert line.startswith("ddss train-teacher: error: node "), job
        assert f"was given {n} {kind.upper()} but JAX sees [CpuDevice(id=0)]" in line, line
        [worker] = job["workers"]
        assert worker["node_id"] == out[f"{kind}_node"]  # it landed on the node declaring the resource
        assert worker["node"] in line and (worker["platform"], worker["devices"], worker["rank"], worker["process"]) == \
            ("cpu", 1, 0, 0)
