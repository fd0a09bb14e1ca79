"""GGDM: the Generalized Gaussian Diffusion Model sampler family (Watson et al., ICLR 2022, sec. 4).

States x_0 = x_T (the noise, time 1), x_1, ..., x_K (the sample) on K steps. Step i draws

    x_{i+1} = sum_{j<=i} mu_x[i, j] x_j + sum_{j<=i} mu_pred[i, j] x0_hat_j + sigma[i] z_i,

a Gaussian whose mean mixes every previous (noisier) state and the model's x0 predictions
x0_hat_j = (x_j - sqrt(v_j) eps(x_j, tau_j)) / a_j, with (a_j, v_j) the marginal
q(x_j | x_0) = N(a_j x_0, v_j I) of the family's own forward process (the chain above with
x0_hat replaced by x_0). Variants (the parameter pytree's keys say which one it is):

    ggdm            mu_x [K, K] (lower triangle), mu_x0 [K] (latest prediction only),
                    sigma [K], times [K] (fixed model times, not learned)
    +pred           mu_pred [K, K] (lower triangle) replaces mu_x0: all previous predictions
    +time           time_logits [K] replaces times: learned, strictly decreasing model times
                    tau_j = 1 - sum_{k<j} softplus(l_k) / sum_k softplus(l_k)

`init_params` gives DDIM (or DDPM, eta = 1) on a time grid exactly: where DDSS search starts.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pipeline import schedules
from pipeline.errors import UserError, choose
from pipeline.samplers.core import batch_times, noise_like, register, scan_chain
from pipeline.samplers.steps import ddim_noise_std, x0_from_eps

VARIANTS = ("ggdm", "ggdm+pred", "ggdm+time", "ggdm+pred+time")
_LAYOUTS = {
    "ggdm": ("mu_x", "mu_x0", "sigma", "times"),
    "ggdm+pred": ("mu_x", "mu_pred", "sigma", "times"),
    "ggdm+time": ("mu_x", "mu_x0", "sigma", "time_logits"),
    "ggdm+pred+time": ("mu_x", "mu_pred", "sigma", "time_logits"),
}


def variant_of(params) -> str:
    """The GGDM variant whose parameter layout `params` has (UserError if none)."""
    keys = tuple(sorted(params))
    for name, layout in _LAYOUTS.items():
        if keys == tuple(sorted(layout)):
            return name
    raise UserError(f"not GGDM parameters: keys {list(keys)}; expected one of "
                    + "; ".join(f"{v}: {', '.join(sorted(k))}" for v, k in _LAYOUTS.items()))


def num_steps(params) -> int:
    """K, the number of steps (= model evaluations) of these parameters."""
    return int(np.shape(params["sigma"])[0])


def _softplus_inv(y):
    return y + np.log(-np.expm1(-y))


def init_params(K: int, variant: str = "ggdm", sched="cosine", stride: str = "quadratic", eta: float = 0.0,
                dtype=jnp.float32) -> dict:
    """Parameters that make GGDM exactly DDIM(eta) on time_grid(K, stride) (eta = 0: DDIM, 1: DDPM):
    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) (x_t - alpha_t x0_hat) / sigma_t + c z (Song et al. 2021, eq. 12)."""
    choose("GGDM variant", variant, VARIANTS)
    if isinstance(sched, str):
        sched = schedules.get(sched)
    grid = schedules.time_grid(K, stride, sched)
    a, s = np.asarray(sched.alpha(grid), np.float64), np.asarray(sched.sigma(grid), np.float64)
    c = np.asarray(ddim_noise_std(a[:-1], s[:-1], a[1:], s[1:], eta), np.float64)
    r = np.sqrt(np.clip(s[1:] ** 2 - c**2, 0.0, None)) / s[:-1]
    params = {"mu_x": np.diag(r), "sigma": c}
    if "pred" in variant:
        params["mu_pred"] = np.diag(a[1:] - a[:-1] * r)
    else:
        params["mu_x0"] = a[1:] - a[:-1] * r
    if "time" in variant:
        params["time_logits"] = _softplus_inv(-np.diff(grid))
    else:
        params["times"] = grid[:-1]
    return {k: jnp.asarray(v, dtype) for k, v in params.items()}


def times_from_logits(logits):
    """The K+1 strictly decreasing times 1 = tau_0 > ... > tau_K = 0 of +TIME: cumulative softplus
    increments normalised to [0, 1] (DDSS's learned timesteps, Watson et al. 2022, sec. 5)."""
    inc = jax.nn.softplus(logits)
    u = jnp.concatenate([jnp.zeros((1,), inc.dtype), jnp.cumsum(inc)]) / jnp.sum(inc)
    return 1.0 - u


def model_times(params):
    """The K times tau_0..tau_{K-1} at which the model is evaluated (fixed unless +TIME)."""
    if "time_logits" in params:
        return times_from_logits(params["time_logits"])[:-1]
    return jax.lax.stop_gradient(params["times"])


def mixing(params):
    """(mu_x, mu_pred) as [K, K] lower-triangular matrices (mu_pred diagonal without +PRED)."""
    K = num_steps(params)
    mask = jnp.tril(jnp.ones((K, K), params["mu_x"].dtype))
    mu_pred = params["mu_pred"] * mask if "mu_pred" in params else jnp.diag(params["mu_x0"])
    return params["mu_x"] * mask, mu_pred


def marginals(params, sched):
    """(a_j, sqrt(v_j)) for j = 0..K-1: the marginal q(x_j | x_0) = N(a_j x_0, v_j I) of the GGDM
    forward process, by recursion over the chain (Watson et al. 2022, sec. 4): a state's x_0
    coefficient and its coefficients on the independent noises (x_T's and each step's)."""
    mu_x, mu_pred = mixing(params)
    K = num_steps(params)
    tau0 = model_times(params)[0]
    eye = jnp.eye(K, dtype=mu_x.dtype)
    to_x0 = jnp.sum(mu_pred, axis=1)  # in q, every prediction is x_0 itself

    def next_state(carry, i):
        a, noise = carry  # rows > i are still zero, as are mu_x[i, j > i]
        a = a.at[i + 1].set(mu_x[i] @ a + to_x0[i])
        noise = noise.at[i + 1].set(mu_x[i] @ noise + params["sigma"][i] * eye[i + 1])
        return (a, noise), None

    init = (jnp.zeros(K, mu_x.dtype).at[0].set(sched.alpha(tau0)), jnp.zeros((K, K), mu_x.dtype).at[0, 0].set(sched.sigma(tau0)))
    (a, noise), _ = jax.lax.scan(next_state, init, jnp.arange(K - 1))
    return a, jnp.sqrt(jnp.sum(noise**2, axis=1)).at[0].set(sched.sigma(tau0))


@register("ggdm", stochastic=True)
def ggdm(eps_fn, sched, x_T, grid, key=None, params=None, remat: bool = False):
    """GGDM (Watson et al. 2022, eq. 10) with learned params (init_params, load_ggdm); the model
    times come from params, the grid only fixes K. remat=True rematerialises each step in backprop."""
    if params is None:
        raise UserError("sampler 'ggdm' needs params=...: make them with ggdm.init_params or load_ggdm(path)")
    variant_of(params)
    K = grid.shape[0] - 1
    if num_steps(params) != K:
        raise UserError(f"GGDM params are for K={num_steps(params)} steps, the sampler was asked for {K}")
    params = {k: jnp.asarray(v, x_T.dtype) for k, v in params.items()}
    tau = model_times(params)
    a, sqrt_v = marginals(params, sched)
    mu_x, mu_pred = mixing(params)
    sigma = params["sigma"]
    all_preds = "mu_pred" in params

    def step(state, i, t, s):
        x = state["x"]
        xs = jax.lax.dynamic_update_index_in_dim(state["xs"], x, i, 0)
        x0 = x0_from_eps(x, eps_fn(x, batch_times(tau[i], x)), a[i], sqrt_v[i])
        out = {"xs": xs}
        if all_preds:
            out["preds"] = jax.lax.dynamic_update_index_in_dim(state["preds"], x0, i, 0)
            mean = jnp.tensordot(mu_x[i], xs, axes=1) + jnp.tensordot(mu_pred[i], out["preds"], axes=1)
        else:
            mean = jnp.tensordot(mu_x[i], xs, axes=1) + mu_pred[i, i] * x0
        out["x"] = mean + sigma[i] * noise_like(key, i, x)
        return out

    hist = jnp.zeros((K,) + x_T.shape, x_T.dtype)
    init = {"x": x_T, "xs": hist, **({"preds": hist} if all_preds else {})}
    state, bad = scan_chain(step, init, grid, remat=remat)
    return state["x"], bad
