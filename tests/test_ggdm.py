"""The GGDM sampler family: exact DDIM/DDPM at initialisation, its marginals against closed forms and
a float64 Monte Carlo written here, +TIME's times, and gradients through the chain."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pipeline import samplers, schedules
from pipeline.errors import UserError
from pipeline.models.analytic import GaussianMixture
from pipeline.samplers import ggdm


@pytest.fixture(autouse=True, scope="module")
def _float64():
    """float64 for this module only (a global jax_enable_x64 would leak into every later test)."""
    with jax.enable_x64(True):
        yield

GM = GaussianMixture(np.array([[-2.0, 0.5], [1.5, 1.0], [0.0, -2.0]]), np.array([0.3, 0.5, 0.2]), np.array([0.3, 0.5, 0.2]))


def _x_T(n=64, dtype=jnp.float64):
    return jax.random.normal(jax.random.key(0), (n, 2), dtype)


@pytest.mark.parametrize("sched_name,stride,K,variants", [
    ("cosine", "quadratic", 5, ggdm.VARIANTS),
    ("linear", "logsnr", 4, ("ggdm", "ggdm+pred+time")),
    ("cosine", "linear", 1, ("ggdm+pred+time",)),
])
def test_init_is_ddim_exactly(sched_name, stride, K, variants):
    sched = schedules.get(sched_name)
    eps_fn = GM.eps_fn(sched)
    key = jax.random.key(3)
    ref = samplers.sample("ddim", eps_fn, sched, _x_T(), steps=K, stride=stride)
    for variant in variants:
        p = ggdm.init_params(K, variant, sched, stride, dtype=jnp.float64)
        out = samplers.sample("ggdm", eps_fn, sched, _x_T(), steps=K, key=key, params=p)
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-9, atol=1e-9, err_msg=variant)


@pytest.mark.parametrize("stride,t_max,variants", [
    ("karras", 0.9, ggdm.VARIANTS),
    ("leading", 1.0, ("ggdm", "ggdm+pred+time")),  # diffusers' leading grid starts below t_max
    ("linspace", 0.8, ("ggdm+time",)),
    ("quadratic", 0.7, ("ggdm+pred",)),
])
def test_init_is_ddim_exactly_on_any_grid_and_t_max(stride, t_max, variants):
    """init_params(..., t_max) is DDIM on time_grid(K, stride, sched, t_max), whose first time
    +TIME keeps as its fixed t_max."""
    K, sched = 5, schedules.get("cosine")
    eps_fn = GM.eps_fn(sched)
    grid = schedules.time_grid(K, stride, sched, t_max)
    ref = samplers.sample("ddim", eps_fn, sched, _x_T(), steps=K, grid=grid)
    for variant in variants:
        p = ggdm.init_params(K, variant, sched, stride, dtype=jnp.float64, t_max=t_max)
        assert ("t_max" in p) == ("time" in variant and grid[0] != 1.0), variant
        np.testing.assert_allclose(np.asarray(ggdm.model_times(p)), grid[:-1], rtol=1e-12, atol=1e-15)
        out = samplers.sample("ggdm", eps_fn, sched, _x_T(), steps=K, key=jax.random.key(3), params=p)
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-9, atol=1e-9, err_msg=variant)


def test_learned_times_span_zero_to_t_max_and_t_max_is_not_learned():
    logits = np.random.default_rng(1).normal(size=6) * 2
    inc = np.logaddexp(0.0, logits)  # softplus, float64 NumPy
    want = 0.9 * (1.0 - np.concatenate([[0.0], np.cumsum(inc)]) / inc.sum())
    np.testing.assert_allclose(np.asarray(ggdm.times_from_logits(jnp.asarray(logits), 0.9)), want, rtol=1e-12, atol=1e-15)
    sched = schedules.get("cosine")
    p = _random_params(4, "ggdm+pred+time", seed=5)
    p["sigma"], p["t_max"] = jnp.abs(p["sigma"]), jnp.asarray(0.85)
    assert ggdm.variant_of(p) == "ggdm+pred+time"
    assert float(ggdm.model_times(p)[0]) == pytest.approx(0.85, abs=1e-15)
    g_plain, _ = _grad(p, "none", sched, 1.0)
    g_adj, _ = _grad(p, "adjoint", sched, 1.0)
    assert float(g_plain["t_max"]) == 0.0 and float(g_adj["t_max"]) == 0.0  # fixed, as fixed times are
    assert float(jnp.max(jnp.abs(g_plain["time_logits"]))) > 1e-6
    for k in p:
        np.testing.assert_allclose(np.asarray(g_adj[k]), np.asarray(g_plain[k]), rtol=1e-10, atol=1e-12, err_msg=k)
    with pytest.raises(UserError, match="not GGDM parameters"):  # fixed times already say where they start
        ggdm.variant_of({**ggdm.init_params(3, "ggdm"), "t_max": jnp.asarray(0.5)})


def test_init_is_ddim_in_float32():
    """float32, the dtype searches run in: the same within float32 rounding."""
    sched = schedules.get("cosine")
    x_T = _x_T(dtype=jnp.float32)
    ref = samplers.sample("ddim", GM.eps_fn(sched), sched, x_T, steps=6, stride="quadratic")
    out = samplers.sample("ggdm", GM.eps_fn(sched), sched, x_T, steps=6, key=jax.random.key(0),
                          params=ggdm.init_params(6, "ggdm+pred+time", sched, "quadratic"))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-4, atol=1e-4)


def test_eta_one_is_ddpm_with_the_same_noise():
    sched = schedules.get("cosine")
    keys = jax.random.split(jax.random.key(7), 64)  # one key per sample
    ref = samplers.sample("ddpm", GM.eps_fn(sched), sched, _x_T(), steps=6, key=keys)
    p = ggdm.init_params(6, "ggdm+pred+time", sched, "quadratic", eta=1.0, dtype=jnp.float64)
    out = samplers.sample("ggdm", GM.eps_fn(sched), sched, _x_T(), steps=6, key=keys, params=p)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_marginals_of_the_ddim_family_are_the_schedule(eta):
    """DDIM(eta)'s non-Markovian forward process keeps q(x_t | x_0) = N(alpha_t x_0, sigma_t^2) (Song et al. 2021, Lemma 1)."""
    sched = schedules.get("linear")
    grid = schedules.time_grid(8, "quadratic", sched)
    p = ggdm.init_params(8, "ggdm+pred", sched, "quadratic", eta=eta, dtype=jnp.float64)
    a, sqrt_v = ggdm.marginals(p, sched)
    np.testing.assert_allclose(np.asarray(a), np.asarray(sched.alpha(grid[:-1])), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(sqrt_v), np.asarray(sched.sigma(grid[:-1])), rtol=1e-12)


