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
                    tau_j = t_max (1 - sum_{k<j} softplus(l_k) / sum_k softplus(l_k)), with an
                    optional fixed scalar t_max (the first model time; absent: 1)

`init_params` gives DDIM (or DDPM, eta = 1) on a time grid exactly: where DDSS search starts.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pipeline import schedules
from pipeline.errors import UserError, choose
from pipeline.samplers.chain import batch_times, noise_like, scan_chain
from pipeline.samplers.registry import register
from pipeline.samplers.steps import ddim_noise_std, x0_from_eps

VARIANTS = ("ggdm", "ggdm+pred", "ggdm+time", "ggdm+pred+time")
_LAYOUTS = {
    "ggdm": ("mu_x", "mu_x0", "sigma", "times"),
    "ggdm+pred": ("mu_x", "mu_pred", "sigma", "times"),
    "ggdm+time": ("mu_x", "mu_x0", "sigma", "time_logits"),
    "ggdm+pred+time": ("mu_x", "mu_pred", "sigma", "time_logits"),
}


def variant_of(params) -> str:
    """The GGDM variant whose parameter layout `params` has (UserError if none); +TIME layouts
    may also hold the scalar t_max."""
    keys = tuple(sorted(params))
    for name, layout in _LAYOUTS.items():
        if keys == tuple(sorted(layout)) or ("time_logits" in layout and keys == tuple(sorted(layout + ("t_max",)))):
            return name
    raise UserError(f"not GGDM parameters: keys {list(keys)}; expected one of "
                    + "; ".join(f"{v}: {', '.join(sorted(k))}" for v, k in _LAYOUTS.items()))


def num_steps(params) -> int:
    """K, the number of steps (= model evaluations) of these parameters."""
    return int(np.shape(params["sigma"])[0])


def _softplus_inv(y):
    return y + np.log(-np.expm1(-y))


def init_params(K: int, variant: str = "ggdm", sched="cosine", stride: str = "quadratic", eta: float = 0.0,
                dtype=jnp.float32, t_max: float = 1.0) -> dict:
    """Parameters that make GGDM exactly DDIM(eta) on time_grid(K, stride, sched, t_max) (eta = 0: DDIM,
    1: DDPM): x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) (x_t - alpha_t x0_hat) / sigma_t + c z
    (Song et al. 2021, eq. 12). +TIME keeps the grid's first time as t_max when it is not 1."""
    choose("GGDM variant", variant, VARIANTS)
    if isinstance(sched, str):
        sched = schedules.get(sched)
    grid = schedules.time_grid(K, stride, sched) if t_max == 1.0 else schedules.time_grid(K, stride, sched, t_max)
    a, s = np.asarray(sched.alpha(grid), np.float64), np.asarray(sched.sigma(grid), np.float64)
    c = np.asarray(ddim_noise_std(a[:-1], s[:-1], a[1:], s[1:], eta), np.float64)
    r = np.sqrt(np.clip(s[1:] ** 2 - c**2, 0.0, None)) / s[:-1]
    params = {"mu_x": np.diag(r), "sigma": c}
    if "pred" in variant:
        params["mu_pred"] = np.diag(a[1:] - a[:-1] * r)
    else:
        params["mu_x0"] = a[1:] - a[:-1] * r
    if "time" in variant:
        params.update(time_params(grid))
    else:
        params["times"] = grid[:-1]
    return {k: jnp.asarray(v, dtype) for k, v in params.items()}


def time_params(times) -> dict:
    """+TIME's parameters for the K+1 decreasing times t_max = tau_0 > ... > tau_K = 0: the logits
    times_from_logits inverts, and t_max unless it is 1."""
    times = np.asarray(times, np.float64)
    out = {"time_logits": _softplus_inv(-np.diff(times) / times[0])}  # normalised: times_from_logits' scale
    if times[0] != 1.0:
        out["t_max"] = np.float64(times[0])
    return out


