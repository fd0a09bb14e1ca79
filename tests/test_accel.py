"""The accelerated samplers of Li et al. (ICML 2024): step functions against float64 NumPy written
here from the paper's formulas, whole chains against NumPy loops, and convergence orders on a
1-D Gaussian target whose exact answers are known in closed form."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import model_calls
from pipeline import samplers, schedules
from pipeline.models.analytic import GaussianMixture
from pipeline.samplers.accel import accel_ddim_coeff, accel_ddim_step, accel_ddpm_perturb, accel_ddpm_step
from pipeline.samplers.chain import split_noise
from pipeline.samplers.steps import ddim_step

MEANS = np.array([[1.5, -0.5], [-1.0, 1.0]])
STDS = np.array([0.3, 0.5])
WEIGHTS = np.array([0.4, 0.6])
GMM = GaussianMixture(MEANS, STDS, WEIGHTS)
M1, S1 = 0.5, 0.5  # the 1-D Gaussian target N(M1, S1^2)
GAUSS = GaussianMixture(np.array([[M1]]), np.array([S1]), np.array([1.0]))


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


# ----------------------------------------------------------------------------------------
# float64 NumPy, written from the paper (its alpha_t is our abar_t / abar_s).


def np_ddim(x, eps, ab_t, ab_s):
    """x_s = sqrt(ab_s/ab_t) x + (sqrt(1 - ab_s) - sqrt(ab_s/ab_t) sqrt(1 - ab_t)) eps."""
    r = np.sqrt(ab_s / ab_t)
    return r * x + (np.sqrt(1 - ab_s) - r * np.sqrt(1 - ab_t)) * eps


def np_accel_ddim(x, eps, eps_prev, ab_p, ab_t, ab_s):
    """Li et al. 2024 eq. 15 (README eq. 5): DDIM + sqrt(ab_s)/(ab_t - ab_p) [G(ab_s) - G(ab_t)] (eps_prev - eps),
    G(a) = ab_t sqrt((1 - a)/a) + arcsin(sqrt(a))."""

    def G(a):
        return ab_t * np.sqrt((1 - a) / a) + np.arcsin(np.sqrt(a))

    return np_ddim(x, eps, ab_t, ab_s) + np.sqrt(ab_s) / (ab_t - ab_p) * (G(ab_s) - G(ab_t)) * (eps_prev - eps)


def np_accel_ddpm(y, eps_fn, z1, z2, ab_t, ab_s):
    """Li et al. 2024 eq. 24: y+ = y + sqrt((1-a)/2) z1; y_s = (y+ + (1-a) s_t(y+))/sqrt(a) + sqrt((1-a)/2) z2,
    a = ab_t/ab_s, s_t = -eps/sqrt(1 - ab_t)."""
    a = ab_t / ab_s
    yp = y + np.sqrt((1 - a) / 2) * z1
    score = -eps_fn(yp) / np.sqrt(1 - ab_t)
    return (yp + (1 - a) * score) / np.sqrt(a) + np.sqrt((1 - a) / 2) * z2


def np_abar(sched, t):
    lam = float(np.asarray(sched.logsnr(np.float64(t))))
    return 1.0 / (1.0 + np.exp(-lam))


def np_gmm_eps(x, ab):
    """Exact eps of the 2-D mixture (Tweedie): sigma sum_k r_k (x - alpha m_k) / v_k."""
    a, sg = np.sqrt(ab), np.sqrt(1 - ab)
    v = a**2 * STDS**2 + sg**2
    diff = x[:, None, :] - a * MEANS[None]
    logits = np.log(WEIGHTS)[None] - 0.5 * np.sum(diff**2, -1) / v - 0.5 * x.shape[1] * np.log(v)
    r = np.exp(logits - logits.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    return sg * np.sum((r / v)[..., None] * diff, axis=1)


def as_jax(ab):
    return jnp.sqrt(ab), jnp.sqrt(1 - ab)


# ----------------------------------------------------------------------------------------
# Step functions on random inputs.


def test_accel_ddim_step_matches_the_paper_formula():
    rng = np.random.default_rng(0)
    for _ in range(20):
        ab_p, ab_t, ab_s = np.sort(rng.uniform(1e-4, 1 - 1e-4, 3))
        x, eps, eps_prev = rng.standard_normal((3, 5, 3))
        (a_p, _), (a_t, s_t), (a_s, s_s) = as_jax(ab_p), as_jax(ab_t), as_jax(ab_s)
        got = accel_ddim_step(jnp.asarray(x), jnp.asarray(eps), jnp.asarray(eps_prev), a_p, a_t, s_t, a_s, s_s)
        np.testing.assert_allclose(np.asarray(got), np_accel_ddim(x, eps, eps_prev, ab_p, ab_t, ab_s), rtol=1e-10, atol=1e-10)


def test_accel_ddim_correction_is_second_order_and_skipped_where_not_finite():
    # on a grid of step h in abar, c = O(h) and eps_prev - eps = O(h): the correction is O(h^2)
    c = [float(accel_ddim_coeff(*(jnp.sqrt(a) for a in (0.5 - h, 0.5)), jnp.sqrt(0.5), *as_jax(0.5 + h))) for h in (0.02, 0.01)]
    assert 1.9 < c[0] / c[1] < 2.1
    # two coinciding grid times (abar_p == abar_t): 0/0, the correction is skipped -> plain DDIM
    x, eps = jnp.ones((2, 3)), jnp.full((2, 3), 0.3)
    a_t, s_t = as_jax(0.4)
    a_s, s_s = as_jax(0.7)
    assert float(accel_ddim_coeff(a_t, a_t, s_t, a_s, s_s)) == 0.0
    got = accel_ddim_step(x, eps, 5.0 * eps, a_t, a_t, s_t, a_s, s_s)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ddim_step(x, eps, a_t, s_t, a_s, s_s)))
    assert np.all(np.isfinite(np.asarray(got)))
    # reaching abar_s = 1 (t = 0 of the linear schedule, sigma_s = 0) is finite: G(1) = pi/2
    assert np.isfinite(float(accel_ddim_coeff(jnp.sqrt(0.3), jnp.sqrt(0.6), jnp.sqrt(0.4), 1.0, 0.0)))


def test_accel_ddpm_steps_match_the_paper_formula():
    rng = np.random.default_rng(1)
    for _ in range(20):
        ab_t, ab_s = np.sort(rng.uniform(1e-4, 1 - 1e-4, 2))
        y, z1, z2 = rng.standard_normal((3, 5, 3))
        A = rng.standard_normal((3, 3))

        def np_eps(v):
            return np.tanh(v @ A)  # any denoiser will do for one step

        (a_t, s_t), (a_s, _) = as_jax(ab_t), as_jax(ab_s)
        y_plus = accel_ddpm_perturb(jnp.asarray(y), jnp.asarray(z1), a_t, a_s)
        got = accel_ddpm_step(y_plus, jnp.tanh(y_plus @ A), jnp.asarray(z2), a_t, s_t, a_s)
        np.testing.assert_allclose(np.asarray(got), np_accel_ddpm(y, np_eps, z1, z2, ab_t, ab_s), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------
# Whole chains against float64 NumPy loops (2-D mixture, exact eps).


@pytest.mark.parametrize("sched_name,stride,K", [("cosine", "quadratic", 6), ("linear", "linear", 5), ("linear", "logsnr", 3)])
def test_accel_ddim_chain_matches_float64_loop(sched_name, stride, K):
    sched = schedules.get(sched_name)
    x_T = np.random.default_rng(2).standard_normal((16, 2))
    grid = schedules.time_grid(K, stride, sched)
    ab = [np_abar(sched, t) for t in grid]
    x, eps_prev = x_T, None
    for i in range(K):
        eps = np_gmm_eps(x, ab[i])
        # the first step has no previous prediction: plain DDIM
        x = np_ddim(x, eps, ab[i], ab[i + 1]) if i == 0 else np_accel_ddim(x, eps, eps_prev, ab[i - 1], ab[i], ab[i + 1])
        eps_prev = eps
    got = samplers.sample("accel-ddim", GMM.eps_fn(sched), sched, jnp.asarray(x_T), K, stride=stride)
    np.testing.assert_allclose(np.asarray(got), x, rtol=1e-8, atol=1e-8)


def test_accel_ddim_first_step_is_ddim():
    sched = schedules.get("cosine")
    x_T = jnp.asarray(np.random.default_rng(3).standard_normal((8, 2)))
    one = samplers.sample("accel-ddim", GMM.eps_fn(sched), sched, x_T, 1)
    np.testing.assert_array_equal(np.asarray(one), np.asarray(samplers.sample("ddim", GMM.eps_fn(sched), sched, x_T, 1)))
    two = samplers.sample("accel-ddim", GMM.eps_fn(sched), sched, x_T, 2)
    assert np.max(np.abs(np.asarray(two) - np.asarray(samplers.sample("ddim", GMM.eps_fn(sched), sched, x_T, 2)))) > 1e-3


@pytest.mark.parametrize("sched_name,stride,K", [("cosine", "logsnr", 6), ("linear", "quadratic", 4)])
def test_accel_ddpm_chain_matches_float64_loop(sched_name, stride, K):
    sched = schedules.get(sched_name)
    x_T = np.random.default_rng(4).standard_normal((16, 2))
    key = jax.random.key(5)
    grid = schedules.time_grid(K, stride, sched)
    ab = [np_abar(sched, t) for t in grid]
    x = x_T
    for i in range(K):
        z1, z2 = (np.asarray(z) for z in split_noise(key, i, jnp.asarray(x_T), 2))
        x = np_accel_ddpm(x, lambda v: np_gmm_eps(v, ab[i]), z1, z2, ab[i], ab[i + 1])
    got = samplers.sample("accel-ddpm", GMM.eps_fn(sched), sched, jnp.asarray(x_T), K, key=key, stride=stride)
    np.testing.assert_allclose(np.asarray(got), x, rtol=1e-8, atol=1e-8)
    other = samplers.sample("accel-ddpm", GMM.eps_fn(sched), sched, jnp.asarray(x_T), K, key=jax.random.key(6), stride=stride)
    assert np.max(np.abs(np.asarray(other) - x)) > 1e-2


def test_float32_correction_loses_no_more_than_ddim():
    """In float32 the correction (a difference of nearly equal terms over abar_t - abar_p) adds no
    precision loss beyond DDIM's own (~1e-3 here, from the first steps where alpha_t ~ 1e-4)."""
    sched = schedules.get("cosine")
    x_T = np.random.default_rng(7).standard_normal((64, 2))
    err = {}
    for name in ("ddim", "accel-ddim"):
        ref = samplers.sample(name, GMM.eps_fn(sched), sched, jnp.asarray(x_T, jnp.float64), 200)
        with jax.enable_x64(False):
            x32 = samplers.sample(name, GMM.eps_fn(sched), sched, jnp.asarray(x_T, jnp.float32), 200)
        assert x32.dtype == jnp.float32
        err[name] = float(np.max(np.abs(np.asarray(x32) - np.asarray(ref))))
    assert err["accel-ddim"] < 3.0 * err["ddim"] < 3e-3, err


