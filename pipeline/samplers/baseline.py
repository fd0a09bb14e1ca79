"""Training-free baselines: DDPM (ancestral), DDIM, DPM-Solver++(2M), iPNDM."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from pipeline.samplers.chain import coeffs, eps_at, noise_like, scan_chain
from pipeline.samplers.multistep import dpm_multistep
from pipeline.samplers.registry import register
from pipeline.samplers.steps import ddim_step


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
    return dpm_multistep(eps_fn, sched, x_T, grid, 2)


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
    predictions, lower orders while the history fills (Zhang & Chen 2023).
    Its recommended grid: EDM's polynomial in sigma/alpha with rho = 7 (Zhou et al. 2024, "Fast ODE-based
    Sampling for Diffusion Models in Around 5 Steps", CVPR; DEIS's own code runs it on a time-uniform grid)."""

    def step(state, i, t, s):
        x = state["x"]
        hist = jnp.concatenate([eps_at(eps_fn, x, t)[None], state["eps_hist"][:-1]])
        w = jnp.asarray(IPNDM_WEIGHTS, x.dtype)[jnp.minimum(i, 3)]
        eps = jnp.tensordot(w, hist, axes=1)
        return {"x": ddim_step(x, eps, *coeffs(sched, t, s)), "eps_hist": hist}

    init = {"x": x_T, "eps_hist": jnp.zeros((4,) + x_T.shape, x_T.dtype)}
    state, bad = scan_chain(step, init, grid)
    return state["x"], bad