def times_from_logits(logits, t_max=1.0):
    """The K+1 strictly decreasing times t_max = tau_0 > ... > tau_K = 0 of +TIME: cumulative softplus
    increments normalised to [0, 1], scaled by t_max (DDSS's learned timesteps, Watson et al. 2022, sec. 5)."""
    inc = jax.nn.softplus(logits)
    u = jnp.concatenate([jnp.zeros((1,), inc.dtype), jnp.cumsum(inc)]) / jnp.sum(inc)
    return t_max * (1.0 - u)


def model_times(params):
    """The K times tau_0..tau_{K-1} at which the model is evaluated (fixed unless +TIME; t_max is never learned)."""
    if "time_logits" in params:
        t_max = jax.lax.stop_gradient(params["t_max"]) if "t_max" in params else 1.0
        return times_from_logits(params["time_logits"], t_max)[:-1]
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


REMAT = ("none", "step", "adjoint", "adjoint-unrolled")


def coefficients(params, sched) -> dict:
    """Everything a chain needs, per step: model times tau, marginals a and sqrt(v), the masked
    mixing matrices mu_x and mu_pred, the noise scales sigma (differentiable in params)."""
    a, sqrt_v = marginals(params, sched)
    mu_x, mu_pred = mixing(params)
    return {"tau": model_times(params), "a": a, "sqrt_v": sqrt_v, "mu_x": mu_x, "mu_pred": mu_pred, "sigma": params["sigma"]}


def _predict(eps_fn, x, tau, a, sqrt_v):
    """x0_hat = (x - sqrt(v) eps(x, tau)) / a: the model's data prediction in GGDM's marginals."""
    return x0_from_eps(x, eps_fn(x, batch_times(tau, x)), a, sqrt_v)


def _chain(eps_fn, c, x_T, key, keep_preds: bool, remat: bool):
    """The forward chain; its final state holds x (the sample), xs (states 0..K-1) and, when
    keep_preds, preds (the K predictions)."""
    K = c["sigma"].shape[0]

    def step(state, i, t, s):
        x = state["x"]
        xs = jax.lax.dynamic_update_index_in_dim(state["xs"], x, i, 0)
        x0 = _predict(eps_fn, x, c["tau"][i], c["a"][i], c["sqrt_v"][i])
        out = {"xs": xs}
        if keep_preds:
            out["preds"] = jax.lax.dynamic_update_index_in_dim(state["preds"], x0, i, 0)
            mean = jnp.tensordot(c["mu_x"][i], xs, axes=1) + jnp.tensordot(c["mu_pred"][i], out["preds"], axes=1)
        else:  # plain GGDM: only the latest prediction
            mean = jnp.tensordot(c["mu_x"][i], xs, axes=1) + c["mu_pred"][i, i] * x0
        out["x"] = mean + c["sigma"][i] * noise_like(key, i, x)
        return out

    hist = jnp.zeros((K,) + x_T.shape, x_T.dtype)
    init = {"x": x_T, "xs": hist, **({"preds": hist} if keep_preds else {})}
    return scan_chain(step, init, jnp.zeros(K + 1, x_T.dtype), remat=remat)  # times come from c


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 5))
def _adjoint_chain(eps_conv, c, x_T, key, consts, unroll):
    """The chain with a hand-written reverse pass: memory O(K) states, not O(K^2) saved histories."""
    return _adjoint_fwd(eps_conv, c, x_T, key, consts, unroll)[0]


def _adjoint_fwd(eps_conv, c, x_T, key, consts, unroll):
    state, bad = _chain(lambda x, t: eps_conv(x, t, *consts), c, x_T, key, True, False)
    return (state["x"], bad), (c, key, consts, state["xs"], state["preds"])


