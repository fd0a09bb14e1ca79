"""`ddss distill`: guided distillation of a teacher, one round or the schedule (SPMD rounds)."""
from __future__ import annotations

import json
import sys

NAME = "distill"
HELP = ("Distil a classifier-free guided teacher (Meng et al. 2023): round 0 = stage 1, a w-conditioned "
        "student at --set distill.start_steps steps (default 256); round r halves the steps (progressive "
        "distillation). --round R runs one round; --until STEPS runs the rounds down to STEPS, resuming "
        "at the first unfinished one. Each round resumes from its latest checkpoint.")
EXAMPLE = "ddss distill --teacher runs/teacher-x --until 4 --set distill.rounds.train_steps=500"


def add_arguments(p):
    p.add_argument("--teacher", metavar="RUN_DIR", help="the guided teacher's run directory (ddss train-teacher)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--round", type=int, metavar="R", help="run round R only (round R-1 must have finished)")
    which.add_argument("--until", type=int, metavar="STEPS", help="run the rounds down to a STEPS-step student")
    p.add_argument("--dir", "--run-dir", dest="dir", metavar="D",
                   help="where the rounds go (default RUN_DIR/distill); a round found there resumes from its latest checkpoint")
    p.add_argument("--config", default="configs/distill.yaml",
                   help="a YAML distillation job config (default configs/distill.yaml, shipped with the package, "
                        "found from any directory)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. distill.seed=1 (repeatable)")
    p.add_argument("--workers", type=int, metavar="W", help="Ray Train workers (0: in this process, no Ray)")
    from pipeline import accelerator

    accelerator.add_arguments(p)
    p.add_argument("--address", help="a Ray cluster to join (default RAY_ADDRESS, else a local Ray on 127.0.0.1)")


def run(args) -> int:
    from pipeline.config import parse_sets
    from pipeline.distill.config import load_job
    from pipeline.distill.run import run_job

    overrides = parse_sets(args.set)
    for key, value in (("distill.teacher", args.teacher), ("distill.dir", args.dir), ("round", args.round),
                       ("until", args.until), ("workers", args.workers), ("accelerator", args.accelerator),
                       ("devices_per_worker", args.devices_per_worker), ("tpu_topology", args.tpu_topology),
                       ("tpu_type", args.tpu_type)):
        if value is not None:
            overrides[key] = value
    if args.until is not None:
        overrides["round"] = -1
    job = load_job(args.config, overrides)
    records = run_job(job, address=args.address, log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(records, indent=2, sort_keys=True))
    return 0
