"""Sampling throughput: the jitted `lax.scan` sampler against a per-step Python loop that calls
a jitted step (the way step-by-step scheduler libraries run), at K = 10.

    .venv/bin/python bench/samplers.py [--repeats 5]

Cases: an MLP denoiser on 2-D data (dispatch overhead dominates) and the digits U-Net (random
weights: throughput does not depend on them). Writes bench/out/samplers.json, prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from pipeline import samplers, schedules
from pipeline.models.mlp import MLPDenoiser
from pipeline.models.unet import UNet
from pipeline.samplers.chain import coeffs
from pipeline.samplers.steps import ddim_step

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def make_case(name: str, batch: int):
    key = jax.random.key(0)
    if name == "mlp-2d":
        model, shape = MLPDenoiser(), (batch, 2)
    else:
        model, shape = UNet(), (batch, 8, 8, 1)
    x = jnp.zeros(shape)
    params = model.init(key, x, jnp.zeros(shape[:1]))

    def eps_fn(x, t):
        return model.apply(params, x, t)

    return eps_fn, jax.random.normal(jax.random.key(1), shape)


def time_it(fn, repeats: int) -> float:
    fn()  # compile and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    sched = schedules.get("cosine")
    grid = schedules.time_grid(args.steps, "quadratic")
    rows = []
    for case, batch in (("mlp-2d", 16), ("digits-unet", 256)):
        eps_fn, x_T = make_case(case, batch)

        def scan_run():
            return samplers.sample("ddim", eps_fn, sched, x_T, args.steps, grid=grid).block_until_ready()

        @jax.jit
        def step(x, t, s):
            return ddim_step(x, eps_fn(x, jnp.full(x.shape[:1], t)), *coeffs(sched, t, s))

        def loop_run():
            x = x_T
            for i in range(args.steps):
                x = step(x, grid[i], grid[i + 1])
            return x.block_until_ready()

        np.testing.assert_allclose(np.asarray(scan_run()), np.asarray(loop_run()), rtol=1e-4, atol=1e-4)
        t_scan, t_loop = time_it(scan_run, args.repeats), time_it(loop_run, args.repeats)
        rows.append({"case": case, "batch": batch, "steps": args.steps, "scan_samples_per_s": batch / t_scan,
                     "loop_samples_per_s": batch / t_loop, "speedup": t_loop / t_scan})
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "samplers.json"), "w") as f:
        json.dump({"rows": rows, "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
                   "jax": jax.__version__}, f, indent=2)
    print("| case | batch | K | scan samples/s | loop samples/s | scan speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['batch']} | {r['steps']} | {r['scan_samples_per_s']:.0f} | "
              f"{r['loop_samples_per_s']:.0f} | {r['speedup']:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
