"""cluster/README.md runs as written: every command of its code blocks and inline code spans
(`guide_commands`, in README order) is either run here against a real Ray cluster of separate
processes on loopback, or named in SKIP with the reason it needs a cloud.

The cluster: `ray start --head` plus `ray start --address` for a second node, token auth on
(RAY_AUTH_MODE=token, a fresh RAY_AUTH_TOKEN), every port a free one, its own --temp-dir; it is
stopped by the PIDs of its processes (never `ray stop`: other Ray instances run here).

Substitution rules, applied mechanically to each extracted line (`substitute`, `as_argv`):
- PLACEHOLDERS: NAME -> tiny, HEAD -> 127.0.0.1, the ports 6379 and 8265 -> the free ports of the
  head the line talks to (section 0: its own auth-disabled head; elsewhere: the token cluster),
  /data -> a tmp directory (job run dirs must be absolute: jobs run in a copy of the project);
- `$(kubectl get secret ...)` -> the cluster's token (the only cloud part of an `export` line);
- optional `[...]` parts are dropped; `status|logs|stop` runs each of the three;
- JOB_ID -> the last job the guide submitted; for `stop`, a tiny job the test keeps running;
- TINY budgets are appended after the job's `--` as `--set` (later values win, so
  worker_gpus=0 stands in for the GPUs this machine lacks), and `ray start` gets the extra
  port flags, --temp-dir and --num-cpus of the test appended (EXTRA_START).
The shell starts with section 1's exports done (RAY_ADDRESS, RAY_AUTH_MODE=token, RAY_AUTH_TOKEN);
section 0 runs without them, as a fresh shell on one machine would."""
from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from test_submit import VENV_BIN, _free_ports, _head_processes, _stop

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "cluster" / "README.md"
RUNNERS = ("ddss", "ray", "kubectl", "docker", "helm", "gcloud", "python", "export")
SKIP = {  # first words of a line -> why it is not run here
    "kubectl": "needs a Kubernetes cluster",
    "docker": "builds and pushes an image to a registry",
    "helm": "installs the KubeRay operator into a Kubernetes cluster",
    "gcloud": "needs a Google Cloud project",
    "ray up": "the cluster launcher creates cloud VMs",
    "ray dashboard": "forwards a cloud head's dashboard",
    "ray down": "the cluster launcher deletes cloud VMs",
    "ray get-auth-token": "writes the user's ~/.ray/auth_token; the test makes its own token",
    "python jobs/": "the entrypoint inside a Kubernetes RayJob; `ddss submit` of the same job runs it here",
}
TINY = {  # appended to the job's arguments, as --set KEY=VALUE
    "train_teacher": ["model.kwargs={ch: 8, ch_mult: [1], num_res_blocks: 1}", "train.steps=20", "train.batch_size=16",
                      "train.log_every=10", "train.checkpoint_every=10", "sample.fd_samples=0", "sample.steps=4",
                      "sample.per_class=1"],
    "ddss_search": ["train_steps=2", "batch_size=16", "eval_samples=16", "eval_every=2", "checkpoint_every=2"],
    "evaluate": ["num_samples=20", "batch_size=20", "workers=1", "worker_gpus=0"],
    "distill_round": ["distill.start_steps=8", "distill.stage1={train_steps: 2, lr: 1.0e-4, batch: 8}",
                      "distill.rounds={train_steps: 2, lr: 5.0e-5, batch: 8}", "distill.checkpoint_every=2",
                      "distill.log_every=2"],
}


def guide_commands(text: str) -> list[tuple[str, str]]:
    """(section, command) for each command line of the fenced blocks and of the inline code spans
    that start with a command (RUNNERS) and have 3 words or more, in order; continuations joined,
    comments cut. section: the number of the last `## N.` heading ('' before the first)."""
    out, inside, section, block = [], False, "", text.splitlines()
    i = 0
    while i < len(block):
        line = block[i]
        s = line.strip()
        i += 1
        m = re.match(r"##\s+(\d+)\.", s)
        if m:
            section = m.group(1)
        if s.startswith("```"):
            inside = not inside
            continue
        if inside:
            while s.endswith("\\") and i < len(block):
                s = s[:-1].rstrip() + " " + block[i].strip()
                i += 1
            s = re.sub(r"\s+#.*$", "", s)
            if s.split(" ")[0] in RUNNERS or re.match(r"^([A-Z_]+=\S+\s+)+\w", s):
                out.append((section, s))
            continue
        for span in re.findall(r"`([^`]+)`", line):
            if span.split(" ")[0] in RUNNERS and len(span.split()) >= 3:
                out.append((section, span))
    return out


