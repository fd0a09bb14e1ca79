"""Accelerator figures for a lent GPU: the DDIM sampling chain's throughput in bf16 (and f32)
against a measured matmul peak, DDSS backprop memory and time of one search step for K = 5..25
under each remat mode, and teacher training steps/s.

    .venv/bin/python bench/gpu.py                      # needs a GPU: refuses to run on CPU
    .venv/bin/python bench/gpu.py --ks 5 10 --remat adjoint step --models digits
    .venv/bin/python bench/gpu.py --smoke --out /tmp/gpu.json   # tiny sizes on any device (tests)

Models (random weights: speed and memory do not depend on them): `digits`, the U-Net of
configs/digits_teacher.yaml on 8x8x1, and `cifar32`, a CIFAR-sized U-Net (ch 128, ch_mult
1-2-2-2, 2 blocks, attention at 16x16) on 32x32x3. The chain in bf16 runs the network in bf16
(weights and input cast) and keeps the chain's state in f32. Its FLOP/s come from XLA's cost
analysis of one network call times K, set against the best bf16 matmul of the same device.
DDSS: compiled temp memory (XLA's memory_analysis) and the time of one value-and-gradient step
of the KID loss through the GGDM chain (pipeline.ddss.chain.kid_loss; pixel features, so no
digit classifier is trained). Teacher: steps/s of pipeline.teacher.train's train step (Adam,
EMA) at the given batch. Writes bench/out/gpu.json (or --out) and prints a table.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out")
UNET = "pipeline.models.unet:UNet"
MODELS = {  # name -> (model import path, kwargs, data shape)
    "digits": (UNET, {}, (8, 8, 1)),  # configs/digits_teacher.yaml's
    "cifar32": (UNET, {"ch": 128, "ch_mult": [1, 2, 2, 2], "num_res_blocks": 2, "attn_resolutions": [16]}, (32, 32, 3)),
    "tiny": ("pipeline.models.mlp:MLPDenoiser", {"hidden": 16, "depth": 1}, (4,)),  # --smoke: compiles in moments
}
REMAT = ("adjoint", "adjoint-unrolled", "step", "none")


def timed(fn, repeats: int) -> tuple[float, float]:
    """(mean, std) seconds of fn() over `repeats` calls (blocked until ready), after one warm-up
    call; the std is 0 for one call."""
    import jax

    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.fmean(times), statistics.stdev(times) if len(times) > 1 else 0.0


def flops_of(compiled) -> float | None:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    f = (cost or {}).get("flops")
    return float(f) if f and f > 0 else None


def peak_bytes(device) -> int | None:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def matmul_peak(n: int, dtype: str, repeats: int) -> dict:
    """FLOP/s of an n x n x n matmul in dtype (f32 at the backend's default precision)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.standard_normal((n, n), np.float32), dtype) for _ in range(2))
    f = jax.jit(jnp.matmul)
    s, s_std = timed(lambda: f(a, b), repeats)
    return {"dtype": dtype, "n": n, "s": s, "s_std": s_std, "tflops": 2 * n**3 / s / 1e12}


@functools.lru_cache(maxsize=None)
def teacher_parts(model_name: str):
    """(model, schedule, teacher config) of a MODELS entry, from configs/digits_teacher.yaml."""
    from pipeline import schedules
    from pipeline.models.build import build_model
    from pipeline.teacher import config as tconfig

    path, kwargs, _ = MODELS[model_name]
    cfg = tconfig.load_config(os.path.join(ROOT, "configs", "digits_teacher.yaml"), {"model.import_path": path, "model.kwargs": kwargs})
    return build_model(cfg.model, 10), schedules.get(cfg.schedule), cfg


@functools.lru_cache(maxsize=None)
def random_params(model_name: str):
    """The initial parameters of a MODELS entry, made once by one jitted call (an eager init
    compiles op by op)."""
    import jax

    from pipeline.teacher.model import init_params

    model, _, _ = teacher_parts(model_name)
    return jax.jit(lambda key: init_params(model, MODELS[model_name][2], key))(jax.random.key(0))


def chain_throughput(model_name: str, dtype: str, batch: int, K: int, repeats: int) -> dict:
    """Samples/s of a K-step DDIM chain, the network in dtype, and its FLOP/s."""
    import jax
    import jax.numpy as jnp

    import numpy as np

    from pipeline import samplers, schedules

    model, sched, _ = teacher_parts(model_name)
    shape = MODELS[model_name][2]
    dt = jnp.dtype(dtype)
    params = jax.jit(lambda p: jax.tree.map(lambda a: a.astype(dt), p))(random_params(model_name))
    x_T = jnp.asarray(np.random.default_rng(1).standard_normal((batch,) + shape, np.float32))
    y = jnp.asarray(np.arange(batch) % 10)
    grid = jnp.asarray(schedules.time_grid(K, "quadratic"), jnp.float32)

    def eps(p):
        return lambda x, t: model.apply({"params": p}, x.astype(dt), t.astype(dt), y).astype(jnp.float32)

    chain = jax.jit(lambda p, x: samplers.run("ddim", eps(p), sched, x, grid)[0])
    one = jax.jit(lambda p, x: eps(p)(x, jnp.full((batch,), 0.5, jnp.float32))).lower(params, x_T).compile()
    s, s_std = timed(lambda: chain(params, x_T), repeats)
    per_call = flops_of(one)
    return {"model": model_name, "dtype": dtype, "batch": batch, "K": K, "s": s, "s_std": s_std, "samples_per_s": batch / s,
            "flops_per_chain": None if per_call is None else per_call * K,
            "tflops": None if per_call is None else per_call * K / s / 1e12}


def ddss_step(model_name: str, K: int, remat: str, batch: int, repeats: int) -> dict:
    """Compiled temp memory and time of one DDSS value-and-gradient step."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from pipeline import ddss
    from pipeline.ddss.chain import Chain, kid_loss
    from pipeline.distributed.context import make_mesh
    from pipeline.evaluation import pixel_features
    from pipeline.teacher.model import Teacher

    model, sched, cfg = teacher_parts(model_name)
    shape = MODELS[model_name][2]
    teacher = Teacher(model, random_params(model_name), sched, cfg, shape, 10, 0)
    reference = np.random.default_rng(0).normal(size=(max(2 * batch, 64), math.prod(shape))).astype(np.float32)
    loss = kid_loss(Chain(teacher, pixel_features), reference, make_mesh(), remat)
    params = ddss.init_params(K, "ggdm+pred+time", sched)
    t = time.perf_counter()
    step = jax.jit(jax.value_and_grad(lambda p: loss(p, jax.random.key(0), jnp.arange(batch)))).lower(params).compile()
    compile_s = time.perf_counter() - t
    s, s_std = timed(lambda: step(params), repeats)
    value, grads = jax.device_get(step(params))
    finite = bool(np.isfinite(value) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads)))
    return {"model": model_name, "K": K, "remat": remat, "batch": batch, "temp_bytes": int(step.memory_analysis().temp_size_in_bytes),
            "compile_s": compile_s, "step_s": s, "step_s_std": s_std, "finite": finite, "process_peak_bytes_in_use": peak_bytes(jax.devices()[0])}


def teacher_steps(model_name: str, batch: int, steps: int) -> dict:
    """Steps/s of the teacher's train step (loss, gradient, Adam, EMA) on random data."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    from pipeline.distributed.context import make_mesh
    from pipeline.teacher.train import init_state, make_optimizer, make_train_step

    model, sched, cfg = teacher_parts(model_name)
    shape = MODELS[model_name][2]
    mesh = make_mesh()
    optimizer = make_optimizer(cfg.train)
    state = jax.device_put(init_state(model, optimizer, shape, 0), NamedSharding(mesh, PartitionSpec()))
    step_fn = make_train_step(model, sched, optimizer, cfg.train, 10, mesh)
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (batch,) + shape).astype(np.float32)
    y = rng.integers(0, 10, batch)
    t = time.perf_counter()
    state, loss, ok = step_fn(state, x0, y, slice(0, batch))
    jax.block_until_ready(loss)
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        state, loss, ok = step_fn(state, x0, y, slice(0, batch))
    jax.block_until_ready(loss)
    s = (time.perf_counter() - t) / steps
    return {"model": model_name, "batch": batch, "steps": steps, "first_step_s": first_s, "steps_per_s": 1 / s,
            "examples_per_s": batch / s, "final_loss": float(loss), "finite": bool(ok)}


