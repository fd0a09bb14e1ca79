"""DDSS search: learn a K-step GGDM sampler for a teacher, as an SPMD Ray Train job; the best
parameters are saved as RUN_DIR/sampler.

    ray job submit --working-dir . -- python jobs/ddss_search.py --config configs/ddss_search.yaml --set steps=10
"""
from __future__ import annotations

import json
import sys


def load_config(path, overrides: dict | None = None):
    """The job's config from YAML (safe loader), validated."""
    from pipeline import ddss

    return ddss.load_config(path, overrides)


def main(argv=None) -> int:
    from pipeline.distributed.jobs_client import parse_job_args

    path, overrides = parse_job_args(argv, __doc__.splitlines()[0], "configs/ddss_search.yaml")
    cfg = load_config(path, overrides)

    from pipeline import ddss

    result = ddss.search(cfg)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    from pipeline.distributed.jobs_client import run_job

    sys.exit(run_job(main))
