"""`ddss demo`: the whole pipeline on the digits testbed, on a local Ray, with a report
(the stages are pipeline.app.demo's)."""
from __future__ import annotations

NAME = "demo"
HELP = ("Run the pipeline on the digits testbed: train (or reuse) the teacher and feature net, "
        "evaluate the baselines and the accelerated samplers, run a DDSS search, distil the guided "
        "teacher down to 4 steps, evaluate everything on one pool of evaluation actors, and write "
        "report.md with a table, a frontier plot and sample grids.")
EXAMPLE = "ddss demo --quick --run-dir runs/demo-quick"
# `ddss demo --quick` measured on the 2-core CPU machine with a fresh cache, under load, with five
# tuned samplers (2026-12-02; it now tunes three); README.md quotes the same figure (tests/test_cli.py).
QUICK_DEMO_S = 321


def add_arguments(p):
    p.add_argument("--quick", action="store_true", help=f"tiny budgets, same stages (at most {QUICK_DEMO_S} s on a 2-core machine)")
    p.add_argument("--run-dir", metavar="D", help="the demo's run directory, new or empty (default runs/demo-<time>-<id>)")
    p.add_argument("--cache-dir", default=".cache", help="teacher and feature net are reused from here")
    p.add_argument("--workers", type=int, default=2, metavar="W", help="evaluation actors")
    p.add_argument("--address", help="a Ray cluster to join (default: a local Ray on 127.0.0.1)")


def run(args) -> int:
    from pipeline.app.demo import run_demo

    run_demo(args.run_dir, quick=args.quick, cache_dir=args.cache_dir, workers=args.workers, address=args.address)
    return 0
