"""cluster/: every YAML parses with the safe loader; every job command it (or its README)
names runs a file that exists in jobs/ with a config that passes that job's own validation;
every KubeRay object passes KubeRay's ray.io/v1 CRD schema (vendored under tests/data/kuberay,
unknown fields refused); the GPU RayJobs ask for GPUs; the GKE TPU cluster, the TPU pod and
tpu-scaling.yaml describe one slice; every node's Python meets pyproject.toml; the local
default binds to loopback; the scheduled rounds' wait script (run against a fake kubectl) ends
on every terminal state and on its timeout, and creates nothing once the last round is done."""
from __future__ import annotations

import argparse
import copy
import hashlib
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest
import ray
import yaml

from pipeline.distributed import jobs_client

ROOT = jobs_client.project_root()
CLUSTER = ROOT / "cluster"
YAMLS = sorted(CLUSTER.glob("*.yaml"))
JOB_CMD = re.compile(r"python3? jobs/[a-z0-9_-]+\.py[^\n`'\"|;&]*")
CRDS = ROOT / "tests" / "data" / "kuberay"
# KubeRay v1.6.2's CRDs (tests/data/kuberay/README.md): file -> git blob hash of the upstream file.
KUBERAY_CRD_BLOBS = {
    "ray.io_rayclusters.yaml": "2f432d40d9cc90132d6107264260e966f503ceb7",
    "ray.io_rayjobs.yaml": "3faf478c0ac3cec0d2cea389ac9182c5adb9c464",
    "ray.io_rayservices.yaml": "631308373b83fbd537dd6bfbb391bd82e48ff083",
    "ray.io_raycronjobs.yaml": "df4ceb52b8e239cbae91936779035ea2f1af983d",
}


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
        config_path, overrides = _job_config(job, argv[2:])
        if config_path is None:  # train_teacher --resume: the run's own config.yaml
            continue
        assert (ROOT / config_path).is_file(), f"{where}: {command}: no {config_path}"
        module.load_config(str(ROOT / config_path), overrides)  # raises UserError if invalid


def _job_config(job: str, args: list[str]) -> tuple[str | None, dict]:
    """(config path, overrides) of a job's arguments, parsed as the job parses them: train_teacher
    takes every option of `ddss train-teacher`, the other jobs --config and --set."""
    if job != "train_teacher":
        return jobs_client.parse_job_args(args, "", f"configs/{job}.yaml")
    from pipeline.app.commands import train_teacher
    from pipeline.config import parse_sets

    p = argparse.ArgumentParser(exit_on_error=False)
    train_teacher.add_arguments(p)
    ns = p.parse_args(args)  # an unknown option fails here
    return (None if ns.resume else ns.config or train_teacher.DEFAULT_CONFIG), parse_sets(ns.set)


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


def _cluster_specs():
    """(file, kind, RayCluster spec) of every RayCluster, RayJob and RayCronJob under cluster/."""
    for path in YAMLS:
        for doc in _docs(path):
            kind = doc.get("kind")
            if kind == "RayCluster":
                yield path.name, doc, doc["spec"]
            elif kind == "RayJob":
                yield path.name, doc, doc["spec"]["rayClusterSpec"]
            elif kind == "RayCronJob":
                yield path.name, doc, doc["spec"]["jobTemplate"]["rayClusterSpec"]


def _containers(group):
    return group["template"]["spec"]["containers"]


def _asks(group, resource: str) -> bool:
    """Every container of the group requests and limits `resource` (Kubernetes needs both equal
    for extended resources such as nvidia.com/gpu and google.com/tpu)."""
    res = [c.get("resources", {}) for c in _containers(group)]
    return all(resource in r.get("limits", {}) and r.get("requests", {}).get(resource) == r["limits"][resource]
               for r in res)


