"""The shared step maths against float64 NumPy closed forms and quadratures (VP: alpha^2 + sigma^2 = 1,
step from t to the less noisy s < t)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pipeline.samplers.steps import (data_step, ddim_noise_std, ddim_step, exp_moments, forward_noise, interp_weights, phi,
                                     x0_from_eps)

RNG = np.random.default_rng(0)
B = 6
A_T = RNG.uniform(0.05, 0.7, (B, 1))  # alpha_t < alpha_s: s is less noisy
A_S = np.minimum(A_T + RNG.uniform(0.05, 0.3, (B, 1)), 0.99)
S_T, S_S = np.sqrt(1 - A_T**2), np.sqrt(1 - A_S**2)
X, EPS, Z, X0 = (RNG.standard_normal((B, 3)) for _ in range(4))


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def close(a, b):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-12, atol=1e-12)


def test_x0_from_eps_inverts_the_forward_process():
    x_t = A_T * X0 + S_T * EPS
    close(x0_from_eps(x_t, EPS, A_T, S_T), X0)
    close(x0_from_eps(X, EPS, A_T, S_T), (X - S_T * EPS) / A_T)


def test_deterministic_ddim_step():
    x0 = (X - S_T * EPS) / A_T
    close(ddim_step(X, EPS, A_T, S_T, A_S, S_S), A_S * x0 + S_S * EPS)
    close(ddim_step(X, EPS, A_T, S_T, A_S, S_S, eta=0.0, z=Z), A_S * x0 + S_S * EPS)  # eta = 0: z unused


def test_ddim_noise_std_at_eta_one_is_the_ddpm_posterior_std():
    """DDPM (Ho et al. 2020, eq. 7): beta_tilde = (1 - abar_s) / (1 - abar_t) beta, beta = 1 - abar_t / abar_s."""
    abar_t, abar_s = A_T**2, A_S**2
    beta = 1 - abar_t / abar_s
    close(ddim_noise_std(A_T, S_T, A_S, S_S, 1.0), np.sqrt((1 - abar_s) / (1 - abar_t) * beta))
    close(ddim_noise_std(A_T, S_T, A_S, S_S, 0.3), 0.3 * np.sqrt((1 - abar_s) / (1 - abar_t) * beta))
    close(ddim_noise_std(A_T, S_T, A_T, S_T, 1.0), 0.0)  # t = s: no noise


def test_stochastic_ddim_step_at_eta_one_is_the_ddpm_posterior_draw():
    """x_s = mu_tilde(x_t, x0_hat) + sqrt(beta_tilde) z (Ho et al. 2020, eqs. 6-7)."""
    abar_t, abar_s = A_T**2, A_S**2
    beta = 1 - abar_t / abar_s
    x0 = (X - S_T * EPS) / A_T
    mean = A_S * beta / (1 - abar_t) * x0 + np.sqrt(1 - beta) * (1 - abar_s) / (1 - abar_t) * X
    close(ddim_step(X, EPS, A_T, S_T, A_S, S_S, eta=1.0, z=Z), mean + np.sqrt((1 - abar_s) / (1 - abar_t) * beta) * Z)


def test_stochastic_ddim_step_closed_form():
    eta = 0.6
    c = eta * S_S / S_T * np.sqrt(1 - A_T**2 / A_S**2)
    x0 = (X - S_T * EPS) / A_T
    close(ddim_step(X, EPS, A_T, S_T, A_S, S_S, eta=eta, z=Z), A_S * x0 + np.sqrt(S_S**2 - c**2) * EPS + c * Z)


def test_data_step_is_ddim_with_eps_from_x0():
    eps = (X - A_T * X0) / S_T
    close(data_step(X, X0, A_T, S_T, A_S, S_S), S_S / S_T * X + (A_S - A_T * S_S / S_T) * X0)
    close(data_step(X, X0, A_T, S_T, A_S, S_S), ddim_step(X, eps, A_T, S_T, A_S, S_S))


def test_forward_noise_closed_form_and_marginal():
    """Here k is the less noisy time (alpha_k = A_S) and s the noisier one (alpha_s = A_T)."""
    a = A_T / A_S
    close(forward_noise(X, A_S, S_S, A_T, S_T, Z), a * X + np.sqrt(S_T**2 - a**2 * S_S**2) * Z)
    # x_k = alpha_k x0 + sigma_k e gives x_s = alpha_s x0 + (a sigma_k e + sqrt(.) z): variance sigma_s^2
    x_k = A_S * X0 + S_S * EPS
    resid = np.asarray(forward_noise(x_k, A_S, S_S, A_T, S_T, Z)) - A_T * X0
    coef_e, coef_z = a * S_S, np.sqrt(S_T**2 - a**2 * S_S**2)
    close(resid, coef_e * EPS + coef_z * Z)
    close(coef_e**2 + coef_z**2, S_T**2)
    close(forward_noise(X, A_S, S_S, A_S, S_S, Z), X)  # s = k: identity


# ----------------------------------------------------------------------------------------
# Exponential-integrator maths of the multistep samplers, against Gauss-Legendre quadrature.

GL_U, GL_W = np.polynomial.legendre.leggauss(60)
GL_U, GL_W = 0.5 * (GL_U + 1.0), 0.5 * GL_W  # on [0, 1]


def quad01(f):
    """int_0^1 f(u) du for a smooth f (60-point Gauss-Legendre: exact to rounding for these integrands)."""
    return float(np.sum(GL_W * f(GL_U)))


def test_phi_is_the_integral_definition_on_both_branches():
    """phi_k(z) = int_0^1 e^{(1-u) z} u^{k-1} / (k-1)! du (k >= 1), phi_0 = e^z, either side of |z| = 1."""
    for z in (-30.0, -5.0, -1.0001, -0.9999, -0.3, -1e-3, -1e-9, 0.0, 1e-3, 0.5, 0.9999, 1.0001, 2.0):
        assert float(phi(0, z)) == pytest.approx(math.exp(z), rel=1e-14)
        for k in range(1, 5):
            ref = quad01(lambda u: np.exp((1 - u) * z) * u ** (k - 1) / math.factorial(k - 1))
            assert float(phi(k, z)) == pytest.approx(ref, rel=1e-12, abs=1e-300), (k, z)


def test_phi_keeps_float32_precision_near_zero_and_has_finite_gradients():
    """The recursion (phi_k - 1/k!)/z loses everything for small z in float32; the series does not."""
    with jax.enable_x64(False):
        for z in (-1e-3, -1e-5, 0.0):
            got = phi(4, jnp.float32(z))
            assert got.dtype == jnp.float32
            assert float(got) == pytest.approx(quad01(lambda u: np.exp((1 - u) * z) * u**3 / 6), rel=1e-6)
        grads = [float(jax.grad(lambda v: phi(3, v))(jnp.float32(z))) for z in (-2.0, -1e-4, 0.0)]
    assert np.all(np.isfinite(grads)) and grads[2] == pytest.approx(1 / 24, rel=1e-6)  # phi_3'(0) = 1/4!


def test_exp_moments_are_the_normalised_moments_of_the_exponential_weight():
    for h in (1e-7, 0.05, 0.7, 1.3, 5.0, 40.0):
        got = np.asarray(exp_moments(h, 4))
        norm = quad01(lambda u: np.exp(-h * (1 - u)))
        ref = [quad01(lambda u: np.exp(-h * (1 - u)) * u**k) / norm for k in range(4)]
        np.testing.assert_allclose(got, ref, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(exp_moments(0.0, 4)), [1, 1 / 2, 1 / 3, 1 / 4], rtol=1e-15)  # h -> 0: Adams


def test_interp_weights_meet_the_moment_conditions_and_vanish_past_n():
    rng = np.random.default_rng(1)
    r = np.array([0.0, -0.8, -1.9, 1.0])  # the nodes of a corrector: current, two past, the new point
    beta = rng.standard_normal(4)
    for n in range(1, 5):
        w = np.asarray(jax.jit(interp_weights)(r, beta, n))  # n traced
        powers = np.vander(r, 4, increasing=True).T  # [k, j] = r_j^k
        np.testing.assert_allclose(powers[:n, :n] @ w[:n], beta[:n], rtol=1e-12, atol=1e-12)
        assert np.all(w[n:] == 0.0)
        # only the first n nodes matter: the others may even repeat a used one
        np.testing.assert_array_equal(np.asarray(interp_weights(np.r_[r[:n], [r[0]] * (4 - n)], beta, n)), w)


def test_a_data_step_with_interpolated_x0_is_exact_for_polynomial_x0_in_lambda():
    """Variation of constants (DPM-Solver++ eq. 9): x_s = (sigma_s/sigma_t) x_t + alpha_s int_0^h e^{tau - h}
    x0(lambda_t + tau) dtau when x0 depends on lambda only. With n nodes and the exact moments the step is exact
    for x0 of degree n - 1 in lambda, and off for degree n."""
    rng = np.random.default_rng(2)
    lam_t, h = -0.4, 0.9
    a_t, s_t, a_s, s_s = _coeffs(lam_t, h)
    x_t = rng.standard_normal(3)
    for nodes in ([0.0, -1.0, -2.3], [1.0, 0.0, -0.7, -1.6]):  # a predictor's and a corrector's
        n = len(nodes)
        for degree, exact in ((n - 1, True), (n, False)):
            coef = rng.standard_normal((degree + 1, 3))

            def x0(lam):
                u = (np.asarray(lam) - lam_t) / h
                return sum(c * u[..., None] ** k for k, c in enumerate(coef))

            integral = h * np.sum((GL_W * np.exp((GL_U - 1) * h))[:, None] * x0(lam_t + GL_U * h), 0)
            ref = s_s / s_t * x_t + a_s * integral
            w = np.asarray(interp_weights(np.array(nodes), exp_moments(h, n), n))
            got = np.asarray(data_step(x_t, w @ x0(lam_t + np.array(nodes) * h), a_t, s_t, a_s, s_s))
            if exact:
                np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
            else:
                assert np.max(np.abs(got - ref)) > 1e-4


def _coeffs(lam_t, h):
    """(alpha_t, sigma_t, alpha_s, sigma_s) at lambda_t and lambda_t + h (alpha = sigmoid(2 lambda)^(1/2))."""
    a = [np.sqrt(1 / (1 + np.exp(-2 * lam))) for lam in (lam_t, lam_t + h)]
    s = [np.sqrt(1 / (1 + np.exp(2 * lam))) for lam in (lam_t, lam_t + h)]
    return a[0], s[0], a[1], s[1]
