"""Samplers for a distilled (w-conditioned) student: deterministic DDIM and Meng et al.'s
N-step stochastic sampler.

Guidance w, labels and parameters are closed over by the eps_fn the caller builds
(`pipeline.distill.student.student_eps_fn(...)`), as for every sampler here: a student's
eps_fn(x, t) is already guided, costs one model evaluation, and takes no `w=` argument.
Use the grid the student was distilled on (its stride; see `pipeline.distill`): a student of
round r was trained for exactly the steps of that grid.
"""
from __future__ import annotations

import jax.numpy as jnp

from pipeline.samplers.chain import coeffs, eps_at, noise_like, scan_chain
from pipeline.samplers.registry import register
from pipeline.samplers.steps import data_step, forward_noise, x0_from_eps


def _x_hat(eps_fn, sched, x, t):
    """The student's x-prediction x0_hat(z_t) (Ho et al. 2020, eq. 15)."""
    return x0_from_eps(x, eps_at(eps_fn, x, t), sched.alpha(t), sched.sigma(t))


@register("student-ddim")
def student_ddim(eps_fn, sched, x_T, grid, key=None):
    """Deterministic DDIM with the student's x-prediction, returning x0_hat at the last step
    (Salimans & Ho 2022, Alg. 2 sampler; Meng et al. 2023, sec. 4.3); one evaluation per step."""
    K = grid.shape[0] - 1

    def step(state, i, t, s):
        x = state["x"]
        x0 = _x_hat(eps_fn, sched, x, t)
        return {"x": jnp.where(i == K - 1, x0, data_step(x, x0, *coeffs(sched, t, s)))}

    state, bad = scan_chain(step, {"x": x_T}, grid)
    return state["x"], bad


@register("student-stochastic", stochastic=True)
def student_stochastic(eps_fn, sched, x_T, grid, key=None):
    """Meng et al. 2023, sec. 4.3: from t, a deterministic step two grid steps ahead to k, then back
    to s (one step ahead of t) with forward noise, z_s = (alpha_s/alpha_k) z_k +
    sqrt((1 - exp(lambda_s - lambda_k)) sigma_s^2) eps; the last step is deterministic and returns
    x0_hat. One evaluation per step."""
    grid = jnp.asarray(grid)
    K = grid.shape[0] - 1

    def step(state, i, t, s):
        x = state["x"]
        k = grid[jnp.minimum(i + 2, K)]
        x0 = _x_hat(eps_fn, sched, x, t)
        a_t, s_t, a_k, s_k = coeffs(sched, t, k)
        x_k = data_step(x, x0, a_t, s_t, a_k, s_k)
        x_s = forward_noise(x_k, a_k, s_k, sched.alpha(s), sched.sigma(s), noise_like(key, i, x))
        return {"x": jnp.where(i == K - 1, x0, x_s)}

    state, bad = scan_chain(step, {"x": x_T}, grid)
    return state["x"], bad