def test_rayjobs_have_an_entrypoint_and_clusters_match_this_ray():
    seen = 0
    for name, doc, spec in _cluster_specs():
        seen += 1
        if doc["kind"] == "RayJob":
            assert _commands(doc["spec"]["entrypoint"]), f"{name}: entrypoint is not a job"
        if doc["kind"] == "RayCronJob":
            assert _commands(doc["spec"]["jobTemplate"]["entrypoint"]), f"{name}: entrypoint is not a job"
        assert doc["apiVersion"] == "ray.io/v1"
        assert spec["rayVersion"] == ray.__version__, name
        assert spec.get("authOptions", {}).get("mode") == "token", f"{name}: token auth off"
        groups = spec["workerGroupSpecs"]
        gpu = [g for g in groups if _asks(g, "nvidia.com/gpu")]
        tpu = [g for g in groups if _asks(g, "google.com/tpu")]
        assert gpu or tpu, f"{name}: no GPU or TPU worker group"
        for g in gpu:
            env = {e["name"]: e.get("value") for c in _containers(g) for e in c.get("env", [])}
            assert env.get("XLA_PYTHON_CLIENT_PREALLOCATE") == "false"
            tolerations = g["template"]["spec"].get("tolerations", [])
            assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations), f"{name}: GPU nodes' taint not tolerated"
        for g in tpu:
            selector = g["template"]["spec"].get("nodeSelector", {})
            assert {"cloud.google.com/gke-tpu-accelerator", "cloud.google.com/gke-tpu-topology"} <= set(selector), name
            assert g.get("numOfHosts", 1) >= 1
    assert seen >= 6


def test_gpu_rayjobs_for_teacher_search_evaluate_and_distill_ask_for_gpus():
    jobs = {}
    for name, doc, spec in _cluster_specs():
        if doc["kind"] != "RayJob":
            continue
        (command,) = _commands(doc["spec"]["entrypoint"])
        job = Path(shlex.split(command)[1]).stem
        gpus = sum(g["replicas"] * g.get("numOfHosts", 1) * int(_containers(g)[0]["resources"]["limits"]["nvidia.com/gpu"])
                   for g in spec["workerGroupSpecs"] if _asks(g, "nvidia.com/gpu"))
        assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", f"{name}: work must go to the GPU workers"
        if job in ("train_teacher", "ddss_search"):  # the SPMD workers ask JAX for the GPUs too
            assert re.search(r"accelerator[ =]gpu", command), f"{name}: {command}"
        jobs[job] = (name, gpus)
    assert {"train_teacher", "ddss_search", "evaluate", "distill_round"} <= set(jobs), jobs
    assert all(gpus >= 1 for _, gpus in jobs.values()), jobs


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


def test_tpu_scaling_matches_the_gke_tpu_slice():
    (scaling_doc,) = _docs(CLUSTER / "tpu-scaling.yaml")
    scaling = scaling_doc["scaling"]
    (cluster,) = _docs(CLUSTER / "kuberay-raycluster-tpu-gke.yaml")
    (group,) = [g for g in cluster["spec"]["workerGroupSpecs"] if _asks(g, "google.com/tpu")]
    selector = group["template"]["spec"]["nodeSelector"]
    # GKE's accelerator labels: tpu-v4-podslice, tpu-v5-lite-podslice, tpu-v5p-slice, tpu-v6e-slice
    gen = re.fullmatch(r"tpu-(v\d+[a-z]?)(-lite)?-(podslice|slice)", selector["cloud.google.com/gke-tpu-accelerator"])
    assert gen and scaling["accelerator_type"] == f"TPU-{gen.group(1).upper()}"
    assert selector["cloud.google.com/gke-tpu-topology"] == scaling["topology"]
    chips = 1
    for d in scaling["topology"].split("x"):
        chips *= int(d)
    per_host = int(_containers(group)[0]["resources"]["limits"]["google.com/tpu"])
    assert group["numOfHosts"] * per_host == chips, "numOfHosts x chips per host must cover the topology"
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 1  # one slice, scheduled whole
    assert scaling["num_workers"] == group["numOfHosts"] and scaling["resources_per_worker"]["TPU"] == per_host
    env = {e["name"]: e.get("value") for c in _containers(group) for e in c.get("env", [])}
    assert "cpu" not in env.get("JAX_PLATFORMS", "tpu"), "a TPU worker must not fall back to CPU"


def _python_at_least(version: str, spec: str) -> bool:
    want = tuple(int(x) for x in re.fullmatch(r">=\s*(\d+)\.(\d+)", spec).groups())
    return tuple(int(x) for x in version.split(".")[:2]) >= want


def _requires_python() -> str:
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["requires-python"]