def _random_params(K, variant, seed=0):
    rng = np.random.default_rng(seed)
    p = {k: np.asarray(v) for k, v in ggdm.init_params(K, variant, "cosine", dtype=jnp.float64).items()}
    for k in p:
        if k != "times":  # fixed model times stay on the grid
            p[k] = p[k] + 0.1 * rng.standard_normal(p[k].shape)
    return {k: jnp.asarray(v) for k, v in p.items()}


@pytest.mark.parametrize("variant", ["ggdm", "ggdm+pred+time"])
def test_marginals_against_monte_carlo(variant):
    """Simulate the forward process x_{i+1} = sum mu_x x_j + sum mu_pred x_0 + sigma z with x_0 fixed."""
    K, n = 5, 400_000
    p = _random_params(K, variant)
    sched = schedules.get("cosine")
    mu_x = np.tril(np.asarray(p["mu_x"]))
    pred = np.tril(np.asarray(p["mu_pred"])).sum(1) if "mu_pred" in p else np.asarray(p["mu_x0"])
    sigma = np.asarray(p["sigma"])
    rng = np.random.default_rng(1)
    x0 = 0.7
    xs = [float(sched.alpha(1.0)) * x0 + float(sched.sigma(1.0)) * rng.standard_normal(n)]
    for i in range(K - 1):
        xs.append(sum(mu_x[i, j] * xs[j] for j in range(i + 1)) + pred[i] * x0 + sigma[i] * rng.standard_normal(n))
    xs = np.stack(xs)
    a, sqrt_v = (np.asarray(v) for v in ggdm.marginals(p, sched))
    np.testing.assert_allclose(xs.mean(1), a * x0, atol=5e-3)
    np.testing.assert_allclose(xs.std(1), sqrt_v, rtol=5e-3)


