"""bench/gpu.py: --smoke runs every measurement at tiny sizes on CPU and writes a JSON of finite
numbers; without --smoke it refuses to run on a machine whose JAX has no GPU (one line, exit 2,
nothing written), never measuring the CPU silently."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "gpu.py"


def _run(*args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([sys.executable, str(BENCH), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def test_smoke_writes_every_measurement_as_finite_numbers(tmp_path):
    out = tmp_path / "gpu.json"
    p = _run("--smoke", "--out", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    meta = r["meta"]
    assert meta["smoke"] is True and meta["platform"] == "cpu" and meta["device_count"] >= 1
    assert _finite(meta["seconds"]) and meta["jax"]
    assert {m["dtype"] for m in r["matmul"]} == {"bfloat16", "float32"}
    assert all(_finite(m["tflops"], m["s"], m["s_std"]) and m["tflops"] > 0 and m["s_std"] >= 0 for m in r["matmul"])
    assert {c["dtype"] for c in r["chain"]} == {"bfloat16", "float32"}
    for c in r["chain"]:
        assert _finite(c["samples_per_s"], c["s"], c["s_std"], c["tflops"], c["flops_per_chain"]) and c["samples_per_s"] > 0, c
    ks = sorted({d["K"] for d in r["ddss"]})
    assert len(ks) >= 2
    for d in r["ddss"]:
        assert isinstance(d["temp_bytes"], int) and d["temp_bytes"] > 0 and d["finite"] is True, d
        assert _finite(d["step_s"], d["step_s_std"], d["compile_s"]) and d["remat"] in ("adjoint", "adjoint-unrolled", "step", "none")
    assert r["ddss_memory_ratio"] and all(_finite(v) and v > 0 for v in r["ddss_memory_ratio"].values())
    for t in r["teacher"]:
        assert _finite(t["steps_per_s"], t["examples_per_s"], t["final_loss"], t["first_step_s"]) and t["finite"] is True, t
    for header in ("| matmul |", "| chain (DDIM) |", "| DDSS step (", "| teacher step |"):
        assert header in p.stdout


def test_without_a_gpu_it_refuses_in_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "gpu.json"
    p = _run("--out", str(out), timeout=120)
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr.strip().splitlines() == ["no GPU: jax.devices() is [CpuDevice(id=0)]"]
    assert not out.exists()