def test_every_node_runs_a_python_that_pyproject_accepts():
    spec = _requires_python()
    # images: the Dockerfile's default base and the TPU base named in it and in the GKE manifest
    texts = [(CLUSTER / n).read_text() for n in ("Dockerfile", "kuberay-raycluster-tpu-gke.yaml", "README.md")]
    bases = set(re.findall(r"rayproject/ray:[0-9.]+-py(\d)(\d+)", "\n".join(texts)))
    assert bases and all(_python_at_least(f"{a}.{b}", spec) for a, b in bases), (bases, spec)
    # the TPU VMs: the runtime's Python (3.10 on tpu-ubuntu2204-base) is replaced by a uv venv
    (pod,) = _docs(CLUSTER / "tpu-pod.yaml")
    setup = " ".join(pod["setup_commands"])
    (version,) = re.findall(r"uv venv [^;&|]*--python (\d+\.\d+)", setup)
    assert _python_at_least(version, spec), f"tpu-pod.yaml installs Python {version}, pyproject.toml needs {spec}"
    venv = re.search(r"--python \d+\.\d+ (\S+)", setup).group(1)
    for key in ("head_setup_commands", "worker_setup_commands"):
        (install,) = [c for c in pod[key] if "-e /app" in c]
        assert f"--python {venv}/bin/python" in install and "ray[default,train]==" + ray.__version__ in install, key
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in pod[key] if "ray start" in c]
    assert len(starts) == 2 and all(f"{venv}/bin/ray start" in c and f"PATH=$HOME/{venv[2:]}/bin:" in c for c in starts)
    assert "jax[tpu]" in " ".join(pod["worker_setup_commands"])


def test_local_default_binds_to_loopback():
    (local,) = _docs(CLUSTER / "local.yaml")
    assert local["provider"]["head_ip"] == "127.0.0.1"
    head = " ".join(local["head_start_ray_commands"])
    assert "--node-ip-address=127.0.0.1" in head and "--dashboard-host=127.0.0.1" in head
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in head  # single-machine mode: all ports on loopback


# One source of truth for defaults: each config dataclass's defaults. A shipped config may set a
# key to another value only if it is listed here AND its YAML line says so in a comment
# "# default: <the dataclass default>. <why>" (so the comment cannot drift either).
INTENDED_OVERRIDES = {
    ("digits_teacher.yaml", "train.steps"),  # digits converge in 700 steps; the dataclass serves any data
    ("digits_teacher.yaml", "train.checkpoint_every"),  # half-way through those 700 steps
    ("digits_teacher.yaml", "sample.fd_samples"),  # a quicker end-of-training check
    ("ddss_search.yaml", "teacher"),  # the README's teacher run directory; the dataclass has none
    ("evaluate.yaml", "teacher"),  # the same
}
DEFAULT_NOTE = re.compile(r"#\s*default:\s*(?P<value>[^.\s]+)\.\s+\S")


def _key_line(text: str, dotted: str) -> str:
    """The YAML line that sets `dotted` (a.b.c: the first `c:` after `b:` after `a:`)."""
    lines, i = text.splitlines(), 0
    for part in dotted.split("."):
        while not re.match(rf"\s*{re.escape(part)}\s*:", lines[i]):
            i += 1
    return lines[i]


def test_shipped_configs_repeat_the_dataclass_defaults_except_documented_overrides():
    from pipeline import config

    seen = set()
    for job, (name, overrides, _) in JOB_CONFIGS.items():
        path = ROOT / "pipeline" / "configs" / name
        cls = type(jobs_client.import_job(job).load_config(str(path), dict(overrides)))
        defaults = config._flat(config.to_dict(cls()))  # no from_dict: paths not made absolute
        text = path.read_text()
        for key, value in config._flat(config.load_yaml(path)).items():
            assert key in defaults, f"{name}: {key} is no key of {cls.__name__}"
            if value == defaults[key]:
                continue
            assert (name, key) in INTENDED_OVERRIDES, (
                f"{name}: {key} = {value!r} but {cls.__name__} says {defaults[key]!r}: change one of them, "
                "or list the override in INTENDED_OVERRIDES with a '# default: ...' comment saying why")
            note = DEFAULT_NOTE.search(_key_line(text, key))
            assert note, f"{name}: {key} differs from the default: its line needs '# default: VALUE. WHY'"
            stated = yaml.safe_load(note["value"])
            assert stated == defaults[key] or (stated == "none" and not defaults[key]), (
                f"{name}: {key}: the comment says the default is {note['value']}, {cls.__name__} says {defaults[key]!r}")
            seen.add((name, key))
    assert seen == INTENDED_OVERRIDES, f"overrides listed but gone: {sorted(INTENDED_OVERRIDES - seen)}"


def test_the_evaluation_default_is_one_number():
    """`ddss evaluate` (the dataclass) and jobs/evaluate.py (configs/evaluate.yaml) sample the same."""
    from pipeline import config
    from pipeline.app.evaluate_job import EvaluateConfig

    assert config.load_yaml(ROOT / "configs" / "evaluate.yaml")["num_samples"] == EvaluateConfig().num_samples == 1000


