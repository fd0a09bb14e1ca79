"""Distributed evaluation: a pool of Ray actors, each generating and featurizing the index
ranges it is handed (pipeline.evaluate.Evaluator); the driver merges the results in block
order, so the metrics are the same for any number of workers.

Work units are consecutive block ranges handed out on demand. An actor that dies (killed,
its node lost) has its range put back in the queue and run by another actor, and a
replacement actor is started; after more than `max_failures` such losses the evaluation fails.
A UserError or SamplerDiverged raised in an actor ends the evaluation with that error.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import sys
import time
from typing import Callable

from pipeline.errors import UserError

# Losses that mean "this actor (or its node) is gone": the range is retried elsewhere.
_LOST = (
    "ActorDiedError", "ActorUnavailableError", "NodeDiedError", "WorkerCrashedError", "ObjectLostError",
    "OwnerDiedError", "ObjectReconstructionFailedError", "ActorUnschedulableError",
)


class EvalActor:
    """One evaluation worker: `ready()` builds the Evaluator of `spec` (there, not in __init__,
    so that a bad input comes back as its own error), then `run` handles ranges."""

    def __init__(self, spec, pin_core: int | None = None):
        if pin_core is not None:
            from pipeline.distributed.spmd import _pin_to_core

            _pin_to_core(pin_core)
        self.spec = spec
        self.evaluator = None

    def ready(self) -> str:
        import ray

        from pipeline.evaluate import Evaluator  # imports jax inside the worker

        self.evaluator = Evaluator(self.spec)
        return ray.get_runtime_context().get_node_id()

    def run(self, block_start: int, block_stop: int):
        return self.evaluator.run(block_start, block_stop)

    def reference(self):
        return self.evaluator.reference()


@dataclasses.dataclass
class PoolStats:
    """How the pool went: actors started, work units (ranges, the reference) retried after a loss."""

    actors_started: int = 0
    retried: int = 0
    done: list = dataclasses.field(default_factory=list)  # (perf_counter time, samples, actor number) per range
    cpu_s: float = 0.0  # CPU time the actors spent generating and featurizing

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


def run_pool(spec, *, workers: int, resources: dict | None = None, env: dict | None = None,
             pin_cores: bool = False, blocks_per_range: int = 1, max_failures: int = 3,
             progress: bool = True, on_range_done: Callable[[dict], None] | None = None):
    """Evaluate `spec` (pipeline.evaluate.EvalSpec) on `workers` Ray actors (Ray must be up).

    Returns (results: list of RangeResult, reference features, PoolStats).
    on_range_done(info) is called on the driver after each finished range with
    info = {"done": samples done, "busy": [(actor, node id)] of the actors holding a range}.
    """
    import ray
    from tqdm.auto import tqdm

    from pipeline.evaluate import ranges

    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    spec.validate()
    Actor = ray.remote(EvalActor)
    opts = actor_options(resources, env)
    stats = PoolStats()
    todo = collections.deque([("reference", None)] + [("range", r) for r in ranges(spec, blocks_per_range)])
    starting: dict = {}  # ready ref -> actor
    busy: dict = {}  # result ref -> (actor, unit)
    idle: list = []
    node_of: dict = {}  # actor -> its node id
    number: dict = {}  # actor -> the order it was started in
    results, reference, failures = [], None, 0

    def start_actor():
        core = stats.actors_started % (os.cpu_count() or 1) if pin_cores else None
        actor = Actor.options(**opts).remote(spec, core)
        number[actor] = stats.actors_started
        stats.actors_started += 1
        starting[actor.ready.remote()] = actor

    def lost(e):
        nonlocal failures
        failures += 1
        if failures > max_failures:
            raise RuntimeError(f"evaluation lost {failures} actors (max_failures={max_failures}); last: {type(e).__name__}") from e
        start_actor()

    for _ in range(workers):
        start_actor()
    bar = tqdm(total=spec.num_samples, desc=f"evaluate {spec.sampler} K={spec.steps}", unit="sample",
               disable=not progress, file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
    try:
        while todo or busy:
            while idle and todo:
                actor, unit = idle.pop(), todo.popleft()
                ref = actor.reference.remote() if unit[0] == "reference" else actor.run.remote(*unit[1])
                busy[ref] = (actor, unit)
            ready, _ = ray.wait(list(busy) + list(starting), num_returns=1)
            ref = ready[0]
            if ref in starting:
                actor = starting.pop(ref)
                try:
                    node_of[actor] = ray.get(ref)
                    idle.append(actor)
                except ray.exceptions.RayTaskError as e:  # the Evaluator could not be built
                    _raise_task_error(e)
                except ray.exceptions.RayError as e:
                    if not _is_lost(e):
                        raise
                    lost(e)
                continue
            actor, unit = busy.pop(ref)
            try:
                value = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                _raise_task_error(e)
            except ray.exceptions.RayError as e:
                if not _is_lost(e):
                    raise
                stats.retried += 1
                todo.appendleft(unit)
                ray.kill(actor)
                lost(e)
                continue
            idle.append(actor)
            if unit[0] == "reference":
                reference = value
                continue
            results.append(value)
            start, _ = spec.block_range(value.block_start)
            _, stop = spec.block_range(value.block_stop - 1)
            stats.done.append((time.perf_counter(), stop - start, number[actor]))
            stats.cpu_s += value.cpu_s
            bar.update(stop - start)
            if on_range_done is not None:
                on_range_done({"done": bar.n, "busy": [(a, node_of[a]) for a, _ in busy.values()]})
    finally:
        bar.close()
        for actor in idle + [a for a, _ in busy.values()] + list(starting.values()):
            ray.kill(actor)
    return results, reference, stats


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


def evaluate(spec, *, workers: int, address: str | None = None, backend: str = "jax", inception_path=None,
             **pool_kw) -> dict:
    """Evaluate `spec` on a pool of `workers` actors (joining `address`, else a local Ray):
    {"kid", "kid_std", "fd", "num_samples", "workers", "wall_s", "samples_per_s", ...}.
    wall_s covers the pool (actor start, generation, features), not the final scoring."""
    from pipeline.distributed.ray_init import ensure_ray
    from pipeline.evaluate import merge

    ensure_ray(address)
    if spec.problem.prepare is not None:
        spec.problem.prepare()  # e.g. train the feature network once, not in every actor
    t0 = time.perf_counter()
    results, reference, stats = run_pool(spec, workers=workers, **pool_kw)
    features, moments = merge(spec, results)
    wall = time.perf_counter() - t0
    out = score(features, moments, reference, backend, inception_path)
    out.update(num_samples=spec.num_samples, kid_samples=int(features.shape[0]), reference_samples=int(reference.shape[0]),
               workers=workers, wall_s=wall, samples_per_s=spec.num_samples / wall,
               steady_samples_per_s=stats.steady_rate(), samples_per_cpu_s=spec.num_samples / stats.cpu_s,
               actors_started=stats.actors_started, retried=stats.retried)
    return out


def run_evaluation(cfg, address: str | None = None, progress: bool = True) -> dict:
    """`ddss evaluate` / jobs/evaluate.py: evaluate cfg (pipeline.evaluate.EvaluateConfig) on a
    pool of actors and append the result row to results.json of cfg.results_dir (default: the
    teacher's run). Returns the row."""
    from pipeline import rundir, samplers
    from pipeline.distributed.ray_init import ensure_ray
    from pipeline.evaluate import EvalSpec, split_sampler, teacher_problem

    teacher = os.path.abspath(cfg.teacher)
    if not os.path.isdir(teacher):
        raise UserError(f"teacher run directory not found: {cfg.teacher}")
    results_dir = os.path.abspath(cfg.results_dir or teacher)
    if not os.path.isdir(results_dir):
        raise UserError(f"results directory not found: {cfg.results_dir}")
    name, artefact = split_sampler(cfg.sampler)
    samplers.get(name)  # one line naming the valid samplers
    ensure_ray(address)
    problem = teacher_problem(teacher, cfg.cache_dir, inception=cfg.inception_path is not None)
    spec = EvalSpec(problem, cfg.sampler, cfg.steps, cfg.num_samples, seed=cfg.seed, stride=cfg.stride, w=cfg.w,
                    batch_size=cfg.batch_size, kid_samples=cfg.kid_samples)
    resources = {"CPU": cfg.worker_cpus}
    if cfg.worker_gpus:
        resources["GPU"] = cfg.worker_gpus
    if cfg.worker_tpus:
        resources["TPU"] = cfg.worker_tpus
    out = evaluate(spec, workers=cfg.workers, resources=resources, pin_cores=cfg.pin_cores,
                   max_failures=cfg.max_failures, progress=progress, backend=cfg.metrics_backend,
                   inception_path=cfg.inception_path)
    method = name if artefact is None else f"{name}:{os.path.basename(artefact.rstrip('/'))}"
    row = {"method": method, "sampler": cfg.sampler, "steps": cfg.steps, "nfe": samplers.nfe(name, cfg.steps),
           "stride": cfg.stride, "w": cfg.w, "seed": cfg.seed, "features": problem.label, "teacher": teacher,
           "metrics_backend": cfg.metrics_backend, "time": time.time(), **out}
    rundir.update_results(results_dir, {"evaluations": {cfg.result_key(): row}})
    return row
