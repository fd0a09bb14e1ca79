"""What one evaluation is, and the one sample-index convention every sampler run here follows.

Sample i depends only on (key, i): k_i = fold_in(key, i) gives x_T (from fold_in(k_i, 0)), the
sampler's per-sample noise key (fold_in(k_i, 1)) and, for a class-conditional model, the label
i % num_classes. Evaluations use key(seed); DDSS search draws its chains the same way. Indices
are processed in fixed blocks of `batch_size` aligned at multiples of it (the last one padded),
so a block is the same computation whichever worker runs it.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from pipeline.errors import UserError


def sample_keys(key, idx):
    """(x_T key, sampler noise key) of each sample index in idx [B]: k_i = fold_in(key, i)."""
    import jax

    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)
    return jax.vmap(lambda k: (jax.random.fold_in(k, 0), jax.random.fold_in(k, 1)))(keys)


def sample_inputs(key, idx, data_shape, num_classes: int):
    """(x_T [B, *data_shape], noise keys [B], labels [B] or None) of sample indices idx [B]:
    x_T ~ N(0, I) from fold_in(k_i, 0), label i % num_classes (None when unconditional)."""
    import jax
    import jax.numpy as jnp

    kx, kn = sample_keys(key, idx)
    x_T = jax.vmap(lambda k: jax.random.normal(k, tuple(data_shape), jnp.float32))(kx)
    y = (idx % num_classes).astype(jnp.int32) if num_classes else None
    return x_T, kn, y


@dataclasses.dataclass(frozen=True)
class Plan:
    """What an artefact changes in the sampling of the teacher.

    kwargs: extra sampler keyword arguments (e.g. {"params": ggdm_params});
    grid: an explicit decreasing time grid of steps+1 times (default: time_grid(steps, stride,
    t_max=t_max) of the spec; a grid given here ignores the spec's stride and t_max);
    eps_fn: a denoiser factory (y, w) -> eps_fn(x, t) replacing model.eps_fn (a distilled student);
    steps: the step count the artefact was made for (None: any; else --steps must match);
    w: the guidance weight it was made for (used when the evaluation gives none);
    clip_x0: the x0 clipping it was made with, which it is always run with (None: the spec's).
    """

    kwargs: dict = dataclasses.field(default_factory=dict)
    grid: Any = None
    eps_fn: Callable | None = None
    steps: int | None = None
    w: float | None = None
    clip_x0: bool | None = None


def split_sampler(sampler: str) -> tuple[str, str | None]:
    """"NAME:ARTEFACT" -> (NAME, ARTEFACT); "NAME" -> (NAME, None)."""
    name, sep, artefact = sampler.partition(":")
    if sep and not artefact:
        raise UserError(f"sampler {sampler!r}: nothing after ':' (expected NAME:ARTEFACT)")
    return name, (artefact if sep else None)


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """One evaluation: `num_samples` samples of `sampler` (NAME or NAME:ARTEFACT) at `steps`.

    stride, t_max: the time grid, schedules.time_grid(steps, stride, t_max=t_max) (x_T ~ N(0, I)
    stands for the state at its first time); an artefact that brings its own times (a Plan's grid,
    GGDM's parameters) ignores both. clip_x0: the model's data prediction clipped to [-1, 1]
    (the teacher's and a student's eps_fn(y, w, clip_x0=...)); a model whose eps_fn takes no
    clip_x0 (an analytic mixture) is exact and never clipped, so it ignores it.
    plan: for NAME:ARTEFACT, a picklable loader model -> Plan that reads the artefact (built by
    pipeline.app.artefacts.eval_spec, which knows the methods); None: the sampler takes none.
    """

    problem: Any  # pipeline.evaluation.problems.Problem
    sampler: str
    steps: int
    num_samples: int
    seed: int = 0
    stride: str = "quadratic"
    t_max: float = 1.0
    clip_x0: bool = True
    w: float | None = None
    batch_size: int = 100
    kid_samples: int | None = None  # KID on the first kid_samples samples (None: all)
    plan: Callable[[Any], Plan] | None = None

    def validate(self):
        split_sampler(self.sampler)
        if self.steps < 1:
            raise UserError(f"--steps must be >= 1, got {self.steps}")
        if self.num_samples < 2:
            raise UserError(f"--num-samples must be >= 2 (KID needs two samples), got {self.num_samples}")
        if self.batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {self.batch_size}")
        if self.kid_samples is not None and self.kid_samples < 2:
            raise UserError(f"kid_samples must be >= 2, got {self.kid_samples}")
        if not isinstance(self.clip_x0, bool):
            raise UserError(f"clip_x0 must be true or false, got {self.clip_x0!r}")
        from pipeline.schedules import check_t_max

        check_t_max(self.t_max)
        return self

    @property
    def num_blocks(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    @property
    def num_kid(self) -> int:
        return self.num_samples if self.kid_samples is None else min(self.kid_samples, self.num_samples)

    def block_range(self, b: int) -> tuple[int, int]:
        """Sample indices [start, stop) of block b."""
        return b * self.batch_size, min((b + 1) * self.batch_size, self.num_samples)


@dataclasses.dataclass
class RangeResult:
    """What a worker returns for blocks [block_start, block_stop): features of the samples
    with index < spec.num_kid (in index order) and the FeatureMoments of each block."""

    block_start: int
    block_stop: int
    features: np.ndarray
    moments: list
    cpu_s: float = 0.0  # CPU time the worker process spent on it


def ranges(spec: EvalSpec, blocks_per_range: int = 1) -> list[tuple[int, int]]:
    """The work units: consecutive block ranges [b0, b1) covering all blocks."""
    n = spec.num_blocks
    return [(b, min(b + blocks_per_range, n)) for b in range(0, n, blocks_per_range)]
