"""Evaluate a sampler on a teacher: KID and FD from a pool of Ray actors, appended to the
run's results.json.

    ray job submit --working-dir . -- python jobs/evaluate.py --config configs/evaluate.yaml
"""
from __future__ import annotations

import json
import sys


def load_config(path, overrides: dict | None = None):
    """The job's config from YAML (safe loader), validated."""
    from pipeline import config
    from pipeline.app.evaluate_job import EvaluateConfig

    return config.load(EvaluateConfig, path, overrides)


def main(argv=None) -> int:
    from pipeline.distributed.jobs_client import parse_job_args

    path, overrides = parse_job_args(argv, __doc__.splitlines()[0], "configs/evaluate.yaml")
    cfg = load_config(path, overrides)

    from pipeline.app.evaluate_job import run_evaluation

    row = run_evaluation(cfg)
    print(json.dumps(row, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    from pipeline.distributed.jobs_client import run_job

    sys.exit(run_job(main))