def test_learned_times_are_strictly_decreasing_from_one_to_zero():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=9) * 3)
    tau = np.asarray(ggdm.times_from_logits(logits))
    assert tau[0] == 1.0 and abs(tau[-1]) < 1e-15 and np.all(np.diff(tau) < 0)
    p = ggdm.init_params(9, "ggdm+time", "cosine", "quadratic", dtype=jnp.float64)
    np.testing.assert_allclose(np.asarray(ggdm.model_times(p)), schedules.time_grid(9, "quadratic")[:-1], atol=1e-12)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _loss(params, remat, sched, scale=1.0):
    keys = jax.random.split(jax.random.key(5), 32)
    eps_fn = GM.eps_fn(sched)
    x0, _ = samplers.run("ggdm", lambda x, t: scale * eps_fn(x, t), sched, _x_T(32), jnp.linspace(1.0, 0.0, 5), keys,
                         params=params, remat=remat)
    return jnp.mean(jnp.sum(x0**2, 1) ** 1.5)


_grad = jax.jit(jax.grad(_loss, argnums=(0, 3)), static_argnums=(1, 2))


def test_gradient_matches_finite_differences_in_every_remat_mode():
    sched = schedules.get("cosine")
    p = _random_params(4, "ggdm+pred+time", seed=2)
    p["sigma"] = jnp.abs(p["sigma"])
    g_plain, _ = _grad(p, "none", sched, 1.0)
    for mode in ("step", "adjoint", "adjoint-unrolled"):
        g, _ = _grad(p, mode, sched, 1.0)
        for k in p:
            np.testing.assert_allclose(np.asarray(g[k]), np.asarray(g_plain[k]), rtol=1e-10, atol=1e-12, err_msg=f"{mode} {k}")
    # Central differences along a random direction (float64).
    rng = np.random.default_rng(3)
    d = {k: jnp.asarray(rng.standard_normal(v.shape)) for k, v in p.items()}
    h = 1e-5
    plus = _loss({k: p[k] + h * d[k] for k in p}, "none", sched)
    minus = _loss({k: p[k] - h * d[k] for k in p}, "none", sched)
    ad = sum(jnp.sum(g_plain[k] * d[k]) for k in p)
    np.testing.assert_allclose(float(ad), float((plus - minus) / (2 * h)), rtol=1e-6)


def test_adjoint_of_plain_ggdm_and_of_closed_over_values():
    """The hand-written reverse pass against JAX's, for plain GGDM's parameters and for a traced
    value the denoiser closes over (a model parameter, say)."""
    sched = schedules.get("linear")
    p = _random_params(4, "ggdm", seed=4)
    g_plain, s_plain = _grad(p, "none", sched, 1.3)
    g_adj, s_adj = _grad(p, True, sched, 1.3)
    for k in p:
        np.testing.assert_allclose(np.asarray(g_adj[k]), np.asarray(g_plain[k]), rtol=1e-10, atol=1e-12, err_msg=k)
    assert float(jnp.max(jnp.abs(g_plain["times"]))) == 0.0  # fixed times get no gradient
    np.testing.assert_allclose(float(s_adj), float(s_plain), rtol=1e-10)
    assert abs(float(s_plain)) > 1e-3


def test_bad_params_are_one_line_errors():
    sched = schedules.get("cosine")
    eps_fn = GM.eps_fn(sched)
    with pytest.raises(UserError, match="needs params"):
        samplers.sample("ggdm", eps_fn, sched, _x_T(), steps=3, key=jax.random.key(0))
    with pytest.raises(UserError, match="K=3 steps"):
        samplers.sample("ggdm", eps_fn, sched, _x_T(), steps=4, key=jax.random.key(0), params=ggdm.init_params(3))
    with pytest.raises(UserError, match="not GGDM parameters"):
        samplers.sample("ggdm", eps_fn, sched, _x_T(), steps=3, key=jax.random.key(0), params={"mu": jnp.zeros(3)})
    with pytest.raises(UserError, match="unknown GGDM remat mode"):
        samplers.run("ggdm", eps_fn, sched, _x_T(), jnp.linspace(1.0, 0.0, 4), jax.random.key(0),
                     params=ggdm.init_params(3), remat="yes")
    with pytest.raises(UserError, match="unknown GGDM variant"):
        ggdm.init_params(3, "ggdm+pref")
    assert ggdm.variant_of(ggdm.init_params(3, "ggdm+time")) == "ggdm+time"
    assert samplers.nfe("ggdm", 7) == 7
