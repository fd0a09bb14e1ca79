"""Training-free baselines: DDPM (ancestral), DDIM, DPM-Solver++(2M), iPNDM."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from pipeline.samplers.chain import coeffs, eps_at, noise_like, scan_chain
from pipeline.samplers.registry import register
from pipeline.samplers.steps import data_step, ddim_step, x0_from_eps


def _ddim_chain(eps_fn, sched, x_T, grid, key, eta: float):
    def step(state, i, t, s):
        x = state["x"]
        z = noise_like(key, i, x) if eta > 0 else None
        return {"x": ddim_step(x, eps_at(eps_fn, x, t), *coeffs(sched, t, s), eta=eta, z=z)}

    state, bad = scan_chain(step, {"x": x_T}, grid)
    return state["x"], bad


@register("ddim")
def ddim(eps_fn, sched, x_T, grid, key=None, eta: float = 0.0):
    """DDIM (Song et al. 2021, eq. 12); eta = 0 is deterministic, eta > 0 needs a key."""
    return _ddim_chain(eps_fn, sched, x_T, grid, key, eta)


@register("ddpm", stochastic=True)
def ddpm(eps_fn, sched, x_T, grid, key=None):
    """DDPM ancestral sampling (Ho et al. 2020, eq. 11) on the grid: DDIM with eta = 1."""
    return _ddim_chain(eps_fn, sched, x_T, grid, key, 1.0)


@register("dpm-solver++2m")
def dpm_solver_pp_2m(eps_fn, sched, x_T, grid, key=None):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): multistep data prediction, first-order first
    and last steps (the last step may reach logsnr = +inf, where h is infinite)."""
    K = grid.shape[0] - 1

    def step(state, i, t, s):
        x = state["x"]
        a_t, s_t, a_s, s_s = coeffs(sched, t, s)
        x0 = x0_from_eps(x, eps_at(eps_fn, x, t), a_t, s_t)
        h = 0.5 * (sched.logsnr(s) - sched.logsnr(t))  # lambda = log(alpha / sigma)
        second = (i > 0) & (i < K - 1)
        r = jnp.where(second, state["h_prev"] / jnp.where(second, h, 1.0), 1.0)
        c = jnp.where(second, 0.5 / r, 0.0)
        d = (1.0 + c) * x0 - c * state["x0_prev"]
        return {"x": data_step(x, d, a_t, s_t, a_s, s_s), "x0_prev": x0, "h_prev": jnp.where(second | (i == 0), h, 0.0)}

    init = {"x": x_T, "x0_prev": jnp.zeros_like(x_T), "h_prev": jnp.zeros((), x_T.dtype)}
    state, bad = scan_chain(step, init, grid)
    return state["x"], bad


# Adams-Bashforth weights of iPNDM's eps combination, by order 1..4 (row), for
# [eps_i, eps_{i-1}, eps_{i-2}, eps_{i-3}] (Zhang & Chen 2023, DEIS, eq. 28; Liu et al. 2022, PNDM eq. 12).
IPNDM_WEIGHTS = np.array(
    [
        [1.0, 0.0, 0.0, 0.0],
        [3.0 / 2, -1.0 / 2, 0.0, 0.0],
        [23.0 / 12, -16.0 / 12, 5.0 / 12, 0.0],
        [55.0 / 24, -59.0 / 24, 37.0 / 24, -9.0 / 24],
    ]
)


@register("ipndm")
def ipndm(eps_fn, sched, x_T, grid, key=None):
    """iPNDM: a DDIM step with the Adams-Bashforth combination of the last four eps
    predictions, lower orders while the history fills (Zhang & Chen 2023)."""

    def step(state, i, t, s):
        x = state["x"]
        hist = jnp.concatenate([eps_at(eps_fn, x, t)[None], state["eps_hist"][:-1]])
        w = jnp.asarray(IPNDM_WEIGHTS, x.dtype)[jnp.minimum(i, 3)]
        eps = jnp.tensordot(w, hist, axes=1)
        return {"x": ddim_step(x, eps, *coeffs(sched, t, s)), "eps_hist": hist}

    init = {"x": x_T, "eps_hist": jnp.zeros((4,) + x_T.shape, x_T.dtype)}
    state, bad = scan_chain(step, init, grid)
    return state["x"], bad
