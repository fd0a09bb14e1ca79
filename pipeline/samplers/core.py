"""The sampler registry and the one chain driver: a `lax.scan` over the steps of a time grid.

A sampler is registered with `@register(name, nfe=...)` as a function

    run(eps_fn, sched, x_T, grid, key, **params) -> (x_0, bad_step)

that builds its step and calls `scan_chain`. `sample()` is the public entry point: it makes
the grid, jits the run, and turns non-finite output into an error naming the step.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

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
    _load_all()
    return sorted(_REGISTRY)


def get(name: str) -> Sampler:
    _load_all()
    choose("sampler", name, sorted(_REGISTRY))
    return _REGISTRY[name]


def nfe(name: str, steps: int) -> int:
    """Model evaluations one sample costs with sampler `name` at `steps` steps."""
    schedules.time_grid(steps, "linear")  # validates steps
    return int(get(name).nfe(steps))


def _load_all():
    # Sampler modules register themselves on import; import them here so that the
    # registry is complete whatever the caller imported first.
    from pipeline.samplers import _modules  # noqa: F401


# ----------------------------------------------------------------------------------------
# The chain driver.


def bcast(v, x):
    """Reshape a per-sample [B] (or scalar) coefficient to broadcast against x [B, ...]."""
    v = jnp.asarray(v, x.dtype)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def batch_times(t, x):
    """The [B] vector of time t for the batch x (eps_fn takes t: [B])."""
    return jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])


def noise_like(key, i, x):
    """Standard normal noise of x's shape for step i. `key` is one key, or one key per sample
    (shape [B]): then sample b's noise depends only on its own key, so results do not depend
    on how a batch is split across workers."""
    key = _as_typed(key)
    if key.ndim == 0:
        return jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), x.shape[1:], x.dtype))(key)


def split_noise(key, i, x, n: int):
    """n independent noises for step i (for samplers that draw more than once per step)."""
    return [noise_like(_fold(key, 1_000_003 * (j + 1)), i, x) for j in range(n)]


def _fold(key, d):
    key = _as_typed(key)
    if key.ndim == 0:
        return jax.random.fold_in(key, d)
    return jax.vmap(lambda k: jax.random.fold_in(k, d))(key)


def _as_typed(key):
    if key is None:
        raise UserError("this sampler is stochastic: pass key=jax.random.key(seed)")
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


def scan_chain(step: Callable, state: Any, grid, remat: bool = False):
    """Run `state = step(state, i, t, s)` for i = 0..K-1 over (t, s) = (grid[i], grid[i+1]).

    `state` is a pytree whose "x" entry is the current sample. Returns (state, bad) where
    bad is the first step (1-based) after which x was non-finite, or 0 if none was.
    With remat=True the step is rematerialised in the backward pass (jax.checkpoint), so
    memory does not grow with K beyond the carried state.
    """
    grid = jnp.asarray(grid)
    K = grid.shape[0] - 1
    body = jax.checkpoint(step) if remat else step

    def scan_fn(carry, inp):
        state, bad = carry
        i, t, s = inp
        state = body(state, i, t, s)
        finite = jnp.all(jnp.isfinite(state["x"]))
        bad = jnp.where((bad == 0) & ~finite, (i + 1).astype(bad.dtype), bad)
        return (state, bad), None

    (state, bad), _ = jax.lax.scan(scan_fn, (state, jnp.int32(0)), (jnp.arange(K, dtype=jnp.int32), grid[:-1], grid[1:]))
    return state, bad


# ----------------------------------------------------------------------------------------
# Public entry point.


@functools.partial(jax.jit, static_argnames=("name", "eps_fn", "sched", "static_kw"))
def _run_jit(name, eps_fn, sched, x_T, grid, key, dyn_kw, static_kw):
    return _REGISTRY[name].run(eps_fn, sched, x_T, grid, key, **dyn_kw, **dict(static_kw))


def run(name, eps_fn, sched, x_T, grid, key=None, **kw):
    """Run sampler `name` over an explicit grid without jit or divergence checks (for use
    inside jitted or differentiated code). Returns (x_0, bad_step), bad_step 0 if finite."""
    return get(name).run(eps_fn, sched, x_T, grid, key, **kw)


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
