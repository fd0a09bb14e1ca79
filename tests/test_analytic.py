"""The exact Gaussian-mixture denoiser: eps = -sigma grad log p_t (Tweedie) checked against JAX
autodiff of log_prob_t in float64 under both schedules, and .sample against the mixture's moments."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pipeline import schedules
from pipeline.models.analytic import GaussianMixture


def _mixture():
    rng = np.random.default_rng(0)
    return GaussianMixture(rng.normal(size=(4, 3)) * 2.0, [0.3, 0.5, 1.0, 0.2], [1.0, 2.0, 0.5, 1.5])


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_eps_is_minus_sigma_score(schedule):
    gm, sched = _mixture(), schedules.get(schedule)
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        t = jnp.asarray(rng.uniform(0.02, 0.98, 16))
        x = jnp.asarray(rng.normal(size=(16, 3)) * 3.0)
        alpha, sigma = sched.alpha(t), sched.sigma(t)
        score = jax.vmap(jax.grad(gm.log_prob_t), in_axes=(0, 0, 0))(x, alpha, sigma)
        eps = gm.eps_fn(sched)(x, t)
        assert eps.dtype == jnp.float64
        np.testing.assert_allclose(eps, -sigma[:, None] * score, rtol=1e-10, atol=1e-12)


def test_log_prob_t_integrates_to_one_in_1d():
    gm = GaussianMixture([[-1.0], [2.0]], [0.3, 0.6], [0.3, 0.7])
    with jax.enable_x64(True):
        xs = jnp.linspace(-12, 12, 20001)[:, None]
        p = jnp.exp(jax.vmap(lambda x: gm.log_prob_t(x, 0.6, 0.8))(xs))
        assert float(jnp.sum(p) * (xs[1, 0] - xs[0, 0])) == pytest.approx(1.0, abs=1e-8)


def test_sample_matches_mixture_mean_and_cov():
    gm = _mixture()
    n = 200_000
    x = np.asarray(gm.sample(jax.random.key(0), n), np.float64)
    w, m, s2 = gm.weights, gm.means, gm.stds**2
    mean = w @ m
    # law of total covariance: E[Cov | k] + Cov(E[x | k])
    cov = np.sum(w * s2) * np.eye(gm.dim) + (m - mean).T @ np.diag(w) @ (m - mean)
    se = np.sqrt(np.diag(cov) / n)
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 5 * se)
    np.testing.assert_allclose(np.cov(x.T), cov, atol=0.01 * np.abs(cov).max())  # sampling error ~ sqrt(2/n) = 0.3%