# ----------------------------------------------------------------------------------------
# Convergence on N(M1, S1^2) with the exact eps.

KS = [8, 16, 32, 64]


def slope(ks, errs):
    return float(np.polyfit(np.log(ks), np.log(errs), 1)[0])


def exact_pf(x_T, sched):
    """The probability-flow ODE maps quantiles to quantiles: x_0 = m + s (x_T - alpha_1 m) / sqrt(alpha_1^2 s^2 + sigma_1^2)."""
    a1, s1 = float(sched.alpha(1.0)), float(sched.sigma(1.0))
    return M1 + S1 * (x_T - a1 * M1) / np.sqrt(a1**2 * S1**2 + s1**2)


@pytest.mark.parametrize("sched_name", ["cosine", "linear"])
def test_accel_ddim_is_second_order_and_ddim_first(sched_name):
    sched = schedules.get(sched_name)
    x_T = np.linspace(-2.5, 2.5, 11)[:, None]
    ref = exact_pf(x_T, sched)
    errs = {name: [float(np.max(np.abs(np.asarray(samplers.sample(name, GAUSS.eps_fn(sched), sched, jnp.asarray(x_T), K)) - ref)))
                   for K in KS] for name in ("ddim", "accel-ddim")}
    # quadratic stride (the default); on the linear and logsnr strides the same slopes are reached
    # only at larger K (see bench/RESULTS.md)
    assert slope(KS, errs["accel-ddim"]) < -1.6, errs
    assert -1.1 < slope(KS, errs["ddim"]) < -0.9, errs
    assert all(a < d for a, d in zip(errs["accel-ddim"], errs["ddim"]))


