"""The evaluation pool: Ray actors (pipeline.distributed.eval_actor), each generating and
featurizing the block ranges it is handed (scheduled by pipeline.distributed.schedule); the
driver keeps the results per spec, and pipeline.evaluation.merge puts them in block order, so
the metrics are the same for any number of workers. A lost actor's unit is retried on another
actor. One pool serves any number of evaluations: `ddss demo` starts its actors once.
"""
from __future__ import annotations

import collections
import hashlib
import os
from typing import Callable

from pipeline.distributed.eval_actor import EvalActor, actor_options
from pipeline.distributed.schedule import Job, PoolStats, Run, raise_task_error
from pipeline.errors import UserError


def problem_key(problem) -> str:
    """A key naming a Problem by its content (its pickled factories and their arguments), so that
    equal problems built twice share the actors' models and the pool's reference features."""
    from ray import cloudpickle

    return hashlib.sha256(cloudpickle.dumps(problem)).hexdigest()


class EvalPool:
    """A pool of `workers` evaluation actors (Ray must be up) that evaluates spec after spec:
    the actors start and import JAX once, keep each problem's model and feature function, and
    the pool keeps each problem's reference features, so an evaluation after the first costs
    its compilation and its samples only. Use as a context manager (or call close()).

    An actor that dies has its range put back in the queue and run by another actor, and a
    replacement is started; after more than `max_failures` such losses in one evaluation it fails.
    """

    def __init__(self, workers: int, *, resources: dict | None = None, env: dict | None = None,
                 pin_cores: bool = False, max_failures: int = 3):
        import ray

        if workers < 1:
            raise UserError(f"--workers must be >= 1, got {workers}")
        self.workers, self.pin_cores, self.max_failures = workers, pin_cores, max_failures
        self._actor_cls = ray.remote(EvalActor)
        self._resources = dict(resources or {"CPU": 1})  # what ready() checks JAX against
        self._opts = actor_options(resources, env)
        self.actors_started = 0
        self.starting: dict = {}  # ready ref -> actor
        self.idle: list = []
        self.node_of: dict = {}  # actor -> its node id
        self.platform_of: dict = {}  # actor -> the platform its JAX uses
        self.number: dict = {}  # actor -> the order it was started in
        self.references: dict = {}  # problem key -> reference features
        self.preparing: list = []  # refs of prepare() calls the next run waits for
        self.evaluations = 0
        for _ in range(workers):
            self.start_actor()

    def start_actor(self):
        """Start one more actor (it becomes idle once it answers ready())."""
        core = self.actors_started % (os.cpu_count() or 1) if self.pin_cores else None
        actor = self._actor_cls.options(**self._opts).remote(core)
        self.number[actor] = self.actors_started
        self.actors_started += 1
        self.starting[actor.ready.remote(self._resources)] = actor

    def platforms(self) -> dict:
        """How many of the actors started so far used each platform: {"cpu": 2}."""
        return dict(collections.Counter(self.platform_of.values()))

    def prepare(self, fn, *args):
        """Run fn(*args) (e.g. train the feature network into its cache) in one of the actors
        while the driver goes on with other work; the next evaluation waits for it first."""
        actor = next(iter(self.starting.values()), None) or self.idle[0]
        self.preparing.append(actor.prepare.remote(fn, *args))

    def wait_prepared(self):
        """Wait for the prepare() calls (re-raising a user-facing error from one as itself); any
        driver thread may call it, any number of times."""
        import ray

        try:
            ray.get(list(self.preparing))
        except ray.exceptions.RayTaskError as e:
            raise_task_error(e)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Kill every actor of the pool."""
        import ray

        for actor in self.idle + list(self.starting.values()):
            ray.kill(actor)
        self.idle, self.starting = [], {}

    def run_many(self, specs, *, blocks_per_range: int = 1, progress: bool = True, keep_samples: int = 0,
                 on_range_done: Callable[[dict], None] | None = None, return_errors: bool = False) -> list:
        """Evaluate several specs at once: their ranges share the actors (one spec's compilation
        overlaps another's sampling). Returns, per spec, (results: list of RangeResult, reference
        features, PoolStats, samples [n, ...] of indices 0..n-1 with n = min(keep_samples,
        num_samples), or None if keep_samples = 0). A UserError or SamplerDiverged raised for a
        spec ends everything with that error, or with return_errors=True takes that spec's place
        in the list (the other specs go on).
        on_range_done(info) is called on the driver after each finished range with
        info = {"done": samples done, "busy": [(actor, node id)] of the actors holding a range}.
        """
        from pipeline.progress import bar as progress_bar

        self.wait_prepared()
        jobs = [self._job(spec, keep_samples) for spec in specs]
        desc = f"evaluate {specs[0].sampler} K={specs[0].steps}" if len(specs) == 1 else f"evaluate {len(specs)} samplers"
        with progress_bar(total=sum(s.num_samples for s in specs), desc=desc, unit="sample", disable=not progress) as bar:
            Run(self, jobs, blocks_per_range, bar, on_range_done, return_errors).run()
        return [job.outcome(self.references) for job in jobs]

    def _job(self, spec, keep_samples: int) -> Job:
        import ray

        spec.validate()
        self.evaluations += 1
        return Job(self.evaluations, problem_key(spec.problem), ray.put(spec), spec,
                   min(keep_samples, spec.num_samples), PoolStats(actors_started=self.actors_started))