# --- the CRD check -----------------------------------------------------------------------------


def _git_blob(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_vendored_crds_are_kuberay_1_6_2_unmodified():
    assert {p.name for p in CRDS.glob("*.yaml")} == set(KUBERAY_CRD_BLOBS)
    for name, blob in KUBERAY_CRD_BLOBS.items():
        assert _git_blob(CRDS / name) == blob, f"{name} differs from KubeRay v1.6.2's"
        assert blob in (CRDS / "README.md").read_text()


def _closed(schema):
    """The schema with every object that lists `properties` closed to other keys (Kubernetes
    prunes them from a structural schema: a misspelt field would vanish silently), unless it
    says x-kubernetes-preserve-unknown-fields."""
    if not isinstance(schema, dict):
        return schema
    s = dict(schema)
    if "properties" in s:
        s["properties"] = {k: _closed(v) for k, v in s["properties"].items()}
        if "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
            s["additionalProperties"] = False
    for k in ("items", "additionalProperties", "not"):
        if isinstance(s.get(k), dict):
            s[k] = _closed(s[k])
    for k in ("allOf", "anyOf", "oneOf"):
        if k in s:
            s[k] = [_closed(x) for x in s[k]]
    return s


@pytest.fixture(scope="module")
def crd_validators() -> dict:
    """kind -> a jsonschema validator of the CRD's ray.io/v1 openAPIV3Schema (closed)."""
    import jsonschema

    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        with open(path) as f:
            crd = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["group"] == "ray.io"
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = _closed(v1["schema"]["openAPIV3Schema"])
        jsonschema.Draft7Validator.check_schema(schema)
        out[crd["spec"]["names"]["kind"]] = jsonschema.Draft7Validator(schema)
    assert {"RayCluster", "RayJob", "RayService", "RayCronJob"} <= set(out)
    return out


def _kuberay_objects() -> list[tuple[str, dict]]:
    """Every ray.io object under cluster/: the YAML files and the ```yaml blocks of the .md files."""
    out = [(p.name, d) for p in YAMLS for d in _docs(p)]
    for md in sorted(CLUSTER.glob("*.md")):
        for block in re.findall(r"```ya?ml\n(.*?)```", md.read_text(), re.S):
            out += [(md.name, d) for d in yaml.safe_load_all(block) if isinstance(d, dict)]
    return [(where, d) for where, d in out if str(d.get("apiVersion", "")).startswith("ray.io/")]


def _errors(validators, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validators[doc["kind"]].iter_errors(doc)]


def test_every_kuberay_object_passes_the_crd_schema(crd_validators):
    objects = _kuberay_objects()
    kinds = {d["kind"] for _, d in objects}
    assert {"RayCluster", "RayJob", "RayCronJob"} <= kinds
    for where, doc in objects:
        assert doc["apiVersion"] == "ray.io/v1", f"{where}: {doc['apiVersion']}"
        assert doc["kind"] in crd_validators, f"{where}: no CRD for kind {doc['kind']}"
        assert not _errors(crd_validators, doc), f"{where} ({doc['kind']}):\n" + "\n".join(_errors(crd_validators, doc))


def _rename(node: dict, key: str, new: str):
    node[new] = node.pop(key)


@pytest.mark.parametrize("case", ["spec", "cluster", "group", "container", "cronjob", "type"])
def test_a_misspelt_field_fails_the_crd_check(crd_validators, case):
    (job,) = _docs(CLUSTER / "kuberay-rayjob-evaluate.yaml")
    (tpu,) = _docs(CLUSTER / "kuberay-raycluster-tpu-gke.yaml")
    (cron,) = _docs(CLUSTER / "distill-round-raycronjob.yaml")
    doc, bad = {"spec": (job, "shutdownAfterJobFinish"), "cluster": (tpu, "authOption"),
                "group": (tpu, "numOfHost"), "container": (job, "resource"), "cronjob": (cron, "schedul"),
                "type": (tpu, None)}[case]
    doc = copy.deepcopy(doc)
    assert not _errors(crd_validators, doc)
    if case == "spec":
        _rename(doc["spec"], "shutdownAfterJobFinishes", bad)
    elif case == "cluster":
        _rename(doc["spec"], "authOptions", bad)
    elif case == "group":
        _rename(doc["spec"]["workerGroupSpecs"][0], "numOfHosts", bad)
    elif case == "container":
        _rename(_containers(doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0])[0], "resources", bad)
    elif case == "cronjob":
        _rename(doc["spec"], "schedule", bad)
    else:
        doc["spec"]["workerGroupSpecs"][0]["numOfHosts"] = "two"
    errors = _errors(crd_validators, doc)
    assert errors, f"{case}: the mutated manifest passed"
    assert any((bad and repr(bad) in e) or (not bad and "'two' is not of type 'integer'" in e) for e in errors), errors


