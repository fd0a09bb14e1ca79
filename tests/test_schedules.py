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
        assert g.shape == (K + 1,) and g[-1] == 0.0 and np.all(np.diff(g) < 0)
        assert g[0] == (0.901 if stride == "leading" else 1.0)  # leading's first timestep is 900 of 0..999
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
    with pytest.raises(ValueError, match="linear, quadratic, logsnr, karras, leading, trailing, linspace"):
        schedules.time_grid(5, "cubic")


T_MAXES = [1.0, 0.8, 0.3]


def test_old_grids_unchanged_at_t_max_one():
    """linear, quadratic, logsnr with the default t_max are bit for bit the grids they always were."""
    K = 7
    u = 1.0 - np.arange(K + 1, dtype=np.float64) / K
    assert np.array_equal(schedules.time_grid(K, "linear"), u)
    assert np.array_equal(schedules.time_grid(K, "quadratic", t_max=1.0), u * u)
    s = schedules.get("cosine")
    lam = float(s.logsnr(1.0)) + (1.0 - u) * (20.0 - float(s.logsnr(1.0)))
    ref = np.array(s.t_from_logsnr(lam), np.float64)
    ref[0], ref[-1] = 1.0, 0.0
    assert np.array_equal(schedules.time_grid(K, "logsnr", s), ref)


@pytest.mark.parametrize("t_max", T_MAXES)
def test_linear_quadratic_logsnr_with_t_max(t_max):
    K = 6
    i = np.arange(K + 1, dtype=np.float64)
    np.testing.assert_allclose(schedules.time_grid(K, "linear", t_max=t_max), t_max * (K - i) / K, rtol=1e-15, atol=1e-16)
    np.testing.assert_allclose(schedules.time_grid(K, "quadratic", t_max=t_max), t_max * ((K - i) / K) ** 2,
                               rtol=1e-15, atol=1e-16)
    for name in ("cosine", "linear"):
        s = schedules.get(name)
        g = schedules.time_grid(K, "logsnr", s, t_max=t_max)
        lam_lo = float(cosine_alpha2_reference(np.float64(t_max))[1]) if name == "cosine" else float(s.logsnr(t_max))
        lam = np.asarray(s.logsnr(g[:-1]))
        np.testing.assert_allclose(lam, lam_lo + i[:-1] / K * (20.0 - lam_lo), rtol=1e-9, atol=1e-9)
        assert g[0] == t_max and g[-1] == 0.0