def affine_moments(f, mean, var, n_noise):
    """Mean and variance of f(x, z_1..z_n) for x ~ N(mean, var), z iid N(0, 1), f affine (1-D)."""
    zero = [0.0] * n_noise
    f0 = f(mean, *zero)
    gain = f(mean + 1.0, *zero) - f0
    out_var = gain**2 * var + sum((f(mean, *(1.0 if j == k else 0.0 for j in range(n_noise))) - f0) ** 2 for k in range(n_noise))
    return f0, out_var


COSINE = schedules.get("cosine")


@functools.partial(jax.jit, static_argnames="name")
def moment_step(name, mean, var, t, s):
    """One step of `name` on the cosine schedule, mapped to the output mean and variance."""
    eps_fn = GAUSS.eps_fn(COSINE)
    a_t, s_t, a_s, s_s = COSINE.alpha(t), COSINE.sigma(t), COSINE.alpha(s), COSINE.sigma(s)

    def eps_at(x, t):
        return eps_fn(jnp.full((1, 1), x), jnp.full((1,), t))[0, 0]

    if name == "ddpm":  # ancestral: DDIM with eta = 1 (Ho et al. 2020; Song et al. 2021 eq. 16)
        def f(x, z):
            return ddim_step(x, eps_at(x, t), a_t, s_t, a_s, s_s, eta=1.0, z=z)

        return affine_moments(f, mean, var, 1)

    def f(y, z1, z2):
        y_plus = accel_ddpm_perturb(y, z1, a_t, a_s)
        return accel_ddpm_step(y_plus, eps_at(y_plus, t), z2, a_t, s_t, a_s)

    return affine_moments(f, mean, var, 2)


