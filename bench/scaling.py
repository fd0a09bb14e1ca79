"""Weak scaling of teacher training: examples/s of the digits teacher's training loop on 1 and on
2 Ray Train workers, each worker pinned to its own CPU core, the same per-worker batch (goal on
a 2-core machine: 2 workers >= 1.7x one).

    .venv/bin/python bench/scaling.py [--steps 60] [--per-worker-batch 64] [--workers 1 2]

The loop is `ddss train-teacher`'s (pipeline.train.teacher_loop: the global batch sharded over
the processes, gradients all-reduced over gloo), with the default digits config
(configs/digits_teacher.yaml) and train.batch_size = per-worker batch x workers. The rate
excludes the first step (compilation). Writes bench/out/scaling.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60, help="training steps per run")
    p.add_argument("--per-worker-batch", type=int, default=64)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--no-pin", action="store_true", help="let the OS place the workers (default: worker i on core i)")
    args = p.parse_args(argv)

    from pipeline.distributed.ray_init import ensure_ray

    cores = len(os.sched_getaffinity(0))
    if max(args.workers) > cores:
        p.error(f"--workers {max(args.workers)} needs as many cores; this machine has {cores}")
    ensure_ray(num_cpus=cores)  # before jax is imported: Ray forks
    load0 = os.getloadavg()[0]

    from pipeline import config
    from pipeline.teacher import config as tconfig
    from pipeline.teacher import train
    from pipeline.io import atomic_write_text
    from pipeline.distributed.spmd import run_spmd

    rows = []
    for w in args.workers:
        cfg = tconfig.load_config(os.path.join(common.ROOT, "configs", "digits_teacher.yaml"), {
            "train.steps": args.steps, "train.batch_size": args.per_worker_batch * w,
            "train.log_every": args.steps, "train.checkpoint_every": 10 ** 6, "train.warmup_steps": 1})
        with tempfile.TemporaryDirectory(prefix="scaling-") as run_dir:
            t0 = time.perf_counter()
            out = run_spmd(train.teacher_loop, {"config": config.to_dict(cfg)}, num_workers=w, run_dir=run_dir,
                           resources_per_worker={"CPU": 1}, pin_cores=not args.no_pin)
            job_s = time.perf_counter() - t0
        rows.append({"workers": w, "global_batch": cfg.train.batch_size, "examples_per_s": out["examples_per_s"],
                     "steps_per_s": out["examples_per_s"] / cfg.train.batch_size, "first_step_s": out["first_step_s"],
                     "train_time_s": out["train_time_s"], "job_s": job_s, "processes": out["processes"],
                     "final_loss": out["final_loss"]})
        print(f"  {w} worker(s): {out['examples_per_s']:.0f} examples/s", file=sys.stderr)
    for r in rows:
        r["speedup"] = r["examples_per_s"] / rows[0]["examples_per_s"]
    result = {"bench": "scaling", "date": time.strftime("%Y-%m-%d"), **common.machine(load0),
              "command": "python bench/scaling.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "steps": args.steps, "per_worker_batch": args.per_worker_batch, "pinned": not args.no_pin, "rows": rows,
              "goal": "2 workers >= 1.7x one worker's examples/s"}
    os.makedirs(common.OUT, exist_ok=True)
    atomic_write_text(os.path.join(common.OUT, "scaling-unpinned.json" if args.no_pin else "scaling.json"), json.dumps(result, indent=2) + "\n")
    print(f"\nweak scaling, digits teacher, {args.per_worker_batch} examples per worker per step, one core per worker")
    print(f"{'workers':>7} {'batch':>6} {'examples/s':>11} {'speedup':>8} {'steps/s':>8} {'compile s':>10} {'job s':>7}")
    for r in rows:
        print(f"{r['workers']:>7} {r['global_batch']:>6} {r['examples_per_s']:>11.0f} {r['speedup']:>7.2f}x "
              f"{r['steps_per_s']:>8.2f} {r['first_step_s']:>10.1f} {r['job_s']:>7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
