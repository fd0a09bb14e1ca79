"""The training-free samplers on the digits teacher: FD and KID (digit-classifier features, test
split) against K, same teacher and same seeds for every sampler.

    .venv/bin/python bench/digits_samplers.py [--teacher RUN_DIR] [--ks 5 10 15 20 25] [--num-samples 2000]

Goal (issue 4): accel-ddim's FD below ddim's (best stride) at every K <= 10. Without --teacher it
uses (training once) the default digits teacher under bench/out/teacher. Writes
bench/out/digits_samplers.json and digits_samplers.png and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SAMPLERS = [("ddpm", "linear"), ("ddpm", "quadratic"), ("ddim", "linear"), ("ddim", "quadratic"),
            ("accel-ddim", "linear"), ("accel-ddim", "quadratic"), ("accel-ddpm", "quadratic"), ("accel-ddpm", "logsnr"),
            ("dpm-solver++2m", "logsnr")]


def table(rows, ks) -> str:
    by = {(r["name"], r["K"]): r for r in rows}
    lines = ["| sampler (stride) | " + " | ".join(f"K={k} FD / KID" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for name in dict.fromkeys(r["name"] for r in rows):
        lines.append(f"| {name} | " + " | ".join(
            f"{by[name, k]['fd']:.3f} / {by[name, k]['kid']:.4f}" if (name, k) in by else "-" for k in ks) + " |")
    return "\n".join(lines)


def plot(rows, path: str, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.io import atomic_savefig

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name in dict.fromkeys(r["name"] for r in rows):
        pts = sorted((r["K"], r["fd"]) for r in rows if r["name"] == name)
        ax.plot(*zip(*pts), "-o" if name.startswith("accel") else "--.", label=name)
    ax.set(xlabel="NFE (= K)", ylabel="FD (digit-classifier features)", yscale="log", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", help="a trained digits teacher run (default: bench/out/teacher, trained once)")
    p.add_argument("--ks", type=int, nargs="+", default=[5, 10, 15, 20, 25])
    p.add_argument("--num-samples", type=int, default=2000)
    args = p.parse_args(argv)

    t0, load0 = time.time(), os.getloadavg()[0]
    teacher = os.path.abspath(args.teacher) if args.teacher else common.default_teacher()

    from pipeline.io import atomic_write_text
    from pipeline.evaluation import teacher_problem

    problem = teacher_problem(teacher, common.CACHE_DIR)
    problem.prepare()
    rows = [{"name": f"{s} ({stride})", "sampler": s, "stride": stride, "K": K,
             **common.score(problem, s, K, stride, args.num_samples)} for s, stride in SAMPLERS for K in args.ks]

    def best(prefix, K):
        return min(r["fd"] for r in rows if r["K"] == K and r["name"].startswith(prefix + " ("))

    goal = {f"K={K}": {"accel-ddim": best("accel-ddim", K), "best ddim": best("ddim", K),
                       "met": best("accel-ddim", K) < best("ddim", K)} for K in args.ks if K <= 10}
    out = {"meta": {"command": "python bench/digits_samplers.py " + " ".join(sys.argv[1:] if argv is None else argv),
                    "teacher": teacher, "num_samples": args.num_samples, "seconds": time.time() - t0,
                    **common.machine(load0)},
           "rows": rows, "goal_accel_ddim_below_ddim": goal}
    os.makedirs(common.OUT, exist_ok=True)
    atomic_write_text(os.path.join(common.OUT, "digits_samplers.json"), json.dumps(out, indent=1) + "\n")
    plot(rows, os.path.join(common.OUT, "digits_samplers.png"), f"digits teacher, {args.num_samples} samples per point")
    print(table(rows, args.ks))
    print(json.dumps(goal, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
