"""The chain driver every sampler uses: a `lax.scan` over the steps of a time grid, and the
helpers its steps share (coefficient broadcasting, per-step noise, schedule coefficients).

A step goes from grid time t to the next, less noisy time s < t (see `steps`).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from pipeline.errors import UserError


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


def coeffs(sched, t, s):
    """(alpha_t, sigma_t, alpha_s, sigma_s) at the two ends of a step."""
    return sched.alpha(t), sched.sigma(t), sched.alpha(s), sched.sigma(s)


def eps_at(eps_fn, x, t):
    """The model's eps prediction for the batch x at the scalar time t."""
    return eps_fn(x, batch_times(t, x))


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
