"""`ddss train-teacher`: train the base diffusion model (an SPMD job on Ray Train workers)."""
from __future__ import annotations

import json
import sys

from pipeline import accelerator

NAME = "train-teacher"
HELP = ("Train a class-conditional teacher (eps-prediction on the cosine schedule, classifier-free-guidance "
        "label dropout, EMA, Adam) as an SPMD job, checkpointing as it goes, then write a DDIM sample grid "
        "and FD against the test split into the run directory.")
EXAMPLE = "ddss train-teacher --config configs/digits_teacher.yaml --workers 2 --set train.steps=500"
DEFAULT_CONFIG = "configs/digits_teacher.yaml"


def add_arguments(p):
    p.add_argument("--config", help=f"a YAML teacher config (default {DEFAULT_CONFIG}: the digits teacher, shipped "
                                    "with the package, found from any directory; not with --resume)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.steps=500 (repeatable)")
    p.add_argument("--run-dir", metavar="D", help="the run directory (default runs/teacher-<time>-<id>); must be new or empty")
    p.add_argument("--resume", action="store_true", help="continue --run-dir from its latest checkpoint, with its config.yaml")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="Ray Train workers, one per host (default 0: in this process, without Ray)")
    p.add_argument("--address", help="a Ray cluster to join (default RAY_ADDRESS, else a local Ray on 127.0.0.1)")
    p.add_argument("--max-failures", type=int, default=2, metavar="K",
                   help="restarts of the worker group after a worker dies (default 2)")
    accelerator.add_arguments(p)


def run(args) -> int:
    from pipeline.teacher import config as tconfig
    from pipeline.teacher import train
    from pipeline.config import parse_sets
    from pipeline.errors import UserError

    overrides = parse_sets(args.set)
    if args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    if args.resume:
        if not args.run_dir:
            raise UserError("--resume needs --run-dir naming the run to continue")
        if args.config:
            raise UserError("--resume continues with the run's own config.yaml: drop --config (change keys with --set)")
        cfg = None
    else:
        cfg = tconfig.load_config(args.config or DEFAULT_CONFIG, overrides)
    run_dir, out = train.train_teacher(cfg, run_dir=args.run_dir, resume=args.resume, workers=args.workers,
                                       address=args.address, overrides=overrides, max_failures=args.max_failures,
                                       accelerator=accelerator.from_args(args))
    print(json.dumps({"run_dir": run_dir, **out}, indent=2, sort_keys=True, default=str))
    print(f"teacher written to {run_dir}", file=sys.stderr)
    return 0