def skip_reason(line: str) -> str | None:
    for prefix, why in SKIP.items():
        if line.startswith(prefix):
            return why
    return None


def substitute(line: str, ports: dict, data: str) -> str:
    line = re.sub(r"\s*\[[^\]]*\]", "", line)
    line = line.replace("http://HEAD:", "http://127.0.0.1:")
    line = re.sub(r"\bNAME\b", "tiny", line)
    for port, value in ports.items():
        line = re.sub(rf"\b{port}\b", str(value), line)
    return re.sub(r"(?<![\w.])/data\b", data, line)


def with_tiny(argv: list[str]) -> list[str]:
    if argv[:2] != ["ddss", "submit"] or argv[2] not in TINY:
        return argv
    argv = argv + ([] if "--" in argv else ["--"])
    for item in TINY[argv[2]]:
        argv += ["--set", item]
    return argv + CPU_INSTEAD.get(argv[2], [])


# The guide's SPMD jobs ask for GPUs; this machine has none: the same jobs on CPU workers
# (later flags and --set values win).
CPU_INSTEAD = {"train_teacher": ["--accelerator", "cpu"], "ddss_search": ["--set", "accelerator=cpu"],
               "distill_round": ["--set", "accelerator=cpu"]}


def test_guide_commands_are_found():
    found = guide_commands(GUIDE.read_text())
    lines = [c for _, c in found]
    assert any(c.startswith("ray start --head") or "ray start --head" in c for c in lines)
    for job in ("tiny", "train_teacher", "evaluate", "ddss_search", "distill_round"):
        assert any(c.startswith(f"ddss submit {job}") for c in lines), job
    assert any(c.startswith("ddss jobs stop") for c in lines) and any(c.startswith("ddss jobs logs") for c in lines)
    assert guide_commands("```\nddss a b \\\n  c   # x\nmake\n```\n`ddss x y` `ray z`\n") == [
        ("", "ddss a b c"), ("", "ddss x y")]
    assert substitute("ddss submit NAME --address http://HEAD:8265 [-- --set K=V ...] --set run_dir=/data/runs/x",
                      {"8265": 1}, "/t") == "ddss submit tiny --address http://127.0.0.1:1 --set run_dir=/t/runs/x"


def _start_args(ports):
    gcs, dash, agent, metrics, client, rt_env, agent_grpc = ports
    return {"gcs": gcs, "dash": dash, "extra": [
        "--dashboard-agent-listen-port", str(agent), "--metrics-export-port", str(metrics),
        "--ray-client-server-port", str(client), "--runtime-env-agent-port", str(rt_env),
        "--dashboard-agent-grpc-port", str(agent_grpc), "--disable-usage-stats"]}


