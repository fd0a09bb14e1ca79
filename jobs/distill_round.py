"""One guided-distillation round (or the schedule down to `until` steps) on the SPMD runner;
rounds live in shared storage (distill.dir, default <teacher>/distill) and resume from there.

    ray job submit --working-dir . -- python jobs/distill_round.py --config configs/distill.yaml --set distill.teacher=/data/runs/teacher-digits --set round=0
"""
from __future__ import annotations

import json
import sys


def load_config(path, overrides: dict | None = None):
    """The job's config from YAML (safe loader), validated."""
    from pipeline.distill.config import load_job

    return load_job(path, overrides)


def main(argv=None) -> int:
    from pipeline.distributed.jobs_client import parse_job_args

    path, overrides = parse_job_args(argv, __doc__.splitlines()[0], "configs/distill.yaml")
    job = load_config(path, overrides)

    from pipeline.distill.run import run_job

    print(json.dumps(run_job(job), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    from pipeline.distributed.jobs_client import run_job as run_main

    sys.exit(run_main(main))
