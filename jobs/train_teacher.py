"""Teacher training: a class-conditional diffusion model as an SPMD Ray Train job.

    ray job submit --working-dir . -- python jobs/train_teacher.py --config configs/digits_teacher.yaml --set train.steps=500
"""
from __future__ import annotations

import json
import sys


def load_config(path, overrides: dict | None = None):
    """The job's config from YAML (safe loader), validated."""
    from pipeline import train

    return train.load_config(path, overrides)


def main(argv=None) -> int:
    from pipeline.distributed.jobs_client import parse_job_args

    path, overrides = parse_job_args(argv, __doc__.splitlines()[0], "configs/digits_teacher.yaml")
    cfg = load_config(path, overrides)

    from pipeline import train

    run_dir, out = train.train_teacher(cfg, workers=1)
    print(json.dumps({"run_dir": run_dir, **out}, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    from pipeline.distributed.jobs_client import run_job

    sys.exit(run_job(main))
