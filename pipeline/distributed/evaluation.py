"""Distributed evaluation: a pool of Ray actors, each generating and featurizing the index
ranges it is handed (pipeline.evaluate.Evaluator); the driver merges the results in block
order, so the metrics are the same for any number of workers.

Work units are consecutive block ranges handed out on demand. An actor that dies (killed,
its node lost) has its range put back in the queue and run by another actor, and a
replacement actor is started; after more than `max_failures` such losses the evaluation fails.
A UserError or SamplerDiverged raised in an actor ends the evaluation with that error.
One pool (EvalPool) serves any number of evaluations in turn: `ddss demo` starts its actors once.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import sys
import time
from typing import Callable

import numpy as np

from pipeline.errors import UserError

# Losses that mean "this actor (or its node) is gone": the range is retried elsewhere.
_LOST = (
    "ActorDiedError", "ActorUnavailableError", "NodeDiedError", "WorkerCrashedError", "ObjectLostError",
    "OwnerDiedError", "ObjectReconstructionFailedError", "ActorUnschedulableError",
)


KEEP_EVALUATORS = 4  # compiled evaluations an actor keeps (EvalPool.run_many interleaves specs)


class EvalActor:
    """One evaluation worker, kept across evaluations: `ready()` imports JAX and answers; every
    call names its evaluation (a number) and spec; the actor builds that spec's Evaluator on the
    first call (there, so that a bad input comes back as its own error) and keeps the model and
    feature function of each problem it has seen (by the problem's key) for later specs."""

    def __init__(self, pin_core: int | None = None):
        if pin_core is not None:
            from pipeline.distributed.spmd import _pin_to_core

            _pin_to_core(pin_core)
        self.evaluators = collections.OrderedDict()  # evaluation number -> Evaluator, the latest few
        self.problems: dict = {}  # problem key -> Problem whose factories return the built objects

    def ready(self) -> str:
        import ray

        import jax  # noqa: F401  (imported in the worker, before any work)

        return ray.get_runtime_context().get_node_id()

    def _problem(self, key: str, problem):
        if key not in self.problems:
            model = problem.model()
            features = problem.features() if problem.features is not None else None
            self.problems[key] = dataclasses.replace(
                problem, model=lambda: model, features=None if features is None else (lambda: features))
        return self.problems[key]

    def _evaluator(self, number: int, key: str, spec):
        from pipeline.evaluate import Evaluator

        if number not in self.evaluators:
            self.evaluators[number] = Evaluator(dataclasses.replace(spec, problem=self._problem(key, spec.problem)))
            while len(self.evaluators) > KEEP_EVALUATORS:
                self.evaluators.popitem(last=False)
        return self.evaluators[number]

    def run(self, number: int, key: str, spec, block_start: int, block_stop: int, keep: int = 0):
        """(RangeResult of blocks [block_start, block_stop), the samples among the first `keep`
        indices that these blocks hold, or None)."""
        ev = self._evaluator(number, key, spec)
        result = ev.run(block_start, block_stop)
        first, _ = spec.block_range(block_start)
        if first >= keep:
            return result, None
        images = [ev.samples(b)[0] for b in range(block_start, block_stop) if spec.block_range(b)[0] < keep]
        return result, np.concatenate(images)[: keep - first]

    def reference(self, number: int, key: str, spec):
        return self._evaluator(number, key, spec).reference()

    def prepare(self, fn, *args) -> None:
        """fn(*args) for its side effect (e.g. train and cache a feature network)."""
        fn(*args)


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


def _raise_task_error(e):
    """Re-raise a user-facing error from inside an actor as itself (one line), else as is."""
    from pipeline.samplers.core import SamplerDiverged

    cause = getattr(e, "cause", None)
    if isinstance(cause, (UserError, SamplerDiverged)):
        raise cause from None
    raise e


def actor_options(resources: dict | None = None, env: dict | None = None) -> dict:
    """Ray options of one evaluation actor: resources ({"CPU": 1}, {"GPU": 0.5}, {"TPU": 4}, ...)
    and its environment (JAX on CPU unless it holds an accelerator; no GPU preallocation so
    several actors can share a GPU)."""
    resources = dict(resources or {"CPU": 1})
    env_vars = {}
    if resources.get("GPU"):
        env_vars["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    elif not resources.get("TPU"):
        env_vars["JAX_PLATFORMS"] = "cpu"
    env_vars.update({k: str(v) for k, v in (env or {}).items()})
    opts = {
        "num_cpus": resources.pop("CPU", 0),
        "num_gpus": resources.pop("GPU", 0),
        "max_restarts": 0,
        "runtime_env": {"env_vars": env_vars},
    }
    if resources:
        opts["resources"] = resources
    return opts


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
        self._opts = actor_options(resources, env)
        self.actors_started = 0
        self.starting: dict = {}  # ready ref -> actor
        self.idle: list = []
        self.node_of: dict = {}  # actor -> its node id
        self.number: dict = {}  # actor -> the order it was started in
        self.references: dict = {}  # problem key -> reference features
        self.preparing: list = []  # refs of prepare() calls the next run waits for
        self.evaluations = 0
        for _ in range(workers):
            self._start_actor()

    def _start_actor(self):
        core = self.actors_started % (os.cpu_count() or 1) if self.pin_cores else None
        actor = self._actor_cls.options(**self._opts).remote(core)
        self.number[actor] = self.actors_started
        self.actors_started += 1
        self.starting[actor.ready.remote()] = actor

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
            _raise_task_error(e)

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

    def run(self, spec, *, blocks_per_range: int = 1, progress: bool = True, keep_samples: int = 0,
            on_range_done: Callable[[dict], None] | None = None):
        """Evaluate `spec` (pipeline.evaluate.EvalSpec) on the pool: run_many([spec])[0]."""
        return self.run_many([spec], blocks_per_range=blocks_per_range, progress=progress, keep_samples=keep_samples,
                             on_range_done=on_range_done)[0]

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
        import ray
        from tqdm.auto import tqdm

        from pipeline.evaluate import ranges
        from pipeline.samplers.core import SamplerDiverged

        self.wait_prepared()
        jobs = []  # per spec: its number, problem key, object ref, kept samples, stats, results, images
        todo = collections.deque()
        for i, spec in enumerate(specs):
            spec.validate()
            self.evaluations += 1
            key = problem_key(spec.problem)
            jobs.append({"number": self.evaluations, "key": key, "ref": ray.put(spec), "spec": spec,
                         "keep": min(keep_samples, spec.num_samples), "stats": PoolStats(actors_started=self.actors_started),
                         "results": [], "images": {}, "error": None, "done": 0})
            if key not in self.references and not any(u[1] == "reference" and jobs[u[0]]["key"] == key for u in todo):
                todo.append((i, "reference", None))
            todo.extend((i, "range", r) for r in ranges(spec, blocks_per_range))
        busy: dict = {}  # result ref -> (actor, unit)
        failures = 0

        def lost(e):
            nonlocal failures
            failures += 1
            if failures > self.max_failures:
                raise RuntimeError(f"evaluation lost {failures} actors (max_failures={self.max_failures}); "
                                   f"last: {type(e).__name__}") from e
            self._start_actor()
            for job in jobs:
                job["stats"].actors_started = self.actors_started

        desc = f"evaluate {specs[0].sampler} K={specs[0].steps}" if len(specs) == 1 else f"evaluate {len(specs)} samplers"
        bar = tqdm(total=sum(s.num_samples for s in specs), desc=desc, unit="sample", disable=not progress,
                   file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
        try:
            while todo or busy:
                while self.idle and todo:
                    actor, unit = self.idle.pop(), todo.popleft()
                    job = jobs[unit[0]]
                    if job["error"] is not None and unit[1] == "range":
                        self.idle.append(actor)
                        continue
                    if job["stats"].started is None:
                        job["stats"].started = time.perf_counter()
                    args = (job["number"], job["key"], job["ref"])
                    ref = actor.reference.remote(*args) if unit[1] == "reference" else actor.run.remote(*args, *unit[2], job["keep"])
                    busy[ref] = (actor, unit)
                if not busy and not self.starting:
                    continue
                ready, _ = ray.wait(list(busy) + list(self.starting), num_returns=1)
                ref = ready[0]
                if ref in self.starting:
                    actor = self.starting.pop(ref)
                    try:
                        self.node_of[actor] = ray.get(ref)
                        self.idle.append(actor)
                    except ray.exceptions.RayError as e:
                        if not _is_lost(e):
                            raise
                        lost(e)
                    continue
                actor, unit = busy.pop(ref)
                job = jobs[unit[0]]
                try:
                    value = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    self.idle.append(actor)  # the actor is fine: the error is its input's
                    cause = getattr(e, "cause", None)
                    if unit[1] == "reference" or not (return_errors and isinstance(cause, (UserError, SamplerDiverged))):
                        _raise_task_error(e)
                    if job["error"] is None:
                        job["error"] = cause
                        bar.update(job["spec"].num_samples - job["done"])
                    continue
                except ray.exceptions.RayError as e:
                    if not _is_lost(e):
                        raise
                    job["stats"].retried += 1
                    todo.appendleft(unit)
                    ray.kill(actor)
                    lost(e)
                    continue
                self.idle.append(actor)
                if unit[1] == "reference":
                    self.references[job["key"]] = value
                    continue
                if job["error"] is not None:
                    continue
                value, imgs = value
                job["results"].append(value)
                if imgs is not None:
                    job["images"][value.block_start] = imgs
                spec = job["spec"]
                start, _ = spec.block_range(value.block_start)
                _, stop = spec.block_range(value.block_stop - 1)
                job["stats"].done.append((time.perf_counter(), stop - start, self.number[actor]))
                job["stats"].cpu_s += value.cpu_s
                job["stats"].finished = time.perf_counter()
                job["done"] += stop - start
                bar.update(stop - start)
                if on_range_done is not None:
                    on_range_done({"done": bar.n, "busy": [(a, self.node_of[a]) for a, _ in busy.values()]})
        except BaseException:
            for actor, _ in busy.values():  # their work is moot: replace them, keeping the pool's size
                ray.kill(actor)
                self._start_actor()
            raise
        finally:
            bar.close()
        out = []
        for job in jobs:
            if job["error"] is not None:
                out.append(job["error"])
                continue
            images = job["images"]
            samples = np.concatenate([images[b] for b in sorted(images)]) if job["keep"] else None
            out.append((job["results"], self.references[job["key"]], job["stats"], samples))
        return out


def score(features, moments, reference, backend: str = "jax", inception_path=None) -> dict:
    """{"kid", "kid_std", "fd"} of generated vs reference features: by pipeline.metrics
    (backend "jax", FD from the merged moments) or by tensorflow-gan in its own venv ("tfgan",
    from the features). With inception_path, features and reference are images first put
    through tensorflow-gan's Inception (FD is then FID)."""
    from pipeline.evaluate import metrics

    if inception_path is not None:
        from pipeline.distributed.tfgan_backend import tfgan_inception_activations

        features = tfgan_inception_activations(features, inception_path)
        reference = tfgan_inception_activations(reference, inception_path)
        moments = None
    if backend == "tfgan":
        from pipeline.distributed.tfgan_backend import tfgan_metrics

        r = tfgan_metrics(features, reference)
        return {"kid": float(r["kid"]), "kid_std": float(r["kid_std"]), "fd": float(r["fid"])}
    return metrics(features, moments, reference)


def evaluate_many(specs, *, workers: int, address: str | None = None, backend: str = "jax", inception_path=None,
                  pool: EvalPool | None = None, keep_samples: int = 0, progress: bool = True,
                  on_range_done: Callable[[dict], None] | None = None, return_errors: bool = False,
                  **pool_kw) -> list:
    """Evaluate `specs` together (EvalPool.run_many) on `pool`, or on a pool of `workers` actors
    started for them (joining `address`, else a local Ray; pool_kw: EvalPool's options). Per
    spec: {"kid", "kid_std", "fd", "num_samples", "workers", "wall_s", "samples_per_s", ...},
    plus "samples" (the first keep_samples samples, NumPy) if keep_samples > 0; with
    return_errors, a spec's UserError or SamplerDiverged instead. wall_s covers a spec's
    generation and features (from its first work unit to its last; on a pool started here,
    from the pool's start), not the final scoring."""
    from pipeline.distributed.ray_init import ensure_ray
    from pipeline.evaluate import merge

    ensure_ray(address)
    if pool is not None:
        pool.wait_prepared()
    for prepare in {s.problem.prepare for s in specs if s.problem.prepare is not None}:
        prepare()  # e.g. train the feature network once, not in every actor
    t0 = time.perf_counter()
    blocks_per_range = pool_kw.pop("blocks_per_range", 1)
    own = pool is None
    pool = EvalPool(workers, **pool_kw) if own else pool
    try:
        runs = pool.run_many(specs, blocks_per_range=blocks_per_range, progress=progress, keep_samples=keep_samples,
                             on_range_done=on_range_done, return_errors=return_errors)
    finally:
        if own:
            pool.close()
    outs = []
    for spec, run in zip(specs, runs):
        if isinstance(run, BaseException):
            outs.append(run)
            continue
        results, reference, stats, samples = run
        features, moments = merge(spec, results)
        wall = stats.finished - (t0 if own else stats.started)
        out = score(features, moments, reference, backend, inception_path)
        out.update(num_samples=spec.num_samples, kid_samples=int(features.shape[0]),
                   reference_samples=int(reference.shape[0]), workers=pool.workers, wall_s=wall,
                   samples_per_s=spec.num_samples / wall, steady_samples_per_s=stats.steady_rate(),
                   samples_per_cpu_s=spec.num_samples / stats.cpu_s, actors_started=stats.actors_started,
                   retried=stats.retried)
        if keep_samples:
            out["samples"] = samples
        outs.append(out)
    return outs


def evaluate(spec, **kw) -> dict:
    """Evaluate one spec: evaluate_many([spec], **kw)[0] (errors raised)."""
    return evaluate_many([spec], **kw)[0]


def run_evaluations(cfgs, address: str | None = None, progress: bool = True, pool: EvalPool | None = None,
                    keep_samples: int = 0, return_errors: bool = False) -> list:
    """`ddss evaluate` / jobs/evaluate.py / `ddss demo`: evaluate each cfg (pipeline.evaluate.
    EvaluateConfig), all at once, on `pool` or on a pool started with the first cfg's workers and
    resources, and append each result row to results.json of its cfg.results_dir (default: the
    teacher's run). Returns the rows, each with "samples" (the first keep_samples samples, not
    written to results.json) if keep_samples > 0; with return_errors, a row's UserError or
    SamplerDiverged takes its place."""
    from pipeline import rundir, samplers
    from pipeline.distributed.ray_init import ensure_ray
    from pipeline.evaluate import EvalSpec, split_sampler, teacher_problem

    specs, dirs = [], []
    for cfg in cfgs:
        teacher = os.path.abspath(cfg.teacher)
        if not os.path.isdir(teacher):
            raise UserError(f"teacher run directory not found: {cfg.teacher}")
        results_dir = os.path.abspath(cfg.results_dir or teacher)
        if not os.path.isdir(results_dir):
            raise UserError(f"results directory not found: {cfg.results_dir}")
        samplers.get(split_sampler(cfg.sampler)[0])  # one line naming the valid samplers
        problem = teacher_problem(teacher, cfg.cache_dir, inception=cfg.inception_path is not None)
        specs.append(EvalSpec(problem, cfg.sampler, cfg.steps, cfg.num_samples, seed=cfg.seed, stride=cfg.stride,
                              w=cfg.w, batch_size=cfg.batch_size, kid_samples=cfg.kid_samples))
        dirs.append((teacher, results_dir))
    if len({(c.metrics_backend, c.inception_path) for c in cfgs}) > 1:
        raise UserError("evaluations run together must share metrics_backend and inception_path")
    ensure_ray(address)
    first = cfgs[0]
    pool_kw = {}
    if pool is None:
        resources = {"CPU": first.worker_cpus}
        if first.worker_gpus:
            resources["GPU"] = first.worker_gpus
        if first.worker_tpus:
            resources["TPU"] = first.worker_tpus
        pool_kw = dict(resources=resources, pin_cores=first.pin_cores, max_failures=first.max_failures)
    outs = evaluate_many(specs, workers=first.workers, progress=progress, backend=first.metrics_backend,
                         inception_path=first.inception_path, pool=pool, keep_samples=keep_samples,
                         return_errors=return_errors, **pool_kw)
    rows = []
    for cfg, spec, (teacher, results_dir), out in zip(cfgs, specs, dirs, outs):
        if isinstance(out, BaseException):
            rows.append(out)
            continue
        samples = out.pop("samples", None)
        name, artefact = split_sampler(cfg.sampler)
        method = name if artefact is None else f"{name}:{os.path.basename(artefact.rstrip('/'))}"
        row = {"method": method, "sampler": cfg.sampler, "steps": cfg.steps, "nfe": samplers.nfe(name, cfg.steps),
               "stride": cfg.stride, "w": cfg.w, "seed": cfg.seed, "features": spec.problem.label, "teacher": teacher,
               "metrics_backend": cfg.metrics_backend, "time": time.time(), **out}
        rundir.update_results(results_dir, {"evaluations": {cfg.result_key(): row}})
        rows.append(row if samples is None else {**row, "samples": samples})
    return rows


def run_evaluation(cfg, address: str | None = None, progress: bool = True, pool: EvalPool | None = None,
                   keep_samples: int = 0) -> dict:
    """One evaluation: run_evaluations([cfg], ...)[0] (errors raised); returns its row."""
    return run_evaluations([cfg], address, progress, pool, keep_samples)[0]
