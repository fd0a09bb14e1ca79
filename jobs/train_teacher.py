"""Teacher training as a Ray job: `ddss train-teacher` with one Ray Train worker by default.

    ray job submit --working-dir . -- python jobs/train_teacher.py --config configs/digits_teacher.yaml
    ray job submit --working-dir . -- python jobs/train_teacher.py --workers 4 --run-dir /shared/runs/T --resume

Takes every option of `ddss train-teacher` (--config, --set, --run-dir, --resume, --workers,
--max-failures). Inside a job RAY_ADDRESS names the cluster, so the workers run there; the run
directory must be storage every node sees (a shared filesystem) when workers span hosts.
"""
from __future__ import annotations

import sys


def load_config(path, overrides: dict | None = None):
    """The job's config from YAML, validated (`ddss submit` checks it before uploading)."""
    from pipeline.teacher import config as tconfig

    return tconfig.load_config(path, overrides)


def main(argv=None) -> int:
    from pipeline.app import cli

    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--workers" or a.startswith("--workers=") for a in argv):
        argv = ["--workers", "1", *argv]
    return cli.main(["train-teacher", *argv])


if __name__ == "__main__":
    sys.exit(main())