# --- the scheduled rounds ----------------------------------------------------------------------

SCRIPT = CLUSTER / "distill-next-round.sh"
FAKE_KUBECTL = r"""#!/bin/sh
# A fake kubectl: logs its arguments; `get` prints the next line of $FAKE/states (the last one
# again once they run out; a line ERR fails like an unreachable API server).
echo "$*" >> "$FAKE/calls"
case "$1" in
  create) echo rayjob.ray.io/ddss-distill-round-x7k2p ;;
  delete) echo 'rayjob.ray.io "ddss-distill-round-x7k2p" deleted' ;;
  get)
    case "$*" in *reason*) printf 'AppFailed: job failed'; exit 0 ;; esac
    n=$(( $(cat "$FAKE/n" 2>/dev/null || echo 0) + 1 )); echo $n > "$FAKE/n"
    line=$(sed -n "${n}p" "$FAKE/states"); [ -n "$line" ] || line=$(tail -n 1 "$FAKE/states")
    [ "$line" = ERR ] && { echo 'error: the server is unavailable' >&2; exit 1; }
    printf '%s' "$line" ;;
  *) echo "fake kubectl: unexpected $*" >&2; exit 3 ;;
esac
"""


def _run_script(tmp_path, states: list[str], timeout_s=30, grace_s=60, done_file="", spec=None, poll_s=0.05):
    """Run cluster/distill-next-round.sh with the fake kubectl answering `states` in turn
    ("Deployment/JOBSTATUS" as the jsonpath prints them); returns (rc, output, kubectl calls)."""
    fake = tmp_path / "fake"
    fake.mkdir(exist_ok=True)
    (fake / "kubectl").write_text(FAKE_KUBECTL)
    (fake / "kubectl").chmod(0o755)
    (fake / "states").write_text("\n".join(states) + "\n")
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "FAKE": str(fake),
           "RAYJOB_SPEC": str(spec or CLUSTER / "distill-round-rayjob.yaml"), "DONE_FILE": str(done_file),
           "POLL_S": str(poll_s), "TIMEOUT_S": str(timeout_s), "GRACE_S": str(grace_s)}
    p = subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    calls = (fake / "calls").read_text().splitlines() if (fake / "calls").exists() else []
    return p.returncode, p.stdout + p.stderr, calls


@pytest.mark.parametrize("states, rc", [
    (["/", "Initializing/", "Running/PENDING", "Running/RUNNING", "Complete/SUCCEEDED"], 0),
    (["Running/RUNNING", "Failed/FAILED"], 1),
    (["ValidationFailed/"], 1),  # the state the old loop (Complete|Failed only) spun on for ever
    (["Running/RUNNING", "Complete/STOPPED"], 1),
    (["Failed/"], 1),  # e.g. the submitter failed before Ray had the job
], ids=["complete", "failed", "validation-failed", "stopped", "failed-no-job"])
def test_wait_ends_on_every_terminal_deployment_state(tmp_path, states, rc):
    code, out, calls = _run_script(tmp_path, states)
    assert code == rc, out
    assert [c.split()[0] for c in calls].count("create") == 1 and not any(c.startswith("delete") for c in calls)
    assert f"deployment '{states[-1].split('/')[0]}', job '{states[-1].split('/')[1]}'" in out
    if rc:
        assert "did not succeed: AppFailed: job failed" in out


@pytest.mark.parametrize("job, rc", [("SUCCEEDED", 0), ("FAILED", 1), ("STOPPED", 1)])
def test_a_terminal_job_status_ends_the_wait_when_the_deployment_does_not_follow(tmp_path, job, rc):
    """A submitter pod that never exits keeps the deployment Running; the job's state decides after GRACE_S."""
    t = time.time()
    code, out, calls = _run_script(tmp_path, ["Running/RUNNING", f"Running/{job}"], grace_s=1)
    assert code == rc, out
    assert f"job {job}, deployment still 'Running' after 1 s" in out and time.time() - t < 20
    assert not any(c.startswith("delete") for c in calls)


