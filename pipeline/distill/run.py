"""Running rounds: one round (`run_round`) or the schedule down to a step count (`run_until`),
each round on the SPMD runner (Ray Train workers, or this process with workers=0)."""
from __future__ import annotations

import dataclasses
import os

from pipeline import lock, rundir
from pipeline.config import to_dict
from pipeline.distill import rounds
from pipeline.distill.config import DistillConfig, JobConfig
from pipeline.data.loading import require_data
from pipeline.errors import UserError
from pipeline.teacher.config import load_config


def _checked(cfg: DistillConfig) -> DistillConfig:
    """cfg with absolute paths (so that every round records the same config), its teacher checked."""
    if not cfg.teacher:
        raise UserError("no teacher: pass --teacher RUN_DIR (the guided teacher's run directory)")
    teacher = rundir.require_run_dir(cfg.teacher)
    require_data(load_config(rundir.read_config(teacher)).data, "distillation (its training images)")
    return dataclasses.replace(cfg, teacher=teacher, dir=cfg.dir and os.path.abspath(cfg.dir))


def run_round(cfg: DistillConfig, r: int, *, workers: int = 0, address: str | None = None,
              worker_gpus: float = 0.0, log=print, accelerator=None) -> dict:
    """Run (or resume, or skip if finished) round r; returns its results.json record. accelerator:
    where the workers run (pipeline.accelerator.AcceleratorConfig; worker_gpus > 0 alone: gpu)."""
    from pipeline.accelerator import AcceleratorConfig
    from pipeline.distill.loop import round_loop
    from pipeline.distributed.spmd import run_spmd

    cfg = _checked(cfg)
    root = rounds.root_dir(cfg)
    rounds.check_round(cfg, root, r)
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the distillation folder {root}: {e.strerror or e}") from None
    # one writer per round, from before its config.yaml is written until its results are: the lock
    # file lies beside the round's directory, which must be empty when it is new
    with lock.hold(os.path.join(root, f".round-{r:02d}.lock"), f"distillation round {r}",
                   target=rounds.round_dir(root, r), log=log):
        if rounds.is_finished(root, r):
            log(f"round {r} ({cfg.steps_of(r)} steps) already finished in {rounds.round_dir(root, r)}")
            return rundir.read_results(rounds.round_dir(root, r))
        d = rounds.prepare_round(cfg, root, r)
        log(f"round {r}: {cfg.steps_of(r)}-step student in {d}")
        run_spmd(round_loop, {"distill": to_dict(cfg), "round": r, "root": root}, num_workers=workers,
                 run_dir=d, address=address,
                 accelerator=accelerator or (AcceleratorConfig("gpu", worker_gpus) if worker_gpus else None))
        return rundir.read_results(d)


def run_until(cfg: DistillConfig, steps: int, *, max_rounds: int = 0, workers: int = 0, address: str | None = None,
              worker_gpus: float = 0.0, log=print, accelerator=None) -> list[dict]:
    """Run the rounds that make a `steps`-step student, starting at the first unfinished one
    (at most max_rounds of them; 0: all)."""
    cfg = _checked(cfg)
    wanted = rounds.rounds_until(cfg, steps)
    root = rounds.root_dir(cfg)
    todo = wanted[rounds.first_unfinished(root, len(wanted)):]
    todo = todo[:max_rounds] if max_rounds else todo
    results = [run_round(cfg, r, workers=workers, address=address, worker_gpus=worker_gpus, log=log,
                         accelerator=accelerator) for r in todo]
    if not results:
        log(f"the {steps}-step student is already finished: {rounds.round_dir(root, wanted[-1])}")
    return results


def run_job(job: JobConfig, *, address: str | None = None, log=print) -> list[dict]:
    """One round (job.round >= 0) or the schedule down to job.until steps (at most job.max_rounds
    rounds); the records of the rounds run."""
    kw = dict(workers=job.workers, address=address, accelerator=job.placement(), log=log)
    if job.round >= 0:
        return [run_round(job.distill, job.round, **kw)]
    return run_until(job.distill, job.until, max_rounds=job.max_rounds, **kw)