def _adjoint_bwd(eps_conv, unroll, res, cotangents):
    """Reverse sweep over the steps (the adjoint of the linear mixing, and the vjp of each step's
    prediction, recomputed: gradient rematerialisation, Watson et al. 2022, sec. 4). unroll=True
    makes it straight-line code: ~4x faster on XLA:CPU, whose loops run slowly, but XLA then
    keeps several steps' activations alive, so memory grows with K again."""
    c, key, consts, xs, preds = res
    g_out = cotangents[0]
    K = xs.shape[0]

    def along(v):  # [K] coefficients against [K, B, ...] buffers
        return v.reshape(v.shape + (1,) * (xs.ndim - 1))

    def body(carry, i):
        g, g_xs, g_preds, g_consts = carry  # g: the complete adjoint of state i + 1
        z = noise_like(key, i, g)
        row = (jnp.tensordot(xs, g, axes=g.ndim), jnp.tensordot(preds, g, axes=g.ndim), jnp.vdot(z, g))
        g_xs = g_xs + along(c["mu_x"][i]) * g[None]
        g_preds = g_preds + along(c["mu_pred"][i]) * g[None]
        _, vjp = jax.vjp(lambda x, t, a, sv, cs: _predict(lambda u, v: eps_conv(u, v, *cs), x, t, a, sv),
                         xs[i], c["tau"][i], c["a"][i], c["sqrt_v"][i], consts)
        d_x, d_tau, d_a, d_sv, d_consts = vjp(g_preds[i])
        g_consts = jax.tree.map(jnp.add, g_consts, d_consts)
        return (g_xs[i] + d_x, g_xs, g_preds, g_consts), row + (d_tau, d_a, d_sv)

    zeros = jnp.zeros_like(xs)
    init = (g_out, zeros, zeros, jax.tree.map(jnp.zeros_like, consts))
    (g_T, _, _, g_consts), rows = jax.lax.scan(body, init, jnp.arange(K - 1, -1, -1), unroll=unroll)
    d_mu_x, d_mu_pred, d_sigma, d_tau, d_a, d_sv = (r[::-1] for r in rows)
    d_c = {"tau": d_tau, "a": d_a, "sqrt_v": d_sv, "mu_x": d_mu_x, "mu_pred": d_mu_pred, "sigma": d_sigma}
    return d_c, g_T, None, g_consts


_adjoint_chain.defvjp(_adjoint_fwd, _adjoint_bwd)


@register("ggdm", stochastic=True)
def ggdm(eps_fn, sched, x_T, grid, key=None, params=None, remat: bool | str = False):
    """GGDM (Watson et al. 2022, eq. 10) with learned params (init_params, load_ggdm); the model
    times come from params, the grid only fixes K. remat (for backprop): "none" (False) saves every
    step's activations; "step" rematerialises each step (jax.checkpoint), saving its carry, which
    holds the O(K) history: O(K^2) memory; "adjoint" (True) a reverse pass recomputing each step: O(K)
    ("adjoint-unrolled": that pass as straight-line code, ~4x faster on CPU, memory growing with K)."""
    if params is None:
        raise UserError("sampler 'ggdm' needs params=...: make them with ggdm.init_params or load_ggdm(path)")
    variant_of(params)
    K = grid.shape[0] - 1
    if num_steps(params) != K:
        raise UserError(f"GGDM params are for K={num_steps(params)} steps, the sampler was asked for {K}")
    remat = {True: "adjoint", False: "none"}.get(remat, remat)
    choose("GGDM remat mode", remat, REMAT)
    c = coefficients({k: jnp.asarray(v, x_T.dtype) for k, v in params.items()}, sched)
    if remat.startswith("adjoint"):
        eps_conv, consts = jax.closure_convert(eps_fn, x_T, batch_times(c["tau"][0], x_T))
        return _adjoint_chain(eps_conv, c, x_T, key, consts, remat == "adjoint-unrolled")
    state, bad = _chain(eps_fn, c, x_T, key, "mu_pred" in params, remat == "step")
    return state["x"], bad
