"""`ddss evaluate --seeds S.. [--tune]`: the fair protocol (pipeline.evaluation.protocol) on one
pool of evaluation actors. With --tune, a training-free sampler's stride, first time t_max and x0
clipping are chosen on the validation seeds first (each coordinate stage evaluated at once);
then the sampler is evaluated on every test seed and reported as mean ± std. The summary goes
to results.json["protocol"] beside each seed's row in ["evaluations"]."""
from __future__ import annotations

import dataclasses
import time

from pipeline import rundir, schedules
from pipeline.app.evaluate_job import EvaluateConfig, check, eval_spec, pool_options, run_evaluations
from pipeline.errors import UserError
from pipeline.evaluation import protocol
from pipeline.evaluation.spec import split_sampler


def _with(cfg: EvaluateConfig, setting: protocol.Setting, seed: int, samples: int) -> EvaluateConfig:
    return dataclasses.replace(cfg, stride=setting.stride, t_max=setting.t_max, clip_x0=setting.clip_x0, seed=seed,
                               num_samples=samples, seeds=(), tune=False)


def check_protocol(cfg: EvaluateConfig) -> tuple[int, ...]:
    """The test seeds (cfg.seeds, else protocol.TEST_SEEDS), checked: >= 3, distinct from the
    validation seeds when tuning; tuning needs a training-free sampler (an artefact brings its own times)."""
    seeds = tuple(cfg.seeds) or protocol.TEST_SEEDS
    if cfg.tune:
        if split_sampler(cfg.sampler)[1] is not None:
            raise UserError(f"--tune chooses a training-free sampler's grid; {cfg.sampler} brings its own times")
        protocol.check_seeds(cfg.val_seeds, seeds)
    elif len(seeds) < protocol.MIN_SEEDS or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds needs at least {protocol.MIN_SEEDS} distinct seeds, got {list(seeds)}")
    return seeds


def key(cfg: EvaluateConfig, seeds) -> str:
    """The summary's key in results.json["protocol"]: sampler, K, the setting ("tuned" with
    --tune), samples, test seeds, guidance, reference."""
    how = "tuned" if cfg.tune else protocol.Setting(cfg.stride, cfg.t_max, cfg.clip_x0).label.replace(" ", "")
    w = "default" if cfg.w is None else f"{cfg.w:g}"
    return (f"{cfg.sampler} K={cfg.steps} {how} w={w} n={cfg.num_samples} seeds={','.join(map(str, seeds))} "
            f"{cfg.metrics_backend} vs {cfg.reference}")


def run_protocol(cfg: EvaluateConfig, address: str | None = None, progress: bool = True, log=print) -> dict:
    """Tune (if cfg.tune) on the validation seeds, evaluate on the test seeds, write and return
    the summary: the setting, FD and KID as mean ± std over the test seeds, each seed's FD, and
    with --tune every setting tried with its validation FD."""
    from pipeline.distributed.pool import EvalPool
    from pipeline.distributed.ray_init import ensure_ray
    from pipeline.evaluation import preflight

    seeds = check_protocol(cfg)
    _, results_dir = check(cfg)
    ensure_ray(address)
    preflight(eval_spec(cfg))
    setting = protocol.Setting(cfg.stride, cfg.t_max, cfg.clip_x0)
    t0 = time.time()
    summary = {"sampler": cfg.sampler, "steps": cfg.steps, "num_samples": cfg.num_samples, "reference": cfg.reference,
               "test_seeds": list(seeds)}
    with EvalPool(cfg.workers, **pool_options(cfg)) as pool:
        if cfg.tune:
            val_n = cfg.val_samples or cfg.num_samples

            def score_batch(todo):
                log(f"  tuning: {len(todo)} evaluations on validation seeds {list(cfg.val_seeds)}")
                rows = run_evaluations([_with(cfg, s, seed, val_n) for _, s, seed in todo], pool=pool, progress=progress,
                                       return_errors=True)
                return [_fd(r) for r in rows]

            tuned = protocol.tune_all(score_batch, {None: setting}, cfg.tune_strides or schedules.STRIDES, cfg.val_seeds,
                                      cfg.tune_t_max, (True, False))[None]
            setting = tuned.setting
            summary.update(val_seeds=list(cfg.val_seeds), val_samples=val_n,
                           tried={s.label: dataclasses.asdict(v) for s, v in tuned.tried.items()})
            log(f"  chosen on validation seeds: {setting.label} (FD {tuned.score})")
        rows = run_evaluations([_with(cfg, setting, seed, cfg.num_samples) for seed in seeds], pool=pool,
                               progress=progress, return_errors=True)
    fd, kid = protocol.summary(_fd(r) for r in rows), protocol.summary(_kid(r) for r in rows)
    summary.update(setting=dataclasses.asdict(setting), label=setting.label, fd=dataclasses.asdict(fd),
                   kid=dataclasses.asdict(kid), fd_per_seed=[_fd(r) for r in rows], wall_s=time.time() - t0,
                   errors=[str(r) for r in rows if isinstance(r, BaseException)])
    rundir.update_results(results_dir, {"protocol": {key(cfg, seeds): summary}})
    return summary


def _fd(row) -> float:
    """A row's FD; inf for a sampler that diverged (never the best, and the mean says so)."""
    if isinstance(row, BaseException):
        from pipeline.samplers import SamplerDiverged

        if not isinstance(row, SamplerDiverged):
            raise row
        return float("inf")
    return float(row["fd"])


def _kid(row) -> float:
    return float("inf") if isinstance(row, BaseException) else float(row["kid"])