def edm_sigmas_reference(K, smax, smin=0.002, rho=7.0):
    """Karras et al. 2022 eq. 5, written out term by term."""
    return [(smax ** (1 / rho) + i / (K - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho for i in range(K)]


@pytest.mark.parametrize("t_max", T_MAXES)
@pytest.mark.parametrize("K", [2, 3, 10, 40])
def test_karras_grid_follows_edm_formula(K, t_max):
    for name in ("cosine", "linear"):
        s = schedules.get(name)
        g = schedules.time_grid(K, "karras", s, t_max=t_max)
        assert g.shape == (K + 1,) and g[0] == t_max and g[-1] == 0.0 and np.all(np.diff(g) < 0)
        # sigma_edm = sigma / alpha = sqrt((1 - abar) / abar) of the grid's times
        if name == "cosine":
            a2 = cosine_alpha2_reference(g[:-1])[0]
            a2_max = cosine_alpha2_reference(np.float64(t_max))[0]
        else:
            a2 = np.exp(-(0.1 * g[:-1] + 0.5 * 19.9 * g[:-1] ** 2))
            a2_max = math.exp(-(0.1 * t_max + 0.5 * 19.9 * t_max**2))
        sigma_edm = np.sqrt((1 - a2) / a2)
        ref = edm_sigmas_reference(K, math.sqrt((1 - a2_max) / a2_max))
        np.testing.assert_allclose(sigma_edm, ref, rtol=1e-9)
        assert abs(ref[-1] - 0.002) < 1e-15


def test_karras_one_step_and_rho():
    assert schedules.KARRAS_RHO == 7
    np.testing.assert_array_equal(schedules.time_grid(1, "karras", t_max=0.6), [0.6, 0.0])


# diffusers DDIMScheduler.set_timesteps(5) over 1000 training steps, computed by hand:
# leading: 1000 // 5 = 200 -> 0, 200, .., 800 reversed; trailing: 1000, 800, .., 200 minus 1;
# linspace: 0, 249.75, 499.5, 749.25, 999 rounded half to even -> 0, 250, 500, 749, 999 reversed.
DIFFUSERS_K5 = {"leading": [800, 600, 400, 200, 0], "trailing": [999, 799, 599, 399, 199],
                "linspace": [999, 749, 500, 250, 0]}


@pytest.mark.parametrize("t_max", T_MAXES)
@pytest.mark.parametrize("spacing", sorted(DIFFUSERS_K5))
def test_diffusers_spacings_by_hand(spacing, t_max):
    n = np.array(DIFFUSERS_K5[spacing])
    np.testing.assert_array_equal(schedules.diffusers_timesteps(5, spacing), n)
    g = schedules.time_grid(5, spacing, t_max=t_max)
    np.testing.assert_allclose(g, np.append(t_max * (n + 1) / 1000.0, 0.0), rtol=1e-15, atol=0)
    assert g[-1] == 0.0 and np.all(np.diff(g) < 0)


def test_diffusers_spacings_other_step_counts():
    # K = 3: leading 1000 // 3 = 333; trailing 1000 - i * 333.33.. rounded; linspace 0, 499.5, 999
    np.testing.assert_array_equal(schedules.diffusers_timesteps(3, "leading"), [666, 333, 0])
    np.testing.assert_array_equal(schedules.diffusers_timesteps(3, "trailing"), [999, 666, 332])
    np.testing.assert_array_equal(schedules.diffusers_timesteps(3, "linspace"), [999, 500, 0])
    # K = 61: NumPy's arange(1000, 0, -1000/61) has a 62nd element ~0; the K timesteps end at 16.39.. -> 15
    n = schedules.diffusers_timesteps(61, "trailing")
    assert n.shape == (61,) and n[0] == 999 and n[-1] == 15
    for spacing in schedules.DIFFUSERS_STRIDES:
        np.testing.assert_array_equal(schedules.diffusers_timesteps(1000, spacing), np.arange(999, -1, -1))
        assert schedules.diffusers_timesteps(1, spacing)[0] == (999 if spacing == "trailing" else 0)
        with pytest.raises(UserError, match="at most 1000 steps, got 1001"):
            schedules.time_grid(1001, spacing)


@pytest.mark.parametrize("stride", schedules.STRIDES)
def test_every_grid_respects_t_max(stride):
    for t_max in (1.0, 0.5, 0.05, 0.37):
        for K in (1, 4, 25):
            g = schedules.time_grid(K, stride, t_max=t_max)
            assert g.dtype == np.float64 and g.shape == (K + 1,) and g[-1] == 0.0
            assert np.all(np.diff(g) < 0) and 0.0 < g[0] <= t_max
            if stride not in ("leading", "linspace"):  # their first timestep is below 999 for some K
                assert g[0] == t_max


@pytest.mark.parametrize("stride", schedules.HALVING_STRIDES)
def test_halving_strides_nest(stride):
    for K in (1, 3, 8):
        fine, coarse = schedules.time_grid(2 * K, stride, t_max=0.7), schedules.time_grid(K, stride, t_max=0.7)
        np.testing.assert_allclose(fine[::2], coarse, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, float("nan"), float("inf"), "0.5", True, None])
def test_bad_t_max(bad):
    with pytest.raises(UserError, match=r"t_max must be a number in \(0, 1\]") as e:
        schedules.time_grid(4, "linear", t_max=bad)
    assert "\n" not in str(e.value)


def test_grid_too_close_to_data_is_rejected():
    # sigma_edm(1e-4) ~ 1.6e-4 is below EDM's sigma_min = 0.002: no decreasing Karras grid
    with pytest.raises(UserError, match="not strictly decreasing"):
        schedules.time_grid(4, "karras", t_max=1e-4)


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
