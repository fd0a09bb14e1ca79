"""The training-free baselines (ddim, ddpm, dpm-solver++2m, ipndm): convergence orders against
the exact probability-flow solution of a 1-D Gaussian target, DDPM against a mixture's exact
moments, divergence reporting, nfe and bad input."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import model_calls
from pipeline import samplers, schedules
from pipeline.models.analytic import GaussianMixture

BASELINES = ["ddim", "ddpm", "dpm-solver++2m", "ipndm"]
MULTISTEP = ["dpm-solver++3m", "unipc-2", "unipc-3"]  # tests/test_samplers_multistep.py; here their NaN and NFE checks
M1, S1 = 0.5, 0.5  # the 1-D Gaussian target N(M1, S1^2)
GAUSS = GaussianMixture(np.array([[M1]]), np.array([S1]), np.array([1.0]))
MEANS = np.array([[1.5, -0.5], [-1.0, 1.0]])
STDS = np.array([0.3, 0.5])
WEIGHTS = np.array([0.4, 0.6])
GMM = GaussianMixture(MEANS, STDS, WEIGHTS)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def exact_pf(x_T, sched):
    """The probability-flow ODE maps quantiles to quantiles: x_0 = m + s (x_T - alpha_1 m) / sqrt(alpha_1^2 s^2 + sigma_1^2)."""
    a1, s1 = float(sched.alpha(1.0)), float(sched.sigma(1.0))
    return M1 + S1 * (x_T - a1 * M1) / np.sqrt(a1**2 * S1**2 + s1**2)


def pf_errors(name, sched_name, stride, ks):
    """Max error over a spread of x_T against the exact PF-ODE solution, for each K."""
    sched = schedules.get(sched_name)
    x_T = np.linspace(-2.5, 2.5, 11)[:, None]
    ref = exact_pf(x_T, sched)
    out = samplers.sample
    return [float(np.max(np.abs(np.asarray(out(name, GAUSS.eps_fn(sched), sched, jnp.asarray(x_T), K, stride=stride)) - ref)))
            for K in ks]


def slope(ks, errs):
    return float(np.polyfit(np.log(ks), np.log(errs), 1)[0])


def test_ddim_is_first_order():
    ks = [16, 32, 64, 128]
    errs = pf_errors("ddim", "linear", "linear", ks)
    assert -1.1 < slope(ks, errs) < -0.9, errs


def test_dpm_solver_pp_2m_is_second_order_on_cosine():
    ks = [64, 128, 256, 512]
    errs = pf_errors("dpm-solver++2m", "cosine", "logsnr", ks)
    assert -2.2 < slope(ks, errs) < -1.8, errs


def test_dpm_solver_pp_2m_on_linear_schedule_depends_on_the_last_grid_time():
    """The last step (to t = 0, logsnr = +inf) is first order: its error is about
    sigma^2(t_{K-1}) / (2 alpha^2 s^2) |x_0 - m|. On the quadratic stride sigma^2(1/K^2) = O(1/K^2)
    and the solver stays second order; on the linear stride sigma^2(1/K) ~ beta_min / K and that one
    step dominates once K is large (seen: local slopes -0.6, -0.8 from K = 1024 to 4096, the
    error at most the predicted one-step error)."""
    quad_ks = [32, 64, 128, 256]
    assert -2.2 < slope(quad_ks, pf_errors("dpm-solver++2m", "linear", "quadratic", quad_ks)) < -1.8
    lin_ks = [2048, 4096]
    errs = pf_errors("dpm-solver++2m", "linear", "linear", lin_ks)
    assert slope(lin_ks, errs) > -1.2, errs
    sched = schedules.get("linear")
    last = [float(sched.sigma(1.0 / K)) ** 2 / (2 * float(sched.alpha(1.0 / K)) ** 2 * S1**2) * 2.5 * S1 for K in lin_ks]
    assert all(e < 1.01 * p for e, p in zip(errs, last)), (errs, last)


def test_ipndm_converges():
    """Fixed Adams-Bashforth weights on a non-uniform grid: order 2 measured, not 4."""
    ks = [16, 32, 64, 128]
    errs = pf_errors("ipndm", "linear", "quadratic", ks)
    assert slope(ks, errs) < -1.8, errs
    assert errs[-1] < 1e-3


def test_ddpm_with_many_steps_matches_the_mixture_moments():
    sched = schedules.get("cosine")
    n = 20_000
    x_T = jax.random.normal(jax.random.key(0), (n, 2), jnp.float64)
    x0 = np.asarray(samplers.sample("ddpm", GMM.eps_fn(sched), sched, x_T, 200, key=jax.random.key(1)))
    mean = WEIGHTS @ MEANS
    second = sum(w * (s**2 * np.eye(2) + np.outer(m, m)) for w, m, s in zip(WEIGHTS, MEANS, STDS))
    cov = second - np.outer(mean, mean)
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x0.mean(0) - mean) < 4 * se_mean), (x0.mean(0), mean)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)  # Gaussian approximation
    assert np.all(np.abs(np.cov(x0.T) - cov) < 5 * se_cov), (np.cov(x0.T), cov)


@pytest.mark.parametrize("name", BASELINES + MULTISTEP)
def test_nan_eps_raises_naming_sampler_and_step(name):
    sched = schedules.get("cosine")
    inner = GMM.eps_fn(sched)

    def eps_fn(x, t):
        return jnp.where(t[:, None] < 0.5, jnp.nan, inner(x, t))  # grid 1, .75, .5, .25: NaN from step 4

    with pytest.raises(samplers.SamplerDiverged, match=rf"sampler '{re.escape(name)}' .* at step 4 of 4"):
        samplers.sample(name, eps_fn, sched, jnp.ones((3, 2)), 4, key=jax.random.key(0), stride="linear")
    # the same sampler is fine when eps is
    x0 = samplers.sample(name, inner, sched, jnp.ones((3, 2)), 4, key=jax.random.key(0), stride="linear")
    assert np.all(np.isfinite(np.asarray(x0)))


@pytest.mark.parametrize("name", BASELINES + MULTISTEP)
def test_nfe_counts_model_evaluations(name):
    sched = schedules.get("linear")
    assert model_calls(name, GMM.eps_fn(sched), sched, jnp.zeros((4, 2)), 5) == samplers.nfe(name, 5) == 5
    assert [samplers.nfe(name, K) for K in (1, 10, 1000)] == [1, 10, 1000]


def test_bad_names_steps_and_strides_list_the_valid_choices():
    sched = schedules.get("cosine")
    eps_fn = GMM.eps_fn(sched)
    x_T = jnp.zeros((2, 2))
    for call in (lambda: samplers.sample("ddmi", eps_fn, sched, x_T, 4), lambda: samplers.nfe("ddmi", 4)):
        with pytest.raises(ValueError, match=r"^unknown sampler 'ddmi'; valid choices: ") as err:
            call()
        assert set(str(err.value).split(": ", 1)[1].split(", ")) >= set(BASELINES) | {"accel-ddim", "accel-ddpm"}
    with pytest.raises(ValueError, match=r"unknown stride 'cubic'; valid choices: linear, quadratic, logsnr"):
        samplers.sample("ddim", eps_fn, sched, x_T, 4, stride="cubic")
    for K in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=r"steps K must be an integer >= 1"):
            samplers.sample("ddim", eps_fn, sched, x_T, K)
        with pytest.raises(ValueError, match=r"steps K must be an integer >= 1"):
            samplers.nfe("ddim", K)
    with pytest.raises(ValueError, match=r"unknown schedule 'cosin'; valid choices: cosine, linear"):
        samplers.sample("ddim", eps_fn, "cosin", x_T, 4)
    with pytest.raises(ValueError, match=r"grid must have steps\+1 = 5 times"):
        samplers.sample("ddim", eps_fn, sched, x_T, 4, grid=np.linspace(1.0, 0.0, 4))
    with pytest.raises(ValueError, match=r"'ddpm' is stochastic"):
        samplers.sample("ddpm", eps_fn, sched, x_T, 4)
