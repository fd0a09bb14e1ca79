"""The student samplers ("student-ddim", "student-stochastic") against float64 NumPy loops written
here from the papers' update rules, with an exact Gaussian-mixture denoiser also written here."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import model_calls
from pipeline import samplers, schedules
from pipeline.errors import UserError
from pipeline.models.analytic import GaussianMixture
from pipeline.samplers.chain import noise_like


@pytest.fixture(autouse=True, scope="module")
def _float64():
    """float64 for this module only (a global jax_enable_x64 would leak into every later test)."""
    with jax.enable_x64(True):
        yield

MEANS = np.array([[1.5, -0.5], [-1.0, 1.0]])
STDS = np.array([0.3, 0.5])
WEIGHTS = np.array([0.4, 0.6])
GMM = GaussianMixture(MEANS, STDS, WEIGHTS)


def np_alpha_sigma_lambda(sched, t):
    lam = float(np.asarray(sched.logsnr(np.float64(t))))
    a2 = 1.0 / (1.0 + np.exp(-lam))
    return np.sqrt(a2), np.sqrt(1.0 - a2), lam


def np_eps(x, alpha, sigma):
    """Tweedie: eps = sigma (x - alpha E[x0 | x]) / sigma^2 ... written as sigma sum_k r_k (x - alpha m_k) / v_k."""
    v = alpha**2 * STDS**2 + sigma**2  # [K]
    diff = x[:, None, :] - alpha * MEANS[None]  # [B, K, d]
    logits = np.log(WEIGHTS)[None] - 0.5 * np.sum(diff**2, -1) / v - 0.5 * x.shape[1] * np.log(v)
    r = np.exp(logits - logits.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    return sigma * np.sum((r / v)[..., None] * diff, axis=1)


def np_x_hat(x, t, sched):
    a, s, _ = np_alpha_sigma_lambda(sched, t)
    return (x - s * np_eps(x, a, s)) / a


def np_ddim_to(x, x0, t, k, sched):
    """DDIM: z_k = alpha_k x0 + sigma_k (z_t - alpha_t x0) / sigma_t (Song et al. 2021, eq. 12)."""
    a_t, s_t, _ = np_alpha_sigma_lambda(sched, t)
    a_k, s_k, _ = np_alpha_sigma_lambda(sched, k)
    return a_k * x0 + s_k * (x - a_t * x0) / s_t


def np_student_ddim(x, grid, sched):
    for i in range(len(grid) - 1):
        x0 = np_x_hat(x, grid[i], sched)
        x = x0 if i == len(grid) - 2 else np_ddim_to(x, x0, grid[i], grid[i + 1], sched)
    return x


def np_student_stochastic(x, grid, sched, noises):
    """Meng et al. 2023 sec. 4.3: z_k by DDIM two steps ahead, then z_s = (alpha_s/alpha_k) z_k
    + sqrt((1 - exp(lambda_s - lambda_k)) sigma_s^2) eps; the last step returns x0_hat."""
    K = len(grid) - 1
    for i in range(K):
        x0 = np_x_hat(x, grid[i], sched)
        if i == K - 1:
            return x0
        k, s = grid[i + 2], grid[i + 1]
        z_k = np_ddim_to(x, x0, grid[i], k, sched)
        a_k, _, lam_k = np_alpha_sigma_lambda(sched, k)
        a_s, s_s, lam_s = np_alpha_sigma_lambda(sched, s)
        x = (a_s / a_k) * z_k + np.sqrt((1.0 - np.exp(lam_s - lam_k)) * s_s**2) * noises[i]
    return x


@pytest.mark.parametrize("sched_name,K", [("cosine", 1), ("cosine", 5), ("linear", 2)])
def test_student_ddim_matches_float64_loop(sched_name, K):
    sched = schedules.get(sched_name)
    x_T = np.random.default_rng(0).standard_normal((16, 2))
    grid = schedules.time_grid(K, "linear")
    got = samplers.sample("student-ddim", GMM.eps_fn(sched), sched, jnp.asarray(x_T), K, stride="linear")
    want = np_student_ddim(x_T, grid, sched)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("sched_name,K", [("cosine", 6), ("linear", 3)])
def test_student_stochastic_matches_float64_loop(sched_name, K):
    sched = schedules.get(sched_name)
    x_T = np.random.default_rng(1).standard_normal((16, 2))
    key = jax.random.key(3)
    grid = schedules.time_grid(K, "quadratic")
    noises = [np.asarray(noise_like(key, i, jnp.asarray(x_T))) for i in range(K)]
    eps_fn = GMM.eps_fn(sched)
    got = samplers.sample("student-stochastic", eps_fn, sched, jnp.asarray(x_T), K, key=key)
    want = np_student_stochastic(x_T, grid, sched, noises)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-7, atol=1e-7)
    # the noise matters: another key gives other samples
    other = samplers.sample("student-stochastic", eps_fn, sched, jnp.asarray(x_T), K, key=jax.random.key(4))
    assert np.max(np.abs(np.asarray(other) - want)) > 1e-2


def test_one_step_samplers_agree_and_return_x_hat():
    sched = schedules.get("cosine")
    x_T = jnp.asarray(np.random.default_rng(2).standard_normal((8, 2)))
    eps_fn = GMM.eps_fn(sched)
    det = samplers.sample("student-ddim", eps_fn, sched, x_T, 1)
    sto = samplers.sample("student-stochastic", eps_fn, sched, x_T, 1, key=jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(det), np.asarray(sto))
    np.testing.assert_allclose(np.asarray(det), np_x_hat(np.asarray(x_T), 1.0, sched), rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("name", ["student-ddim", "student-stochastic"])
@pytest.mark.parametrize("K", [1, 5])
def test_nfe_is_the_number_of_model_evaluations(name, K):
    sched = schedules.get("linear")
    assert model_calls(name, GMM.eps_fn(sched), sched, jnp.zeros((4, 2)), K) == samplers.nfe(name, K) == K


@pytest.mark.parametrize("name", ["student-ddim", "student-stochastic"])
def test_many_steps_with_the_exact_denoiser_reach_the_mixture(name):
    """With the exact eps and 256 steps both samplers draw from the mixture: mean and covariance
    within sampling error of the exact ones."""
    sched = schedules.get("cosine")
    n = 4000
    x_T = jax.random.normal(jax.random.key(5), (n, 2), jnp.float64)
    x0 = np.asarray(samplers.sample(name, GMM.eps_fn(sched), sched, x_T, 256, key=jax.random.key(6)))
    ref = np.asarray(GMM.sample(jax.random.key(7), 200_000, jnp.float64))
    np.testing.assert_allclose(x0.mean(0), ref.mean(0), atol=0.06)
    np.testing.assert_allclose(np.cov(x0.T), np.cov(ref.T), atol=0.07)


def test_stochastic_student_needs_a_key():
    sched = schedules.get("cosine")
    with pytest.raises(UserError, match="stochastic"):
        samplers.sample("student-stochastic", GMM.eps_fn(sched), sched, jnp.zeros((2, 2)), 4)
    assert samplers.get("student-stochastic").stochastic and not samplers.get("student-ddim").stochastic
