"""Where the rounds of a distillation live and in which order they may run.

    ROOT/round-00/   stage 1 (w-conditioned student at start_steps steps)
    ROOT/round-01/   first halving (start_steps / 2 steps) ... down to 1 step
    ROOT/round-RR/config.yaml      the resolved distillation config plus the round index
    ROOT/round-RR/checkpoints/     orbax train states (params, Adam state, step), resumed
    ROOT/round-RR/student/         orbax, the finished student's params (written last)
    ROOT/round-RR/metrics.jsonl, results.json   ({"round", "steps", "finished": true, ...})

ROOT defaults to <teacher run>/distill. Round r >= 1 starts from round r-1's student, so it
refuses to run before round r-1 has finished. Every round of ROOT is made with one config: a
job whose config differs from the one the existing rounds recorded is refused (only `dir`, where
ROOT is, may differ; the job's own keys, workers, round, until, max_rounds, are not part of
the config). Nothing here imports JAX or Ray.
"""
from __future__ import annotations

import os

from pipeline import rundir
from pipeline.config import check_resume, to_dict
from pipeline.distill.config import DistillConfig
from pipeline.errors import UserError

STUDENT = "student"
MAY_DIFFER = ("dir",)  # DistillConfig keys that may differ between the rounds of one ROOT (a moved ROOT)


def root_dir(cfg: DistillConfig) -> str:
    """The folder holding every round's run directory; refused (one line) when rounds already
    there were made with another config (check_chain)."""
    if not cfg.teacher and not cfg.dir:
        raise UserError("no teacher: pass --teacher RUN_DIR (the guided teacher's run directory)")
    root = os.path.abspath(cfg.dir or os.path.join(cfg.teacher, "distill"))
    check_chain(cfg, root)
    return root


def check_chain(cfg: DistillConfig, root: str):
    """A one-line UserError if a round under `root` recorded a config other than cfg (in any key
    but MAY_DIFFER): the rounds of a chain build on each other, so they must share one config."""
    names = sorted(os.listdir(root)) if os.path.isdir(root) else []
    names = [n for n in names if n.startswith("round-") and n[6:].isdigit()]
    given = to_dict(cfg)
    for name in names:
        d = os.path.join(root, name)
        if os.path.isfile(os.path.join(d, rundir.CONFIG)):
            stored = rundir.read_config(d).get("distill")
            check_resume(stored if isinstance(stored, dict) else {}, given, MAY_DIFFER, f"the rounds in {root}",
                         hint=f"the rounds of a distillation share one config (see {d}/{rundir.CONFIG}): "
                              "give the same --config and --set, or pass --dir for a new distillation")


def round_dir(root: str, r: int) -> str:
    return os.path.join(root, f"round-{r:02d}")


def student_dir(root: str, r: int) -> str:
    """The orbax directory of round r's finished student parameters."""
    return os.path.join(round_dir(root, r), STUDENT)


def is_finished(root: str, r: int) -> bool:
    """Round r has written its student and recorded itself finished."""
    d = round_dir(root, r)
    return os.path.isdir(d) and bool(rundir.read_results(d).get("finished"))


def first_unfinished(root: str, num_rounds: int) -> int:
    """The first round not yet finished (num_rounds when all are)."""
    for r in range(num_rounds):
        if not is_finished(root, r):
            return r
    return num_rounds


def check_round(cfg: DistillConfig, root: str, r: int):
    """A one-line UserError unless round r exists in this schedule and round r-1 has finished."""
    if not 0 <= r < cfg.num_rounds:
        raise UserError(
            f"round {r} does not exist: with start_steps={cfg.start_steps} the rounds are 0..{cfg.num_rounds - 1} "
            f"(round 0 = stage 1 at {cfg.start_steps} steps, round {cfg.num_rounds - 1} = 1 step)"
        )
    if r > 0 and not is_finished(root, r - 1):
        raise UserError(
            f"round {r} needs round {r - 1} finished first, but {round_dir(root, r - 1)} holds no finished "
            f"student; run `ddss distill --teacher {cfg.teacher or '...'} --round {r - 1}` (or --until {cfg.steps_of(r)})"
        )


def rounds_until(cfg: DistillConfig, steps: int) -> range:
    """The rounds that make a student of `steps` sampling steps: 0 .. log2(start_steps / steps)."""
    if steps < 1 or steps > cfg.start_steps or cfg.start_steps % steps or steps & (steps - 1):
        raise UserError(
            f"--until {steps}: the students have start_steps / 2^r steps, a power of two in [1, {cfg.start_steps}]"
        )
    return range(0, cfg.start_steps.bit_length() - steps.bit_length() + 1)


def round_record(cfg: DistillConfig, r: int) -> dict:
    """What round r's config.yaml holds: the config, the round index and its step counts."""
    return {"round": r, "steps": cfg.steps_of(r), "teacher_steps": 2 * cfg.steps_of(r) if r else cfg.steps_of(0),
            "distill": to_dict(cfg)}


def prepare_round(cfg: DistillConfig, root: str, r: int) -> str:
    """Round r's run directory, created with its config.yaml, or reopened to resume when its
    config.yaml matches; a directory written by another config is refused with one line, and so
    is cfg if another round recorded another config (checked again here, under the round's lock)."""
    check_chain(cfg, root)
    d = round_dir(root, r)
    record = round_record(cfg, r)
    if os.path.isfile(os.path.join(d, rundir.CONFIG)):
        check_resume(rundir.read_config(d), record, tuple(f"distill.{k}" for k in MAY_DIFFER), d,
                     hint="it was started with another config: resume it with the same config or pass --dir "
                          "for a new distillation")
        return d
    d = rundir.prepare(d)
    rundir.write_config(d, record)
    return d
