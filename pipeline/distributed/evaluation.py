"""Distributed evaluation, the pool-level API: `evaluate_many` runs specs on an EvalPool
(pipeline.distributed.pool), merges each spec's ranges in block order (pipeline.evaluation.
merge), so the metrics are the same for any number of workers, and scores them (`score`: by
pipeline.metrics, or by tensorflow-gan in its own venv).
"""
from __future__ import annotations

import time
from typing import Callable

from pipeline.distributed.pool import EvalPool


def score(features, moments, reference, backend: str = "jax", inception_path=None) -> dict:
    """{"kid", "kid_std", "fd"} of generated vs reference features: by pipeline.metrics
    (backend "jax", FD from the merged moments) or by tensorflow-gan in its own venv ("tfgan",
    from the features). With inception_path, features and reference are images first put
    through tensorflow-gan's Inception (FD is then FID)."""
    from pipeline.evaluation import metrics

    if inception_path is not None:
        from pipeline.distributed.tfgan.backend import tfgan_inception_activations

        features = tfgan_inception_activations(features, inception_path)
        reference = tfgan_inception_activations(reference, inception_path)
        moments = None
    if backend == "tfgan":
        from pipeline.distributed.tfgan.backend import tfgan_metrics

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
    from pipeline.evaluation import merge

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
                   retried=stats.retried, platforms=pool.platforms())
        if keep_samples:
            out["samples"] = samples
        outs.append(out)
    return outs


def evaluate(spec, **kw) -> dict:
    """Evaluate one spec: evaluate_many([spec], **kw)[0] (errors raised)."""
    return evaluate_many([spec], **kw)[0]
