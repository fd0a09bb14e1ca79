"""The scheduler of one EvalPool.run_many call (pipeline.distributed.pool): a Job per spec,
a queue of work units (a problem's reference features, consecutive block ranges) handed to
idle actors on demand, and the handling of what comes back: a unit's value, its spec's error,
or its actor's loss (the unit goes back in the queue, a replacement actor is started; after
more than the pool's max_failures losses the evaluation fails).
"""
from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any

import numpy as np

from pipeline.errors import UserError

# Losses that mean "this actor (or its node) is gone": the unit is retried elsewhere.
_LOST = (
    "ActorDiedError", "ActorUnavailableError", "NodeDiedError", "WorkerCrashedError", "ObjectLostError",
    "OwnerDiedError", "ObjectReconstructionFailedError", "ActorUnschedulableError",
)


@dataclasses.dataclass
class PoolStats:
    """How an evaluation went: actors started (by the pool so far), work units (ranges, the
    reference) retried after a loss."""

    actors_started: int = 0
    retried: int = 0
    done: list = dataclasses.field(default_factory=list)  # (perf_counter time, samples, actor number) per range
    cpu_s: float = 0.0  # CPU time the actors spent generating and featurizing
    started: float | None = None  # perf_counter time its first work unit was handed out
    finished: float | None = None  # ... and its last range came back

    def steady_rate(self) -> float | None:
        """Samples/s once every actor that finished work had finished its first range (start-up
        and compilation excluded); None if too few ranges to tell."""
        first: dict = {}
        for t, _, a in self.done:
            first.setdefault(a, t)
        t0 = max(first.values(), default=None)
        later = [(t, n) for t, n, _ in self.done if t > t0] if t0 is not None else []
        if not later:
            return None
        return sum(n for _, n in later) / (max(t for t, _ in later) - t0)


def _is_lost(e: BaseException) -> bool:
    return any(cls.__name__ in _LOST for cls in type(e).__mro__)


def raise_task_error(e):
    """Re-raise a user-facing error from inside an actor as itself (one line), else as is."""
    from pipeline.samplers.registry import SamplerDiverged

    cause = getattr(e, "cause", None)
    if isinstance(cause, (UserError, SamplerDiverged)):
        raise cause from None
    raise e


@dataclasses.dataclass
class Job:
    """One spec of a run_many call and what has come back for it."""

    number: int  # the pool's evaluation number: names the spec's Evaluator in the actors
    key: str  # problem_key(spec.problem)
    ref: Any  # the spec in Ray's object store
    spec: Any
    keep: int  # samples kept: indices 0..keep-1
    stats: PoolStats
    results: list = dataclasses.field(default_factory=list)  # RangeResults, as they came back
    images: dict = dataclasses.field(default_factory=dict)  # first block of a range -> its kept samples
    error: BaseException | None = None  # the spec's UserError or SamplerDiverged (return_errors)
    done: int = 0  # samples done

    def add(self, result, images, actor_number: int) -> int:
        """Record a finished range; returns its number of samples."""
        start, _ = self.spec.block_range(result.block_start)
        _, stop = self.spec.block_range(result.block_stop - 1)
        self.results.append(result)
        if images is not None:
            self.images[result.block_start] = images
        now = time.perf_counter()
        self.stats.done.append((now, stop - start, actor_number))
        self.stats.cpu_s += result.cpu_s
        self.stats.finished = now
        self.done += stop - start
        return stop - start

    def outcome(self, references: dict):
        """The error, or (results, reference features, PoolStats, kept samples or None)."""
        if self.error is not None:
            return self.error
        samples = np.concatenate([self.images[b] for b in sorted(self.images)]) if self.keep else None
        return self.results, references[self.key], self.stats, samples


@dataclasses.dataclass(frozen=True)
class _Unit:
    """A unit of work: a job's reference features, or a range of its blocks."""

    job: int  # index of the job in its run_many call
    kind: str  # "reference" or "range"
    blocks: tuple[int, int] = (0, 0)  # [block_start, block_stop) of a range


