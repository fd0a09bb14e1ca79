"""Data-prediction multistep samplers: DPM-Solver++(3M), UniPC-2 and UniPC-3 (B(h) = e^h - 1, "bh2"), and the
machinery they share with DPM-Solver++(2M) (baseline.py).

Time is lambda = logsnr/2 = log(alpha/sigma). A step from lambda_0 over h is `steps.data_step` (DPM-Solver++ eq. 9
with x0 constant) fed with sum_j w_j x0_j, a combination of the model's x0 predictions at the history's nodes
r_j = (lambda_j - lambda_0)/h; the weights integrate the polynomial through those points (`steps.interp_weights`)
with the target moments of `moments`. A method is its number of nodes n and its moments:

  n = 1                          DDIM (every sampler's first and last step)
  n = 2, moments (1, 1/2)        DPM-Solver++(2M), UniP-2 and UniC-1 (rho = 1/2 in both official codes)
  n >= 3, steps.exp_moments      UniP-3, UniC-2, UniC-3 (UniPC's rho solving R rho = b: exact for x0 polynomial
                                 of degree n - 1 in lambda, local error O(h^{n+1}))
  n = 3, second moment halved    DPM-Solver++(3M) as in the official code and diffusers: its D2 term
                                 alpha_s (1/2 - (e^-h - 1 + h)/h^2) D2, D2 = h^2 f[lambda_0, lambda_1, lambda_2],
                                 carries half the exact x0'' term, so its local error is (h^3/12) x0'' + O(h^4):
                                 second order as h -> 0 (steeper only while the h^4 terms dominate, small K).
"""
from __future__ import annotations

import jax.numpy as jnp

from pipeline.samplers.chain import coeffs, eps_at, scan_chain
from pipeline.samplers.registry import register
from pipeline.samplers.steps import data_step, exp_moments, interp_weights, x0_from_eps


def lam(sched, t):
    """lambda = logsnr/2 = log(alpha/sigma), DPM-Solver's time variable (Lu et al. 2022, sec. 3.1)."""
    return 0.5 * sched.logsnr(t)


def step_order(i, K: int, order: int):
    """The number of x0 nodes step i of K uses: min(order, i + 1, K - i), lower while the history fills and on the
    last steps (the official codes' lower_order_final: the last step is first order and may reach lambda = +inf)."""
    return jnp.minimum(jnp.minimum(i + 1, K - i), order)


def moments(h, n, size: int, second: float = 1.0):
    """Target moments (zero-padded to `size`) of an n-node rule over a step of length h: (1, 1/2) for n <= 2,
    else steps.exp_moments with the second moment scaled by `second` (1/2 in DPM-Solver++(3M), module doc)."""
    exact = exp_moments(h, size)
    if size > 2 and second != 1.0:
        exact = exact.at[2].multiply(second)
    low = jnp.zeros(size, exact.dtype).at[0].set(1.0).at[1].set(0.5)
    return jnp.where(n <= 2, low, exact)


def history_x0(x0s, lams, lam_0, h, n, second: float = 1.0):
    """sum_j w_j x0s[j] over the first n history entries (newest first) for a step of length h from lambda_0, the
    nodes being r_j = (lams[j] - lambda_0)/h: the x0 a multistep data-prediction step feeds to data_step."""
    h = jnp.where(n > 1, h, 1.0)  # a one-node rule needs no h (the last step may have h = +inf)
    w = interp_weights((lams - lam_0) / h, moments(h, n, lams.shape[0], second), n)
    return jnp.tensordot(w.astype(x0s.dtype), x0s, axes=1)


def push(hist, v):
    """The history with v in front (newest first), the oldest entry dropped."""
    return jnp.concatenate([jnp.asarray(v, hist.dtype)[None], hist[:-1]])


def init_history(x_T, lam_T, size: int) -> dict:
    """An empty history: zero x0s at distinct lambdas below lambda_T (weights never reach them; the linear
    systems stay regular, so values and gradients stay finite)."""
    lams = lam_T - 1.0 - jnp.arange(size, dtype=x_T.dtype)
    return {"x0s": jnp.zeros((size,) + x_T.shape, x_T.dtype), "lams": lams.astype(x_T.dtype)}