def sampler_moments(name, K, stride):
    """Exact output moments of `name` from x_T ~ N(0, 1) on the cosine schedule: every step is
    affine in (x, noise) for a Gaussian target, so mean and variance propagate exactly through
    the step functions."""
    mean, var = jnp.float64(0.0), jnp.float64(1.0)
    grid = schedules.time_grid(K, stride, COSINE)
    for t, s in zip(grid[:-1], grid[1:]):
        mean, var = moment_step(name, mean, var, t, s)
    return float(mean), float(var)


def w2_to_target(mean, var):
    return float(np.hypot(mean - M1, np.sqrt(var) - S1))


def kl_to_target(mean, var):
    return float(0.5 * (var / S1**2 + (mean - M1) ** 2 / S1**2 - 1.0 - np.log(var / S1**2)))


def test_moment_propagation_matches_the_sampler():
    """The exact moments used below are those of the registered samplers (Monte Carlo, 2^18 draws)."""
    n = 2**18
    x_T = jax.random.normal(jax.random.key(8), (n, 1), jnp.float64)
    for name in ("ddpm", "accel-ddpm"):
        x0 = np.asarray(samplers.sample(name, GAUSS.eps_fn(COSINE), COSINE, x_T, 8, key=jax.random.key(9)))[:, 0]
        mean, var = sampler_moments(name, 8, "quadratic")
        assert abs(x0.mean() - mean) < 5 * np.sqrt(var / n)
        assert abs(x0.var() - var) < 5 * var * np.sqrt(2.0 / n)
        assert w2_to_target(mean, var) > 5e-3  # at 8 steps the sampler is measurably off the target


def test_accel_ddpm_error_is_first_order_and_below_ddpm():
    """Exact W2 and KL of the output to N(m, s^2). Both samplers converge at first order in W2
    (second in KL): for a Gaussian target the ancestral DDPM's mean is exact and its variance error
    per step is O(h^2), and eq. 24 leaves a variance error -(1-a)^2/(2a) per step, also O(h^2).
    The paper's faster rate is an upper bound on TV for general targets; here accel-ddpm's gain
    is a constant factor (about 3x), not a steeper slope."""
    ks = [32, 64, 128, 256]
    mom = {name: [sampler_moments(name, K, "quadratic") for K in ks] for name in ("ddpm", "accel-ddpm")}
    w2 = {name: [w2_to_target(*m) for m in ms] for name, ms in mom.items()}
    kl = {name: [kl_to_target(*m) for m in ms] for name, ms in mom.items()}
    for name in w2:
        assert -1.15 < slope(ks, w2[name]) < -0.8, (name, w2[name])
        assert -2.3 < slope(ks, kl[name]) < -1.6, (name, kl[name])
    assert all(2.0 * a < d for a, d in zip(w2["accel-ddpm"], w2["ddpm"])), w2


# ----------------------------------------------------------------------------------------
# Registry facts.


@pytest.mark.parametrize("name", ["accel-ddim", "accel-ddpm"])
@pytest.mark.parametrize("K", [1, 4])
def test_nfe_counts_model_evaluations(name, K):
    sched = schedules.get("linear")
    assert model_calls(name, GMM.eps_fn(sched), sched, jnp.zeros((4, 2)), K) == samplers.nfe(name, K) == K


@pytest.mark.parametrize("name", ["accel-ddim", "accel-ddpm"])
def test_nan_eps_raises_naming_sampler_and_step(name):
    sched = schedules.get("cosine")
    inner = GMM.eps_fn(sched)

    def eps_fn(x, t):
        return jnp.where(t[:, None] < 0.5, jnp.nan, inner(x, t))  # NaN from t = 0.25, step 4 of 4

    with pytest.raises(samplers.SamplerDiverged, match=rf"'{name}'.*step 4 of 4"):
        samplers.sample(name, eps_fn, sched, jnp.ones((3, 2)), 4, key=jax.random.key(0), stride="linear")


def test_accel_ddpm_is_stochastic_and_needs_a_key():
    sched = schedules.get("cosine")
    assert samplers.get("accel-ddpm").stochastic and not samplers.get("accel-ddim").stochastic
    with pytest.raises(ValueError, match="stochastic"):
        samplers.sample("accel-ddpm", GMM.eps_fn(sched), sched, jnp.zeros((2, 2)), 4)
