"""Evaluation throughput: samples/s of `ddss evaluate` with 1 and 2 Ray actors, each held to
one CPU core, on the digits teacher at K=10 (goal: 2 workers >= 1.7x one).

    .venv/bin/python bench/eval.py [--teacher RUN_DIR] [--num-samples 6000] [--steps 10]

Without --teacher it uses (training once) the default digits teacher under bench/out/teacher
(bench/common.py). Reports the end-to-end rate
(actor start-up, teacher load and compilation included), the steady rate (after every
actor has finished its first block), samples per CPU-second of the actors and the cores'
worth of CPU they got (below W means other processes took the rest). Writes
bench/out/eval.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

ROOT, OUT = common.ROOT, common.OUT


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", help="a trained digits teacher run (default: train one in bench/out/teacher)")
    p.add_argument("--num-samples", type=int, default=6000)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--features", choices=["digit-classifier", "samples"], default="digit-classifier",
                   help="samples: time generation alone (KID/FD on raw pixels vs the test split)")
    args = p.parse_args(argv)

    from pipeline.distributed.ray_init import ensure_ray

    ensure_ray(num_cpus=len(os.sched_getaffinity(0)))  # before jax is imported: Ray forks
    teacher = os.path.abspath(args.teacher) if args.teacher else common.default_teacher()

    import dataclasses

    from pipeline.app.artefacts import eval_spec
    from pipeline.distributed.evaluation import evaluate
    from pipeline.evaluation import teacher_problem

    problem = teacher_problem(teacher, os.path.join(ROOT, ".cache"))
    if args.features == "samples":
        problem = dataclasses.replace(problem, features=None, prepare=None, label="samples")
    spec = eval_spec(problem, args.sampler, args.steps, args.num_samples, batch_size=args.batch_size)
    rows = []
    for w in args.workers:
        t0 = time.perf_counter()
        out = evaluate(spec, workers=w, resources={"CPU": 1}, pin_cores=True, progress=True)
        rows.append({"workers": w, "samples_per_s": out["samples_per_s"], "steady_samples_per_s": out["steady_samples_per_s"],
                     "wall_s": out["wall_s"], "total_s": time.perf_counter() - t0, "kid": out["kid"], "fd": out["fd"],
                     "samples_per_cpu_s": out["samples_per_cpu_s"],
                     # the cores' worth of CPU the actors got while generating (contention shows here)
                     "cores_used": (out["steady_samples_per_s"] or out["samples_per_s"]) / out["samples_per_cpu_s"]})
    base = rows[0]
    for r in rows:
        r["speedup"] = r["samples_per_s"] / base["samples_per_s"]
        s, b = r["steady_samples_per_s"], base["steady_samples_per_s"]
        r["steady_speedup"] = s / b if s and b else None
    result = {
        "bench": "eval", "date": time.strftime("%Y-%m-%d"), "cores": len(os.sched_getaffinity(0)),
        "load_avg_1min_at_end": os.getloadavg()[0],
        "command": "python bench/eval.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "teacher": teacher, "features": problem.label, "sampler": args.sampler, "steps": args.steps, "num_samples": args.num_samples,
        "batch_size": args.batch_size, "rows": rows, "goal": "2 workers >= 1.7x one (steady rate)",
    }
    os.makedirs(OUT, exist_ok=True)
    from pipeline.io import atomic_write_text

    atomic_write_text(os.path.join(OUT, "eval.json"), json.dumps(result, indent=2) + "\n")
    print(f"\nevaluation throughput, {args.sampler} K={args.steps}, N={args.num_samples}, one core per actor")
    print(f"{'workers':>7} {'samples/s':>10} {'speedup':>8} {'steady/s':>9} {'steady x':>9} {'per CPU-s':>9} "
          f"{'cores':>6} {'wall s':>7} {'KID':>8} {'FD':>8}")
    for r in rows:
        st = "-" if r["steady_samples_per_s"] is None else f"{r['steady_samples_per_s']:.1f}"
        sx = "-" if r["steady_speedup"] is None else f"{r['steady_speedup']:.2f}"
        print(f"{r['workers']:>7} {r['samples_per_s']:>10.1f} {r['speedup']:>8.2f} {st:>9} {sx:>9} "
              f"{r['samples_per_cpu_s']:>9.1f} {r['cores_used']:>6.2f} {r['wall_s']:>7.1f} "
              f"{r['kid']:>8.4f} {r['fd']:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