def dpm_multistep(eps_fn, sched, x_T, grid, order: int, second: float = 1.0):
    """DPM-Solver++ multistep of the given order (Lu et al. 2022, Alg. 2 for order 2): one model call per step,
    x0 from the last step_order(i) predictions. Returns (x_0, bad_step)."""
    K = grid.shape[0] - 1

    def step(state, i, t, s):
        x = state["x"]
        a_t, s_t, a_s, s_s = coeffs(sched, t, s)
        lam_t = lam(sched, t)
        x0s = push(state["x0s"], x0_from_eps(x, eps_at(eps_fn, x, t), a_t, s_t))
        lams = push(state["lams"], lam_t)
        x0 = history_x0(x0s, lams, lam_t, lam(sched, s) - lam_t, step_order(i, K, order), second)
        return {"x": data_step(x, x0, a_t, s_t, a_s, s_s), "x0s": x0s, "lams": lams}

    init = {"x": x_T, **init_history(x_T, lam(sched, grid[0]), order)}
    state, bad = scan_chain(step, init, grid)
    return state["x"], bad


def unipc(eps_fn, sched, x_T, grid, order: int):
    """UniPC-p with data prediction and B(h) = e^h - 1 (Zhao et al. 2023, sec. 3): at each grid time the model's x0
    at the predicted sample first corrects the previous step (UniC-p: the same step redone from its start with that
    x0 as an extra node at r = 1), then starts the next step (UniP-p) from the corrected sample. The x0 kept in the
    history is the one at the predicted sample, so NFE = K; the last step is not corrected. Returns (x_0, bad_step)."""
    K = grid.shape[0] - 1

    def step(state, i, t, s):
        x_pred = state["x"]
        a_t, s_t, a_s, s_s = coeffs(sched, t, s)
        lam_t = lam(sched, t)
        x0s = push(state["x0s"], x0_from_eps(x_pred, eps_at(eps_fn, x_pred, t), a_t, s_t))
        lams = push(state["lams"], lam_t)
        x0_c = history_x0(x0s, lams, lams[1], lam_t - lams[1], state["n"] + 1)  # UniC: nodes r = 1, 0, r_2, ...
        x_c = data_step(state["x_start"], x0_c, *coeffs(sched, state["t"], t))
        x = jnp.where(i > 0, x_c, x_pred)
        n = step_order(i, K, order)
        x0_p = history_x0(x0s, lams, lam_t, lam(sched, s) - lam_t, n)  # UniP: nodes r = 0, r_1, ...
        return {"x": data_step(x, x0_p, a_t, s_t, a_s, s_s), "x_start": x, "t": t, "n": n, "x0s": x0s, "lams": lams}

    init = {"x": x_T, "x_start": x_T, "t": grid[0], "n": jnp.int32(1), **init_history(x_T, lam(sched, grid[0]), order + 1)}
    state, bad = scan_chain(step, init, grid)
    return state["x"], bad


@register("dpm-solver++3m")
def dpm_solver_pp_3m(eps_fn, sched, x_T, grid, key=None):
    """DPM-Solver++(3M) as in the official code and diffusers (Lu et al. 2022): third-order multistep data prediction,
    lower order while the history fills and on the last two steps; second order as h -> 0 (module docstring)."""
    return dpm_multistep(eps_fn, sched, x_T, grid, 3, second=0.5)


@register("unipc-2")
def unipc_2(eps_fn, sched, x_T, grid, key=None):
    """UniPC-2, bh2 (Zhao et al. 2023): UniP-2 predictor, UniC-2 corrector; third order (UniC-p adds one)."""
    return unipc(eps_fn, sched, x_T, grid, 2)


@register("unipc-3")
def unipc_3(eps_fn, sched, x_T, grid, key=None):
    """UniPC-3, bh2 (Zhao et al. 2023): UniP-3 predictor, UniC-3 corrector; fourth order (UniC-p adds one)."""
    return unipc(eps_fn, sched, x_T, grid, 3)
