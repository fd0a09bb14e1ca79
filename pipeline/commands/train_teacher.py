"""`ddss train-teacher`: train the base diffusion model (an SPMD Ray Train job)."""
from __future__ import annotations

import json

NAME = "train-teacher"
HELP = ("Train a class-conditional teacher (eps-prediction, classifier-free-guidance label dropout, "
        "EMA) on Ray Train workers, then write a DDIM sample grid and FD against the test split.")
EXAMPLE = "ddss train-teacher --config configs/digits_teacher.yaml --workers 2 --set train.steps=500"


def parse_sets(items) -> dict:
    """--set key=value pairs (values parsed as YAML scalars) to dotted overrides."""
    import yaml

    from pipeline.errors import UserError

    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set needs key=value, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def add_arguments(p):
    p.add_argument("--config", default="configs/digits_teacher.yaml", help="a YAML teacher config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--run-dir", metavar="D", help="the run directory (default runs/teacher-<time>-<id>)")
    p.add_argument("--resume", action="store_true", help="continue --run-dir from its latest checkpoint")
    p.add_argument("--workers", type=int, default=0, metavar="W", help="Ray Train workers (0: in this process, no Ray)")
    p.add_argument("--address", help="a Ray cluster to join (default RAY_ADDRESS, else a local Ray on 127.0.0.1)")


def run(args) -> int:
    from pipeline import train
    from pipeline.errors import UserError

    if args.resume and not args.run_dir:
        raise UserError("--resume needs --run-dir naming the run to continue")
    cfg = train.load_config(args.config, parse_sets(args.set))
    run_dir, out = train.train_teacher(cfg, run_dir=args.run_dir, resume=args.resume, workers=args.workers,
                                       address=args.address)
    print(json.dumps({"run_dir": run_dir, **out}, indent=2, sort_keys=True, default=str))
    return 0
