"""The shared step maths against float64 NumPy closed forms (VP: alpha^2 + sigma^2 = 1, step
from t to the less noisy s < t)."""
import jax
import numpy as np
import pytest

from pipeline.samplers.steps import data_step, ddim_noise_std, ddim_step, forward_noise, x0_from_eps

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
