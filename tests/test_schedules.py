"""Schedules and time grids against float64 closed forms written independently here."""
import math

import jax
import numpy as np
import pytest

from pipeline import schedules
from pipeline.errors import UserError


@pytest.fixture(autouse=True, scope="module")
def _float64():
    """float64 for this module only (a global jax_enable_x64 would leak into every later test)."""
    with jax.enable_x64(True):
        yield

T = np.linspace(0.0, 1.0, 101)


def cosine_alpha2_reference(t, lmin=-20.0, lmax=20.0):
    """alpha^2 = sigmoid(logsnr), logsnr = -2 log tan(a t + b) (the truncated cosine of VDM)."""
    b = math.atan(math.exp(-lmax / 2))
    a = math.atan(math.exp(-lmin / 2)) - b
    lam = -2 * np.log(np.tan(a * t + b))
    return 1 / (1 + np.exp(-lam)), lam


def test_cosine_matches_closed_form_and_plain_cosine():
    s = schedules.get("cosine")
    a2, lam = cosine_alpha2_reference(T)
    np.testing.assert_allclose(np.asarray(s.alpha(T)) ** 2, a2, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.asarray(s.logsnr(T)), lam, rtol=1e-12)
    # Away from the truncation, this is the plain alpha = cos(pi t / 2).
    mid = T[10:-10]
    np.testing.assert_allclose(np.asarray(s.alpha(mid)), np.cos(np.pi * mid / 2), atol=2e-4)


def test_linear_matches_vp_sde_integral():
    s = schedules.get("linear")
    # abar(t) = exp(-int_0^t beta(u) du), beta(u) = 0.1 + 19.9 u, integrated numerically here.
    u = np.linspace(0, 1, 200001)
    beta = 0.1 + 19.9 * u
    integral = np.concatenate([[0.0], np.cumsum(0.5 * (beta[1:] + beta[:-1]) * np.diff(u))])
    abar = np.exp(-np.interp(T, u, integral))
    np.testing.assert_allclose(np.asarray(s.alpha(T)) ** 2, abar, rtol=1e-8)
    assert float(s.sigma(0.0)) == 0.0 and float(s.alpha(0.0)) == 1.0


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_variance_preserving_and_monotone(name):
    s = schedules.get(name)
    t = T[1:]
    np.testing.assert_allclose(np.asarray(s.alpha(t) ** 2 + s.sigma(t) ** 2), 1.0, atol=1e-12)
    assert np.all(np.diff(np.asarray(s.logsnr(t))) < 0)


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_t_from_logsnr_inverts(name):
    s = schedules.get(name)
    t = np.linspace(0.01, 1.0, 50)
    np.testing.assert_allclose(np.asarray(s.t_from_logsnr(s.logsnr(t))), t, rtol=1e-9, atol=1e-12)


def test_time_grids():
    K = 10
    lin = schedules.time_grid(K, "linear")
    quad = schedules.time_grid(K, "quadratic")
    np.testing.assert_allclose(lin, [1 - i / K for i in range(K + 1)], atol=1e-15)
    np.testing.assert_allclose(quad, [((K - i) / K) ** 2 for i in range(K + 1)], atol=1e-15)
    for stride in schedules.STRIDES:
        g = schedules.time_grid(K, stride)
        assert g.shape == (K + 1,) and g[0] == 1.0 and g[-1] == 0.0
        assert np.all(np.diff(g) < 0)
    s = schedules.get("cosine")
    lam = np.asarray(s.logsnr(schedules.time_grid(K, "logsnr", s)[:-1]))
    np.testing.assert_allclose(np.diff(lam), np.full(K - 1, (20 - float(s.logsnr(1.0))) / K), rtol=1e-9)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_steps(bad):
    with pytest.raises(ValueError, match="integer >= 1"):
        schedules.time_grid(bad, "linear")


def test_bad_names_list_choices():
    with pytest.raises(UserError, match="valid choices: cosine, linear"):
        schedules.get("sigmoid")
    with pytest.raises(ValueError, match="linear, quadratic, logsnr"):
        schedules.time_grid(5, "cubic")


def test_discrete_wrapper_matches_ddpm_alphas_and_indices():
    d = schedules.DiscreteSchedule(1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)
    n = np.array([0, 1, 499, 999])
    t = (n + 1) / 1000.0
    np.testing.assert_allclose(np.asarray(d.schedule.alpha(t)) ** 2, abar[n], rtol=1e-10)
    seen = {}

    def eps_discrete(x, steps):
        seen["n"] = np.asarray(steps)
        return x

    d.wrap(eps_discrete)(np.zeros((4, 2)), t)
    np.testing.assert_array_equal(seen["n"], n)
