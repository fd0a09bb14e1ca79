"""A deterministic training-free sampler as exact GGDM parameters, so a DDSS search can start from it.

Every deterministic sampler here (DDIM, accel-ddim, DPM-Solver++, UniPC, iPNDM) is, on a fixed time
grid, a linear map of x_T and the model's data predictions x0_hat_0..x0_hat_{K-1}: its steps only
mix states with the predictions (or with eps = (x - alpha x0_hat) / sigma, which is linear in them).
`trace` runs the sampler once, eagerly, on a symbolic problem: the state is a coefficient vector on
the basis (x_T, x0_hat_0, ..., x0_hat_{K-1}), and the n-th model call answers "x0_hat = basis vector
n" in eps form, so the sampler's own arithmetic gives each model input and the output in that basis.
`ggdm_params` reads GGDM's mixing weights off those vectors (Watson et al. 2022, eq. 10: the states
x_j of GGDM are the points where the model is called); DDSS then learns from exactly that sampler.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pipeline import schedules
from pipeline.errors import UserError, choose
from pipeline.samplers import ggdm, registry

STARTS = ("ddim", "accel-ddim", "dpm-solver++2m", "dpm-solver++3m", "unipc-2", "unipc-3", "ipndm")  # what a search may start from
TOL = 1e-6  # float64: how far a traced sampler may stray from GGDM's structure before it is refused


def trace(name: str, sched, grid) -> tuple[np.ndarray, np.ndarray]:
    """(tau [K]: the times of the sampler's K model calls, S [K+1, K+1]: row j < K the j-th call's
    input, row K the output, on the basis (x_T, x0_hat_0..x0_hat_{K-1})), computed in float64."""
    sampler = registry.get(name)
    grid = np.asarray(grid, np.float64)
    K = grid.shape[0] - 1
    if sampler.stochastic:
        raise UserError(f"sampler {name!r} is stochastic: only a deterministic sampler is a fixed GGDM mixing to start from")
    calls = []

    def eps_fn(x, t):
        n = len(calls)
        if n >= K:
            raise UserError(f"sampler {name!r} calls the model more than once per step ({K} steps): GGDM makes one call a step")
        calls.append((float(t[0]), np.asarray(x[0], np.float64)))
        x0 = jnp.zeros_like(x).at[:, 1 + n].set(1.0)
        return (x - sched.alpha(t)[:, None] * x0) / sched.sigma(t)[:, None]

    with jax.enable_x64(True), jax.disable_jit():
        x_T = jnp.zeros((1, K + 1), jnp.float64).at[0, 0].set(1.0)
        out, _ = registry.run(name, eps_fn, sched, x_T, jnp.asarray(grid, jnp.float64))
    if len(calls) != K:
        raise UserError(f"sampler {name!r} called the model {len(calls)} times on {K} steps: GGDM makes one call a step")
    tau = np.array([t for t, _ in calls])
    return tau, np.stack([x for _, x in calls] + [np.asarray(out[0], np.float64)])


def ggdm_params(name: str, K: int, variant: str = "ggdm+pred+time", sched="cosine", stride: str = "linear",
                t_max: float = 1.0, dtype=jnp.float32) -> dict:
    """GGDM parameters (noise-free) that run sampler `name` exactly on time_grid(K, stride, sched, t_max):
    +PRED: x_{i+1} = r_i x_i + sum_{j<=i} mu_pred[i, j] x0_hat_j, r_i the ratio of x_T's coefficients;
    plain GGDM: the states' and the latest prediction's weights solving the same equation. UserError
    if the sampler is not one GGDM mixing (stochastic, several calls a step, or marginals that differ
    from the schedule's, which GGDM's predictions assume)."""
    choose("GGDM variant", variant, ggdm.VARIANTS)
    if isinstance(sched, str):
        sched = schedules.get(sched)
    grid = schedules.time_grid(K, stride, sched, t_max)
    tau, S = trace(name, sched, grid)
    if np.any(np.diff(tau) >= 0) or not np.isclose(tau[0], grid[0]):
        raise UserError(f"sampler {name!r} calls the model at times {tau.tolist()}: GGDM needs decreasing times from {grid[0]}")
    mu_x, mix = np.zeros((K, K)), np.zeros((K, K))
    for i in range(K):
        target = S[i + 1]
        if "pred" in variant:
            mu_x[i, i] = target[0] / S[i, 0]
            mix[i] = (target - mu_x[i, i] * S[i])[1:]
            residual = np.max(np.abs(mix[i, i + 1:]), initial=0.0)
        else:  # states x_0..x_i and the latest prediction
            basis = np.concatenate([S[: i + 1].T, np.eye(K + 1)[:, [1 + i]]], axis=1)
            w = np.linalg.lstsq(basis, target, rcond=None)[0]
            mu_x[i, : i + 1], mix[i, i] = w[:-1], w[-1]
            residual = np.max(np.abs(basis @ w - target))
        if residual > TOL * max(1.0, np.max(np.abs(target))):
            raise UserError(f"sampler {name!r} is not a {variant} mixing: step {i} uses later predictions "
                            f"or more than the latest one (off by {residual:.2g}); try a +pred variant")
    params = {"mu_x": mu_x, "sigma": np.zeros(K)}
    if "pred" in variant:
        params["mu_pred"] = mix
    else:
        params["mu_x0"] = np.diag(mix).copy()
    times = np.append(tau, 0.0)
    if "time" in variant:
        params.update(ggdm.time_params(times))
    else:
        params["times"] = tau
    with jax.enable_x64(True):
        _check_marginals(name, sched, tau, {k: jnp.asarray(v, jnp.float64) for k, v in params.items()})
    return {k: jnp.asarray(v, dtype) for k, v in params.items()}


def _check_marginals(name: str, sched, tau, params):
    """UserError unless GGDM's marginals of `params` (ggdm.marginals), which its predictions divide by,
    are the schedule's at the model times, which the sampler divides by."""
    a, sqrt_v = ggdm.marginals(params, sched)
    off = max(np.max(np.abs(np.asarray(a) - np.asarray(sched.alpha(tau)))),
              np.max(np.abs(np.asarray(sqrt_v) - np.asarray(sched.sigma(tau)))))
    if off > 1e-5:
        raise UserError(f"sampler {name!r} is not consistent with the schedule's marginals (off by {off:.2g}): "
                        "GGDM cannot start from it")