class Run:
    """The scheduler of one run_many call: the queue of units, the units in flight, the actors
    lost so far."""

    def __init__(self, pool, jobs: list[Job], blocks_per_range: int, bar, on_range_done, return_errors):
        from pipeline.evaluation import ranges

        self.pool, self.jobs, self.bar = pool, jobs, bar
        self.on_range_done, self.return_errors = on_range_done, return_errors
        self.todo = collections.deque()
        queued = set()  # problems whose reference is queued: once, before their first ranges
        for i, job in enumerate(jobs):
            if job.key not in pool.references and job.key not in queued:
                queued.add(job.key)
                self.todo.append(_Unit(i, "reference"))
            self.todo.extend(_Unit(i, "range", r) for r in ranges(job.spec, blocks_per_range))
        self.busy: dict = {}  # result ref -> (actor, unit)
        self.failures = 0
        self.done = 0  # samples done, or skipped after their spec's error (bar.n stays 0 when disabled)

    def run(self):
        import ray

        try:
            while self.todo or self.busy:
                self._dispatch()
                if not self.busy and not self.pool.starting:
                    continue
                (ref,), _ = ray.wait([*self.busy, *self.pool.starting], num_returns=1)
                if ref in self.pool.starting:
                    self._started(ref)
                else:
                    self._finished(ref)
        except BaseException:
            for actor, _ in self.busy.values():  # their work is moot: replace them, keeping the pool's size
                ray.kill(actor)
                self.pool.start_actor()
            raise

    def _dispatch(self):
        """Hand queued units to idle actors (the ranges of a spec that failed are dropped)."""
        pool = self.pool
        while pool.idle and self.todo:
            actor, unit = pool.idle.pop(), self.todo.popleft()
            job = self.jobs[unit.job]
            if job.error is not None and unit.kind == "range":
                pool.idle.append(actor)
                continue
            if job.stats.started is None:
                job.stats.started = time.perf_counter()
            args = (job.number, job.key, job.ref)
            if unit.kind == "reference":
                ref = actor.reference.remote(*args)
            else:
                ref = actor.run.remote(*args, *unit.blocks, job.keep)
            self.busy[ref] = (actor, unit)

    def _started(self, ref):
        """An actor answered ready() (it becomes idle), was lost starting, or failed its check
        (JAX sees none of the devices it was given: that UserError, one line, ends the run)."""
        import ray

        actor = self.pool.starting.pop(ref)
        try:
            self.pool.node_of[actor], self.pool.platform_of[actor] = ray.get(ref)
        except ray.exceptions.RayError as e:
            if not _is_lost(e):
                ray.kill(actor)
                raise_task_error(e)
            self._lost(e)
            return
        self.pool.idle.append(actor)

    def _finished(self, ref):
        """A unit came back: its value, its spec's error, or its actor's loss (the unit is retried)."""
        import ray

        actor, unit = self.busy.pop(ref)
        job = self.jobs[unit.job]
        try:
            value = ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            self.pool.idle.append(actor)  # the actor is fine: the error is its input's
            self._failed(job, unit, e)
            return
        except ray.exceptions.RayError as e:
            if not _is_lost(e):
                raise
            job.stats.retried += 1
            self.todo.appendleft(unit)
            ray.kill(actor)
            self._lost(e)
            return
        self.pool.idle.append(actor)
        if unit.kind == "reference":
            self.pool.references[job.key] = value
        elif job.error is None:
            self._advance(job.add(*value, self.pool.number[actor]))
            if self.on_range_done is not None:
                busy = [(a, self.pool.node_of[a]) for a, _ in self.busy.values()]
                self.on_range_done({"done": self.done, "busy": busy})

    def _failed(self, job: Job, unit: _Unit, e):
        """An error raised in an actor: raised here, unless return_errors and it is the spec's own."""
        from pipeline.samplers.registry import SamplerDiverged

        cause = getattr(e, "cause", None)
        if unit.kind == "reference" or not (self.return_errors and isinstance(cause, (UserError, SamplerDiverged))):
            raise_task_error(e)
        if job.error is None:
            job.error = cause
            self._advance(job.spec.num_samples - job.done)

    def _advance(self, n: int):
        self.done += n
        self.bar.update(n)

    def _lost(self, e: BaseException):
        """Count a lost actor (failing past max_failures) and start its replacement."""
        self.failures += 1
        if self.failures > self.pool.max_failures:
            raise RuntimeError(f"evaluation lost {self.failures} actors (max_failures={self.pool.max_failures}); "
                               f"last: {type(e).__name__}") from e
        self.pool.start_actor()
        for job in self.jobs:
            job.stats.actors_started = self.pool.actors_started
