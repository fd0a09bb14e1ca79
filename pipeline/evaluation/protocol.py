"""The fair-comparison protocol, in one place (issue 14): a training-free sampler's settings
(time grid, first time t_max, x0 clipping) are chosen on validation seeds, its number is
reported on separate test seeds as mean ± std, and one method is called better than another
only where the gap exceeds `SPREADS` standard deviations of the difference.

Pure functions of scores; `tune` takes a score callback, so the same protocol drives
bench/fair.py (in-process) and `ddss evaluate --tune` (on the Ray pool).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable, Sequence

import numpy as np

from pipeline.errors import UserError

SPREADS = 2.0  # "better" needs a gap above this many std of the difference
MIN_SEEDS = 3  # every reported number: mean ± std over at least this many evaluation seeds
VALIDATION_SEEDS = (1000, 1001)  # settings are chosen on these; never reported
TEST_SEEDS = (0, 1, 2)  # numbers are reported on these
T_MAX = (1.0, 0.99, 0.97)  # first times tried (1.0: the grid starts at pure noise)


@dataclasses.dataclass(frozen=True, order=True)
class Setting:
    """How a training-free sampler is run: its time grid (schedules.STRIDES), first time, clipping."""

    stride: str = "quadratic"
    t_max: float = 1.0
    clip_x0: bool = True

    @property
    def label(self) -> str:
        extra = ("" if self.t_max == 1.0 else f", t_max {self.t_max:g}") + ("" if self.clip_x0 else ", unclipped")
        return f"{self.stride}{extra}"


@dataclasses.dataclass(frozen=True)
class Stat:
    """mean ± std (sample std, ddof = 1; 0 for one value) of n numbers."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4g} ± {self.std:.2g}"


def summary(values: Iterable[float]) -> Stat:
    """Stat of the finite values (a non-finite value, a diverged run, makes the mean inf)."""
    v = np.asarray(list(values), np.float64)
    if v.size == 0:
        raise UserError("no values to summarise")
    if not np.all(np.isfinite(v)):
        return Stat(math.inf, math.inf, int(v.size))
    return Stat(float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size))


def gap_spread(a: Stat, b: Stat) -> float:
    """The std of the difference of the two means' underlying draws: sqrt(std_a^2 + std_b^2)."""
    return math.hypot(a.std, b.std)


def better(a: Stat, b: Stat, spreads: float = SPREADS) -> bool:
    """a is better (lower) than b: b.mean - a.mean > spreads * sqrt(std_a^2 + std_b^2)."""
    if not math.isfinite(a.mean):
        return False
    if not math.isfinite(b.mean):
        return True
    return b.mean - a.mean > spreads * gap_spread(a, b)


def verdict(a: Stat, b: Stat, spreads: float = SPREADS) -> str:
    """"better", "worse" or "tie" (within the spread) of a against b."""
    return "better" if better(a, b, spreads) else "worse" if better(b, a, spreads) else "tie"


def ratio(a: Stat, b: Stat) -> float:
    """b.mean / a.mean: how many times lower a is than b."""
    return b.mean / a.mean if a.mean > 0 else math.inf


def check_seeds(validation: Sequence[int], test: Sequence[int], min_test: int = MIN_SEEDS):
    """One line unless there are validation seeds and >= min_test test seeds, all distinct."""
    if not validation:
        raise UserError("tuning needs at least one validation seed")
    if len(test) < min_test:
        raise UserError(f"report on at least {min_test} test seeds (got {len(test)}): every number is a mean ± std")
    if len(set(validation) | set(test)) != len(validation) + len(test):
        raise UserError(f"validation seeds {list(validation)} and test seeds {list(test)} must be distinct "
                        "(settings chosen on a seed are not reported on it)")


@dataclasses.dataclass(frozen=True)
class Tuned:
    """The chosen setting and every validation score that chose it (setting -> Stat)."""

    setting: Setting
    tried: dict

    @property
    def score(self) -> Stat:
        return self.tried[self.setting]


def tune(score: Callable[[Setting, int], float], strides: Sequence[str], seeds: Sequence[int],
         t_maxes: Sequence[float] = T_MAX, clips: Sequence[bool] = (True, False),
         start: Setting = Setting()) -> Tuned:
    """Coordinate search on validation seeds: the best stride (t_max and clipping as in `start`),
    then the best t_max on it, then clipping; `score(setting, seed)` -> a number to minimise.
    The lowest mean wins; ties keep the earlier candidate."""
    batch = lambda todo: [score(setting, seed) for _, setting, seed in todo]  # noqa: E731
    return tune_all(batch, {None: start}, strides, seeds, t_maxes, clips)[None]


def tune_all(score_batch: Callable[[list], list], starts: dict, strides: Sequence[str], seeds: Sequence[int],
             t_maxes: Sequence[float] = T_MAX, clips: Sequence[bool] = (True, False)) -> dict:
    """`tune` for many independent items at once (key -> start Setting), each coordinate stage
    scored in one batch: score_batch([(key, setting, seed), ...]) -> [number, ...] (e.g. all of a
    stage's evaluations together on a pool). Returns key -> Tuned."""
    if not seeds:
        raise UserError("tuning needs at least one validation seed")
    tried: dict = {key: {} for key in starts}
    best = dict(starts)

    def stage(candidates_of):
        cands = {key: list(dict.fromkeys(candidates_of(best[key]))) for key in starts}
        todo = [(key, c, seed) for key, cs in cands.items() for c in cs if c not in tried[key] for seed in seeds]
        scores = score_batch(todo) if todo else []
        for key, c in dict.fromkeys((key, c) for key, c, _ in todo):
            tried[key][c] = summary(v for (k2, c2, _), v in zip(todo, scores) if (k2, c2) == (key, c))
        for key, cs in cands.items():
            best[key] = min(cs, key=lambda c: (tried[key][c].mean, cs.index(c)))

    stage(lambda b: [dataclasses.replace(b, stride=s) for s in strides])
    stage(lambda b: [b] + [dataclasses.replace(b, t_max=t) for t in t_maxes])
    stage(lambda b: [b] + [dataclasses.replace(b, clip_x0=c) for c in clips])
    return {key: Tuned(best[key], tried[key]) for key in starts}
