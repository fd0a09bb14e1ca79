"""Running rounds: one round (`run_round`) or the schedule down to a step count (`run_until`),
each round on the SPMD runner (Ray Train workers, or this process with workers=0)."""
from __future__ import annotations

import os

from pipeline import rundir
from pipeline.config import to_dict
from pipeline.distill import rounds
from pipeline.distill.config import DistillConfig
from pipeline.errors import UserError


def _check_teacher(cfg: DistillConfig):
    if not cfg.teacher:
        raise UserError("no teacher: pass --teacher RUN_DIR (the guided teacher's run directory)")
    if not os.path.isfile(os.path.join(cfg.teacher, rundir.CONFIG)):
        raise UserError(f"--teacher {cfg.teacher} is not a teacher run directory (no {rundir.CONFIG})")


def run_round(cfg: DistillConfig, r: int, *, workers: int = 0, address: str | None = None, log=print) -> dict:
    """Run (or resume, or skip if finished) round r; returns its results.json record."""
    from pipeline.distill.loop import round_loop
    from pipeline.distributed.spmd import run_spmd

    _check_teacher(cfg)
    root = rounds.root_dir(cfg)
    rounds.check_round(cfg, root, r)
    if rounds.is_finished(root, r):
        log(f"round {r} ({cfg.steps_of(r)} steps) already finished in {rounds.round_dir(root, r)}")
        return rundir.read_results(rounds.round_dir(root, r))
    d = rounds.prepare_round(cfg, root, r)
    log(f"round {r}: {cfg.steps_of(r)}-step student in {d}")
    run_spmd(round_loop, {"distill": to_dict(cfg), "round": r, "root": root}, num_workers=workers,
             run_dir=d, address=address)
    return rundir.read_results(d)


def run_until(cfg: DistillConfig, steps: int, *, workers: int = 0, address: str | None = None, log=print) -> list[dict]:
    """Run the rounds that make a `steps`-step student, starting at the first unfinished one."""
    _check_teacher(cfg)
    wanted = rounds.rounds_until(cfg, steps)
    root = rounds.root_dir(cfg)
    results = [run_round(cfg, r, workers=workers, address=address, log=log)
               for r in wanted[rounds.first_unfinished(root, len(wanted)):]]
    if not results:
        log(f"the {steps}-step student is already finished: {rounds.round_dir(root, wanted[-1])}")
    return results