def test_a_retry_is_waited_for_and_api_errors_are_retried(tmp_path):
    states = ["Running/RUNNING", "Running/FAILED", "Retrying/FAILED", "ERR", "/", "Initializing/",
              "Running/RUNNING", "Complete/SUCCEEDED"]
    code, out, calls = _run_script(tmp_path, states, grace_s=30)
    assert code == 0, out
    assert "kubectl get rayjob.ray.io/ddss-distill-round-x7k2p failed; retrying" in out
    assert sum(c.startswith("get") for c in calls) == len(states)


def test_the_wait_times_out_and_deletes_the_rayjob(tmp_path):
    t = time.time()
    code, out, calls = _run_script(tmp_path, ["Running/RUNNING"], timeout_s=2)
    assert code == 124, out
    assert 1 <= time.time() - t < 20  # date +%s counts whole seconds
    assert "timeout: rayjob.ray.io/ddss-distill-round-x7k2p not finished after 2 s (deployment 'Running', job 'RUNNING')" in out
    assert calls[-1] == "delete rayjob.ray.io/ddss-distill-round-x7k2p --wait=false"


def test_no_rayjob_is_created_once_the_last_round_is_finished(tmp_path):
    from pipeline import rundir

    last = tmp_path / "round-08"
    last.mkdir()
    rundir.update_results(last, {"round": 8, "steps": 1, "finished": False})
    code, out, calls = _run_script(tmp_path, ["Complete/SUCCEEDED"], done_file=last / "results.json")
    assert code == 0 and [c.split()[0] for c in calls] == ["create", "get"], out  # not finished yet: one round
    rundir.update_results(last, {"finished": True, "train_time_s": 1.0, "nested": {"finished": False}})
    (tmp_path / "fake" / "calls").unlink()
    code, out, calls = _run_script(tmp_path, ["Complete/SUCCEEDED"], done_file=last / "results.json")
    assert code == 0 and calls == [], out
    assert f"the last round is already finished ({last / 'results.json'}): no RayJob created" in out


def test_a_missing_manifest_is_one_line_and_nothing_created(tmp_path):
    code, out, calls = _run_script(tmp_path, ["Complete/SUCCEEDED"], spec=tmp_path / "nope.yaml")
    assert code == 2 and calls == []
    assert out.strip() == f"error: no RayJob manifest at {tmp_path / 'nope.yaml'} (set RAYJOB_SPEC)"


def test_the_schedule_runs_the_script_in_a_pinned_kubectl_image_and_checks_the_last_round():
    from pipeline.distill import rounds
    from pipeline.distill.config import load_job

    docs = {d["kind"]: d for d in _docs(CLUSTER / "distill-schedule.yaml")}
    cron = docs["CronJob"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    (c,) = pod["containers"]
    image = c["image"]
    assert not image.startswith("bitnami/"), "bitnami/kubectl tags are gone from Docker Hub"
    assert re.fullmatch(r"[\w./-]+(:v?\d+\.\d+\.\d+|@sha256:[0-9a-f]{64})", image), f"{image}: pin a version or digest"
    assert c["command"] == ["/bin/sh", "/spec/next-round.sh"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert job["activeDeadlineSeconds"] > int(env["TIMEOUT_S"]) > 0
    assert set(docs["Role"]["rules"][0]["verbs"]) >= {"create", "get", "delete"}
    # the ConfigMap the pod mounts holds both files, as the manifest's and the guide's command make it
    for text in ((CLUSTER / "distill-schedule.yaml").read_text(), (CLUSTER / "DISTILL_SCHEDULE.md").read_text()):
        assert ("--from-file=rayjob.yaml=cluster/distill-round-rayjob.yaml" in text
                and "--from-file=next-round.sh=cluster/distill-next-round.sh" in text)
    # DONE_FILE is the results.json of the last round the RayJob's entrypoint runs
    (rayjob,) = _docs(CLUSTER / "distill-round-rayjob.yaml")
    (command,) = _commands(rayjob["spec"]["entrypoint"])
    cfg_path, overrides = _job_config("distill_round", shlex.split(command)[2:])
    jc = load_job(str(ROOT / cfg_path), overrides)
    last = rounds.rounds_until(jc.distill, jc.until)[-1]
    assert env["DONE_FILE"] == os.path.join(rounds.round_dir(rounds.root_dir(jc.distill), last), "results.json")
    assert env["RAYJOB_SPEC"] == "/spec/rayjob.yaml"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/data"]["readOnly"] and env["DONE_FILE"].startswith("/data/")