def table(out: dict) -> str:
    peak = {m["dtype"]: m["tflops"] for m in out["matmul"]}
    lines = [f"device: {out['meta']['device_kind']} x {out['meta']['device_count']} ({out['meta']['platform']})", "",
             "| matmul | n | s (mean ± std) | TFLOP/s |", "|---|---:|---:|---:|"]
    lines += [f"| {m['dtype']} | {m['n']} | {m['s']:.2e} ± {m['s_std']:.1e} | {m['tflops']:.1f} |" for m in out["matmul"]]
    lines += ["", "| chain (DDIM) | dtype | batch | K | s (mean ± std) | samples/s | TFLOP/s | of bf16 matmul peak |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in out["chain"]:
        tf = "-" if c["tflops"] is None else f"{c['tflops']:.2f}"
        frac = "-" if c["tflops"] is None else f"{100 * c['tflops'] / peak['bfloat16']:.1f}%"
        lines.append(f"| {c['model']} | {c['dtype']} | {c['batch']} | {c['K']} | {c['s']:.3g} ± {c['s_std']:.1g} | {c['samples_per_s']:.0f} | {tf} | {frac} |")
    ks = sorted({d["K"] for d in out["ddss"]})
    lines += ["", "| DDSS step (" + out["ddss"][0]["model"] + f", batch {out['ddss'][0]['batch']}) | "
              + " | ".join(f"K={k}: temp MiB / step s (± std)" for k in ks) + " |", "|---|" + "---:|" * len(ks)]
    for r in dict.fromkeys(d["remat"] for d in out["ddss"]):
        by = {d["K"]: d for d in out["ddss"] if d["remat"] == r}
        lines.append(f"| {r} | " + " | ".join(f"{by[k]['temp_bytes'] / 2**20:.1f} / {by[k]['step_s']:.3f} ± {by[k]['step_s_std']:.3f}" for k in ks) + " |")
    lines += ["", "| teacher step | batch | steps/s | examples/s |", "|---|---:|---:|---:|"]
    lines += [f"| {t['model']} | {t['batch']} | {t['steps_per_s']:.1f} | {t['examples_per_s']:.0f} |" for t in out["teacher"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, on whatever device JAX has (the tests run this on CPU)")
    p.add_argument("--models", nargs="+", default=["digits", "cifar32"], choices=sorted(MODELS), help="chain and teacher models")
    p.add_argument("--ks", type=int, nargs="+", default=[5, 10, 15, 20, 25], help="DDSS K values")
    p.add_argument("--remat", nargs="+", default=list(REMAT), choices=REMAT, help="DDSS remat modes")
    p.add_argument("--ddss-model", default="digits", choices=sorted(MODELS))
    p.add_argument("--ddss-batch", type=int, default=64)
    p.add_argument("--chain-batch", type=int, default=1024)
    p.add_argument("--chain-k", type=int, default=10)
    p.add_argument("--teacher-batch", type=int, default=128)
    p.add_argument("--teacher-steps", type=int, default=50)
    p.add_argument("--matmul-n", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=os.path.join(OUT, "gpu.json"))
    args = p.parse_args(argv)

    import jax

    devices = jax.devices()
    if not args.smoke and not any(d.platform == "gpu" for d in devices):
        print(f"no GPU: jax.devices() is {devices}", file=sys.stderr)
        return 2
    if args.smoke:
        args.models, args.ks, args.remat, args.ddss_model = ["tiny"], [2, 3], ["adjoint"], "tiny"
        args.ddss_batch, args.chain_batch, args.chain_k, args.teacher_batch, args.teacher_steps = 4, 4, 2, 8, 2
        args.matmul_n, args.repeats = 64, 1
    t0 = time.time()
    out = {"meta": {"command": "python bench/gpu.py " + " ".join(sys.argv[1:] if argv is None else argv),
                    "smoke": args.smoke, "jax": jax.__version__, "platform": devices[0].platform,
                    "device_kind": devices[0].device_kind, "device_count": len(devices),
                    "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores"}}
    out["matmul"] = [matmul_peak(args.matmul_n, dt, args.repeats) for dt in ("bfloat16", "float32")]
    out["chain"] = [chain_throughput(m, dt, args.chain_batch, args.chain_k, args.repeats)
                    for m in args.models for dt in ("bfloat16", "float32")]
    out["ddss"] = [ddss_step(args.ddss_model, K, r, args.ddss_batch, args.repeats) for K in args.ks for r in args.remat]
    mem = {(d["K"], d["remat"]): d["temp_bytes"] for d in out["ddss"]}
    lo, hi = min(args.ks), max(args.ks)
    out["ddss_memory_ratio"] = {r: mem[hi, r] / max(mem[lo, r], 1) for r in args.remat}
    out["teacher"] = [teacher_steps(m, args.teacher_batch, args.teacher_steps) for m in args.models]
    out["meta"]["seconds"] = time.time() - t0

    from pipeline.io import atomic_write_json

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write_json(args.out, out)
    print(table(out))
    print(f"K={hi}/K={lo} DDSS temp memory: " + ", ".join(f"{r} {v:.2f}" for r, v in out["ddss_memory_ratio"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
