"""A training-free sampler as exact GGDM parameters (pipeline.samplers.linear): GGDM with them runs the
sampler's own chain on a nonlinear model (an exact Gaussian-mixture denoiser), in float64, on any grid;
DDIM's agree with ggdm.init_params (written independently); what GGDM cannot express is refused."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pipeline import samplers, schedules
from pipeline.errors import UserError
from pipeline.models.analytic import GaussianMixture
from pipeline.samplers import ggdm, linear


@pytest.fixture(autouse=True, scope="module")
def _float64():
    with jax.enable_x64(True):
        yield


GM = GaussianMixture(np.array([[-2.0, 0.5], [1.5, 1.0], [0.0, -2.0]]), np.array([0.3, 0.5, 0.2]), np.array([0.3, 0.5, 0.2]))
SCHED = schedules.get("cosine")
EPS = GM.eps_fn(SCHED)  # one function for every test: the jitted GGDM chain of a K and variant compiles once


@pytest.mark.parametrize("name", linear.STARTS)
@pytest.mark.parametrize("stride,t_max,K,variants", [("linear", 0.97, 6, ggdm.VARIANTS), ("logsnr", 1.0, 5, ("ggdm+pred+time",)),
                                                     ("karras", 0.99, 7, ("ggdm",))])
def test_ggdm_runs_the_sampler_exactly(name, stride, t_max, K, variants):
    sched, eps_fn = SCHED, EPS
    x_T = jax.random.normal(jax.random.key(0), (128, 2), jnp.float64)
    grid = schedules.time_grid(K, stride, sched, t_max)
    ref = np.asarray(samplers.sample(name, eps_fn, sched, x_T, K, grid=grid))
    for variant in variants:
        p = linear.ggdm_params(name, K, variant, sched, stride, t_max, dtype=jnp.float64)
        assert ggdm.variant_of(p) == variant and not np.any(np.asarray(p["sigma"]))
        np.testing.assert_allclose(np.asarray(ggdm.model_times(p)), grid[:-1], rtol=1e-12, atol=1e-12)
        out = samplers.sample("ggdm", eps_fn, sched, x_T, K, key=jax.random.key(1), params=p)
        np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-7, atol=1e-7 * np.abs(ref).max(), err_msg=variant)


def test_ddim_traced_equals_init_params():
    sched = schedules.get("cosine")
    for variant in ggdm.VARIANTS:
        a = linear.ggdm_params("ddim", 5, variant, sched, "quadratic", 0.9, dtype=jnp.float64)
        b = ggdm.init_params(5, variant, sched, "quadratic", dtype=jnp.float64, t_max=0.9)
        assert sorted(a) == sorted(b)
        for k in a:
            np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=1e-10, atol=1e-12, err_msg=(variant, k))


def test_a_multistep_sampler_uses_earlier_predictions():
    """+PRED's weights on older predictions are the multistep rule's (not zero as in DDIM's): DPM-Solver++(2M)'s
    second step is x0 weighted (1 + 1/(2r), -1/(2r)) with r = h_prev / h (Lu et al. 2022, Alg. 2)."""
    sched = schedules.get("cosine")
    grid = schedules.time_grid(4, "linear", sched, 0.97)
    p = linear.ggdm_params("dpm-solver++2m", 4, "ggdm+pred", sched, "linear", 0.97, dtype=jnp.float64)
    lam = 0.5 * np.asarray(sched.logsnr(grid), np.float64)
    h, h_prev = lam[2] - lam[1], lam[1] - lam[0]
    r = h_prev / h
    a_s, s_s, s_t = float(sched.alpha(grid[2])), float(sched.sigma(grid[2])), float(sched.sigma(grid[1]))
    scale = a_s * (1.0 - np.exp(-h))  # data_step's weight on its x0: alpha_s (1 - e^-h)
    mu = np.asarray(p["mu_pred"])
    np.testing.assert_allclose(mu[1, :2], scale * np.array([-1 / (2 * r), 1 + 1 / (2 * r)]), rtol=1e-9)
    np.testing.assert_allclose(float(p["mu_x"][1, 1]), s_s / s_t, rtol=1e-9)


@pytest.mark.parametrize("name", ["ddpm", "accel-ddpm", "ggdm"])
def test_what_ggdm_cannot_start_from_is_refused(name):
    with pytest.raises(UserError, match=name):
        linear.ggdm_params(name, 4, "ggdm+pred+time", "cosine", "linear")


def test_every_deterministic_training_free_sampler_can_start_a_search():
    deterministic = {n for n in samplers.names() if not samplers.get(n).stochastic and not n.startswith("student")}
    assert set(linear.STARTS) == deterministic
