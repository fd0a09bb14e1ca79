"""A tiny job to check a cluster end to end (submission, scheduling, logs) in seconds:
runs `tasks` Ray tasks, each summing squares, and prints which nodes ran them.

    ray job submit --working-dir . -- python jobs/tiny.py --config configs/tiny.yaml
"""
from __future__ import annotations

import dataclasses
import sys
import time

from pipeline import config


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    tasks: int = 4
    n: int = 1000  # each task sums i^2 for i < n
    sleep_s: float = 0.0  # each task waits this long first (to try `ddss jobs stop`)

    def validate(self):
        config.check(1 <= self.tasks <= 1000, "tasks", f"must be in [1, 1000], got {self.tasks}")
        config.check(self.n >= 1, "n", f"must be >= 1, got {self.n}")
        config.check(self.sleep_s >= 0, "sleep_s", f"must be >= 0, got {self.sleep_s}")


def load_config(path, overrides: dict | None = None) -> TinyConfig:
    """The job's config from YAML (safe loader), validated."""
    return config.load(TinyConfig, path, overrides)


def _sum_squares(n: int, sleep_s: float) -> tuple[int, str]:
    import ray

    time.sleep(sleep_s)
    return sum(i * i for i in range(n)), ray.get_runtime_context().get_node_id()


def main(argv=None) -> int:
    from pipeline.distributed.jobs_client import parse_job_args

    path, overrides = parse_job_args(argv, __doc__.splitlines()[0], "configs/tiny.yaml")
    cfg = load_config(path, overrides)

    import ray

    from pipeline.distributed.ray_init import ensure_ray

    ensure_ray()
    task = ray.remote(num_cpus=0.1)(_sum_squares)
    out = ray.get([task.remote(cfg.n, cfg.sleep_s) for _ in range(cfg.tasks)])
    expected = (cfg.n - 1) * cfg.n * (2 * cfg.n - 1) // 6
    if any(total != expected for total, _ in out):
        print(f"tiny job FAILED: sums {[t for t, _ in out]} != {expected}", file=sys.stderr)
        return 1
    nodes = sorted({node for _, node in out})
    print(f"tiny job OK: {cfg.tasks} tasks, sum of squares below {cfg.n} = {expected}, on {len(nodes)} node(s)")
    return 0


if __name__ == "__main__":
    from pipeline.distributed.jobs_client import run_job

    sys.exit(run_job(main))
