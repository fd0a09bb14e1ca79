"""cluster/: every YAML parses with the safe loader; every job command it (or its README)
names runs a file that exists in jobs/ with a config that passes that job's own validation;
the TPU scaling matches the TPU pod; the local default binds to loopback."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from pipeline.distributed import jobs_client

ROOT = jobs_client.project_root()
CLUSTER = ROOT / "cluster"
YAMLS = sorted(CLUSTER.glob("*.yaml"))
JOB_CMD = re.compile(r"python3? jobs/[a-z0-9_-]+\.py[^\n`'\"|;&]*")


def _docs(path: Path) -> list:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def _commands(text: str) -> list[str]:
    return [m.group(0).strip() for m in JOB_CMD.finditer(text)]


def _all_commands() -> list[tuple[str, str]]:
    out = []
    for path in YAMLS:
        for doc in _docs(path):
            for s in _strings(doc):
                out += [(path.name, c) for c in _commands(s)]
    readme = (CLUSTER / "README.md").read_text()
    out += [("README.md", c) for c in _commands(readme.replace("\\\n", " "))]
    return out


def test_cluster_folder_has_the_promised_configs():
    names = {p.name for p in YAMLS}
    assert {"kuberay-raycluster-gpu.yaml", "kuberay-rayjob-evaluate.yaml", "tpu-pod.yaml", "tpu-scaling.yaml",
            "local.yaml"} <= names
    assert (CLUSTER / "README.md").is_file()


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_yaml_parses_with_the_safe_loader_into_mappings(path):
    docs = _docs(path)
    assert docs and all(isinstance(d, dict) for d in docs)


def test_job_commands_name_existing_jobs_and_valid_configs():
    commands = _all_commands()
    assert any(where.startswith("kuberay-rayjob") for where, _ in commands)
    for where, command in commands:
        argv = shlex.split(command)
        job = Path(argv[1]).stem
        assert (ROOT / "jobs" / f"{job}.py").is_file(), f"{where}: {command}: no jobs/{job}.py"
        module = jobs_client.import_job(job)
        assert hasattr(module, "load_config"), f"jobs/{job}.py has no load_config(path, overrides)"
        config_path, overrides = jobs_client.parse_job_args(argv[2:], "", f"configs/{job}.yaml")
        assert (ROOT / config_path).is_file(), f"{where}: {command}: no {config_path}"
        module.load_config(str(ROOT / config_path), overrides)  # raises UserError if invalid


# Every job in jobs/ with its config (configs/NAME), the --set overrides a run must give
# (the keys the file leaves empty on purpose) and the class its own load_config returns.
JOB_CONFIGS = {
    "ddss_search": ("ddss_search.yaml", {}, "SearchConfig"),
    "distill_round": ("distill.yaml", {"distill.teacher": "runs/teacher-digits"}, "JobConfig"),
    "evaluate": ("evaluate.yaml", {}, "EvaluateConfig"),
    "tiny": ("tiny.yaml", {}, "TinyConfig"),
    "train_teacher": ("digits_teacher.yaml", {}, "TeacherConfig"),
}
# Jobs that take no config file: job name -> why.
JOBS_WITHOUT_CONFIG: dict[str, str] = {}


def test_every_job_config_in_configs_validates():
    jobs = set(jobs_client.job_names())
    assert jobs, "no jobs in jobs/"
    listed = set(JOB_CONFIGS) | set(JOBS_WITHOUT_CONFIG)
    assert not set(JOB_CONFIGS) & set(JOBS_WITHOUT_CONFIG), "a job is listed both with and without a config"
    assert jobs <= listed, f"jobs with no entry in JOB_CONFIGS or JOBS_WITHOUT_CONFIG: {sorted(jobs - listed)}"
    assert listed <= jobs, f"listed jobs missing from jobs/: {sorted(listed - jobs)}"
    assert all(JOBS_WITHOUT_CONFIG.values()), "every job without a config needs a reason"
    for job, (name, overrides, config_class) in JOB_CONFIGS.items():
        path = ROOT / "configs" / name
        assert path.is_file(), f"jobs/{job}.py: no configs/{name}"
        module = jobs_client.import_job(job)
        assert hasattr(module, "load_config"), f"jobs/{job}.py has no load_config(path, overrides)"
        cfg = module.load_config(str(path), dict(overrides))  # raises UserError if invalid
        assert type(cfg).__name__ == config_class, f"jobs/{job}.py loads configs/{name} as {type(cfg).__name__}"
    for job in JOBS_WITHOUT_CONFIG:
        assert not hasattr(jobs_client.import_job(job), "load_config"), f"jobs/{job}.py has a load_config"
    checked = {name for name, _, _ in JOB_CONFIGS.values()}
    present = {p.name for p in (ROOT / "configs").glob("*.yaml")}
    assert present <= checked, f"configs/*.yaml that no job validates: {sorted(present - checked)}"


def test_rayjobs_have_an_entrypoint_and_clusters_match_this_ray():
    for path in YAMLS:
        for doc in _docs(path):
            kind = doc.get("kind")
            if kind == "RayJob":
                assert _commands(doc["spec"]["entrypoint"]), f"{path.name}: entrypoint is not a job"
                spec = doc["spec"]["rayClusterSpec"]
            elif kind == "RayCluster":
                spec = doc["spec"]
            else:
                continue
            assert doc["apiVersion"] == "ray.io/v1"
            assert spec["rayVersion"] == ray.__version__, path.name
            assert spec.get("authOptions", {}).get("mode") == "token", f"{path.name}: token auth off"
            gpu_groups = [g for g in spec["workerGroupSpecs"]
                          if any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
                                 for c in g["template"]["spec"]["containers"])]
            assert gpu_groups, f"{path.name}: no GPU worker group"
            for g in gpu_groups:
                env = {e["name"]: e.get("value") for c in g["template"]["spec"]["containers"] for e in c.get("env", [])}
                assert env.get("XLA_PYTHON_CLIENT_PREALLOCATE") == "false"


def test_tpu_scaling_builds_a_jaxtrainer_scaling_config_matching_the_pod():
    from ray.train import ScalingConfig

    (scaling_doc,) = _docs(CLUSTER / "tpu-scaling.yaml")
    scaling = ScalingConfig(**scaling_doc["scaling"])  # Ray checks topology vs accelerator type
    assert scaling.use_tpu and scaling.topology and scaling.accelerator_type
    (pod,) = _docs(CLUSTER / "tpu-pod.yaml")
    tpu_nodes = [n for n in pod["available_node_types"].values() if "acceleratorType" in n["node_config"]]
    assert len(tpu_nodes) == 1
    node = tpu_nodes[0]
    gen, cores = node["node_config"]["acceleratorType"].split("-")  # e.g. v4-16: 16 TensorCores
    assert scaling.accelerator_type == f"TPU-{gen.upper()}"
    chips = 1
    for d in scaling.topology.split("x"):
        chips *= int(d)
    assert chips == int(cores) // 2  # v4: two TensorCores per chip
    per_host = node["resources"]["TPU"]
    assert scaling.resources_per_worker["TPU"] == per_host
    assert scaling.num_workers * per_host == chips  # one worker per host covers the slice


def test_local_default_binds_to_loopback():
    (local,) = _docs(CLUSTER / "local.yaml")
    assert local["provider"]["head_ip"] == "127.0.0.1"
    head = " ".join(local["head_start_ray_commands"])
    assert "--node-ip-address=127.0.0.1" in head and "--dashboard-host=127.0.0.1" in head
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in head  # single-machine mode: all ports on loopback