def _base_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(JAX_PLATFORMS="cpu", PATH=f"{VENV_BIN}:{os.environ['PATH']}", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="module")
def cluster():
    """A token-auth head plus a second node, separate processes on 127.0.0.1, one CPU each."""
    temp_dir = tempfile.mkdtemp(prefix="rg-", dir="/tmp")
    token = secrets.token_hex(16)
    env = dict(_base_env(), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    head = _start_args(_free_ports(7))
    node_ports = _free_ports(7)
    try:
        subprocess.run(["ray", "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(head["gcs"]),
                        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(head["dash"]), "--num-cpus", "1",
                        "--temp-dir", temp_dir, *head["extra"]], env=env, check=True, capture_output=True, timeout=120)
        nm, om, metrics, agent, agent_grpc, rt_env, _ = node_ports
        subprocess.run(["ray", "start", "--address", f"127.0.0.1:{head['gcs']}", "--node-ip-address", "127.0.0.1",
                        "--num-cpus", "1", "--node-manager-port", str(nm), "--object-manager-port", str(om),
                        "--metrics-export-port", str(metrics), "--dashboard-agent-listen-port", str(agent),
                        "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(rt_env),
                        "--temp-dir", temp_dir, "--disable-usage-stats"],
                       env=env, check=True, capture_output=True, timeout=120)
        yield {"env": dict(env, RAY_ADDRESS=f"http://127.0.0.1:{head['dash']}"), "dash": head["dash"],
               "token": token, "temp_dir": temp_dir}
    finally:
        _stop(_head_processes(temp_dir))
        assert not _head_processes(temp_dir), "cluster processes survived"


def _run(argv, env, timeout=240):
    t0 = time.time()
    p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{shlex.join(argv)}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    print(f"{time.time() - t0:6.1f} s  {shlex.join(argv[:4])}", file=sys.stderr)
    return p


@pytest.mark.slow
def test_every_guide_command_runs_as_written(cluster, tmp_path):
    from test_readme import _cache_digit_classifier

    data = str(tmp_path / "data")
    _cache_digit_classifier(os.path.join(data, "cache"))  # /data/cache: features without training (~40 s)
    local_temp = tempfile.mkdtemp(prefix="rl-", dir="/tmp")
    local = _start_args(_free_ports(7))
    env = dict(cluster["env"])
    ran, skipped, last_job, running = [], [], None, ""
    try:
        for section, raw in guide_commands(GUIDE.read_text()):
            if why := skip_reason(raw):
                skipped.append((raw, why))
                continue
            ports = {"6379": local["gcs"], "8265": local["dash"]} if section == "0" else {"8265": cluster["dash"]}
            line = substitute(raw, ports, data)
            line = line.replace("$(kubectl get secret ddss-gpu -o jsonpath='{.data.auth_token}' | base64 -d)",
                                cluster["token"])
            assert "$(" not in line and "|" not in line.replace("status|logs|stop", ""), line
            words = shlex.split(line)
            sets = {}
            while re.match(r"^[A-Z_]+=", words[0]):
                k, v = words.pop(0).split("=", 1)
                sets[k] = v
            run_env = dict(_base_env(), **sets) if section == "0" else dict(env, **sets)
            if words[0] == "export":
                k, v = words[1].split("=", 1)
                env[k] = v
                ran.append(raw)
                continue
            if words[:3] == ["ray", "start", "--head"]:
                _run(words + ["--num-cpus", "1", "--temp-dir", local_temp, *local["extra"]], run_env, 120)
            elif words[:2] == ["ddss", "jobs"]:
                actions = words[2].split("|")
                for action in actions:
                    if action == "stop":  # a fresh job to stop, still running
                        p = _run(["ddss", "submit", "tiny", "--no-follow", "--", "--set", "sleep_s=120"], env)
                        running = p.stdout.strip()
                    job = running if action == "stop" else last_job
                    argv = [a.replace("status|logs|stop", action).replace("JOB_ID", job) for a in words]
                    p = _run(argv, run_env)
                    if action == "stop":
                        assert "stop requested" in p.stdout, p.stdout
                    elif action == "status":
                        assert "SUCCEEDED" in p.stdout, p.stdout
            else:
                p = _run(with_tiny(words), run_env)
                if words[:2] == ["ddss", "submit"]:
                    last_job = p.stderr.split("submitted ")[1].split()[0]
                if "tiny" in words:
                    assert "tiny job OK" in p.stdout, p.stdout[-2000:]
            ran.append(raw)
    finally:
        _stop(_head_processes(local_temp))
    assert not _head_processes(local_temp)

    teacher = Path(data) / "runs" / "teacher-digits"
    evals = json.loads((teacher / "results.json").read_text())["evaluations"]
    assert {row["sampler"].split(":")[0] for row in evals.values()} >= {"ddim", "ggdm"}, evals
    sampler = Path(data) / "runs" / "ddss-k5" / "sampler"
    assert (sampler / "params.npz").exists() and (sampler / "meta.json").exists()
    assert list((teacher / "distill").glob("round-*")), sorted(os.listdir(teacher))
    assert any(r.startswith("ddss jobs stop") for r in ran) and any(r.startswith("ddss jobs logs") for r in ran)
    assert {w for w, _ in [(s.split()[0], 0) for s, _ in skipped]} <= {"kubectl", "docker", "helm", "gcloud", "ray", "python"}
    print("skipped:\n" + "\n".join(f"  {c}  -- {why}" for c, why in skipped), file=sys.stderr)
