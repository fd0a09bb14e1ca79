"""The differentiable JAX KID (DDSS's loss): the NumPy KID's value, and a gradient that matches
finite differences of the float64 NumPy KID (`small`: tests/conftest.py)."""
import numpy as np
import pytest

from pipeline import metrics


def test_kid_jax_equals_numpy_on_one_block(small):
    import jax

    x, y = small
    got = float(jax.jit(metrics.kid_jax)(x.astype(np.float32), y.astype(np.float32)))
    assert got == pytest.approx(metrics.kid(x, y), rel=1e-4, abs=1e-6)


def test_kid_jax_gradient_matches_finite_differences():
    import jax

    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(12, 4)), rng.normal(size=(10, 4)) + 0.4
    grad = np.asarray(jax.grad(metrics.kid_jax)(x.astype(np.float32), y.astype(np.float32)), np.float64)
    assert np.all(np.isfinite(grad))
    h, fd = 1e-6, np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        fd[idx] = (metrics.kid(xp, y) - metrics.kid(xm, y)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=2e-3, atol=1e-5 * np.abs(fd).max())
    assert np.abs(fd).max() > 1e-3  # the check is not vacuous
