"""The sampler registry and the public entry points `sample` (jitted, checked) and `run`.

A sampler is registered with `@register(name, nfe=...)` as a function

    run(eps_fn, sched, x_T, grid, key, **params) -> (x_0, bad_step)

that builds its step and calls `chain.scan_chain`. This module imports no sampler family:
`pipeline.samplers` imports them, so the registry is full once that package is imported.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from pipeline import schedules
from pipeline.errors import UserError, choose


class SamplerDiverged(RuntimeError):
    """A sampler produced non-finite values."""


@dataclasses.dataclass(frozen=True)
class Sampler:
    name: str
    run: Callable
    nfe: Callable[[int], int]
    stochastic: bool
    doc: str


_REGISTRY: dict[str, Sampler] = {}


def register(name: str, nfe: Callable[[int], int] = lambda k: k, stochastic: bool = False):
    """Register `run` under `name`; `nfe(K)` is the number of model evaluations per sample."""

    def deco(run):
        # run(eps_fn, sched, x_T, grid, key, **params) -> (x_0, bad_step)
        _REGISTRY[name] = Sampler(name, run, nfe, stochastic, (run.__doc__ or "").strip().split("\n")[0])
        return run

    return deco


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> Sampler:
    choose("sampler", name, sorted(_REGISTRY))
    return _REGISTRY[name]


def nfe(name: str, steps: int) -> int:
    """Model evaluations one sample costs with sampler `name` at `steps` steps."""
    schedules.time_grid(steps, "linear")  # validates steps
    return int(get(name).nfe(steps))


def run(name, eps_fn, sched, x_T, grid, key=None, **kw):
    """Run sampler `name` over an explicit grid without jit or divergence checks (for use
    inside jitted or differentiated code). Returns (x_0, bad_step), bad_step 0 if finite."""
    return get(name).run(eps_fn, sched, x_T, grid, key, **kw)


@functools.partial(jax.jit, static_argnames=("name", "eps_fn", "sched", "static_kw"))
def _run_jit(name, eps_fn, sched, x_T, grid, key, dyn_kw, static_kw):
    return _REGISTRY[name].run(eps_fn, sched, x_T, grid, key, **dyn_kw, **dict(static_kw))


def sample(name: str, eps_fn: Callable, sched, x_T, steps: int, key=None, stride: str = "quadratic",
           grid=None, **kw):
    """Draw samples x_0 from x_T with sampler `name` in `steps` steps.

    `eps_fn(x, t) -> eps` with t: [B]. `key`: one PRNG key or one per sample (stochastic
    samplers). `grid`: an explicit decreasing grid of steps+1 times (default: `time_grid`).
    Extra keyword arguments go to the sampler (e.g. eta=, params=, w=). Raises
    SamplerDiverged naming the sampler and the step if the chain becomes non-finite.
    """
    sampler = get(name)
    if isinstance(sched, str):
        sched = schedules.get(sched)
    if grid is None:
        grid = schedules.time_grid(steps, stride, sched)
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 1 or grid.shape[0] != steps + 1:
        raise UserError(f"grid must have steps+1 = {steps + 1} times, got shape {grid.shape}")
    if sampler.stochastic and key is None:
        raise UserError(f"sampler {name!r} is stochastic: pass key=jax.random.key(seed)")
    x_T = jnp.asarray(x_T)
    dyn_kw = {k: v for k, v in kw.items() if _is_array_tree(v)}
    static_kw = tuple(sorted((k, v) for k, v in kw.items() if k not in dyn_kw))
    x0, bad = _run_jit(name, eps_fn, sched, x_T, jnp.asarray(grid, x_T.dtype), key, dyn_kw, static_kw)
    bad = int(bad)
    if bad:
        raise SamplerDiverged(f"sampler {name!r} produced non-finite values at step {bad} of {steps}")
    return x0


def _is_array_tree(v) -> bool:
    leaves = jax.tree_util.tree_leaves(v)
    return bool(leaves) and all(isinstance(l, (jax.Array, np.ndarray)) for l in leaves)
