"""The guided / student / clipped eps_fn builders against separate model calls and NumPy, in
float64."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import perturb
from pipeline.errors import UserError
from pipeline.models.denoiser import conditional_eps_fn, guided_eps_fn, student_eps_fn
from pipeline.models.mlp import MLPDenoiser
from pipeline.models.unet import UNet, init_params

B = 4


def test_guided_and_student_eps_fn_float64():
    """The 2B-batched guided eps equals (1 + w) eps(y) - w eps(null) from two separate calls (float64)."""
    model = UNet(ch=8)
    params = init_params(model, jax.random.key(1), jnp.ones((B, 8, 8, 1)), jnp.ones(B))
    with jax.enable_x64(True):
        p = jax.tree.map(lambda a: a.astype(jnp.float64), perturb(params, 5))
        x = np.random.default_rng(0).normal(size=(B, 8, 8, 1))
        t = np.linspace(0.2, 0.8, B)
        y = np.array([1, 2, 3, 4], np.int32)
        w = np.array([0.0, 0.5, 1.0, 3.0])
        apply_fn = jax.jit(model.apply)  # one compile per (batch, w given or None)
        cond = np.asarray(apply_fn(p, x, t, y, None))
        unc = np.asarray(apply_fn(p, x, t, np.full(B, 10), None))
        assert cond.dtype == np.float64
        want = (1 + w[:, None, None, None]) * cond - w[:, None, None, None] * unc
        got = guided_eps_fn(apply_fn, p, y, w)(x, t)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
        got_scalar = guided_eps_fn(apply_fn, p, y, 2.0, num_classes=10)(x, t)
        np.testing.assert_allclose(got_scalar, 3.0 * cond - 2.0 * unc, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(conditional_eps_fn(apply_fn, p, y)(x, t), cond, rtol=1e-12)
        np.testing.assert_allclose(guided_eps_fn(apply_fn, p, y, 0.0)(x, t), cond, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(
            student_eps_fn(apply_fn, p, 3, w)(x, t), apply_fn(p, x, t, np.full(B, 3, np.int32), w), rtol=1e-12
        )


def test_guided_needs_class_embedding():
    model = MLPDenoiser(hidden=16, depth=1)  # unconditional: no class embedding to infer null from
    p = init_params(model, jax.random.key(0), jnp.ones((2, 3)), jnp.ones(2))
    with pytest.raises(UserError, match="num_classes"):
        guided_eps_fn(lambda q, *a: model.apply(q, *a), p, 0, 1.0)


def test_clip_x0_eps_fn_against_float64_numpy():
    """eps' = (x - alpha clip((x - sigma eps) / alpha)) / sigma, written here in NumPy; unchanged
    (bit for bit) where the data prediction is already in [-1, 1]."""
    from pipeline import schedules
    from pipeline.models.denoiser import clip_x0_eps_fn

    sched = schedules.get("cosine")
    rng = np.random.default_rng(7)
    x = rng.normal(size=(6, 3, 2))
    t = np.array([1.0, 0.999, 0.9, 0.5, 0.1, 0.01])
    eps = rng.normal(size=x.shape) * 1.3
    with jax.enable_x64(True):
        got = np.asarray(clip_x0_eps_fn(lambda x, t: jnp.asarray(eps), sched)(jnp.asarray(x), jnp.asarray(t)))
        lam = np.asarray(sched.logsnr(jnp.asarray(t)))
    a = np.sqrt(1 / (1 + np.exp(-lam)))[:, None, None]
    s = np.sqrt(1 / (1 + np.exp(lam)))[:, None, None]
    x0 = (x - s * eps) / a
    np.testing.assert_allclose(got, (x - a * np.clip(x0, -1, 1)) / s, rtol=1e-9, atol=1e-9)
    inside = np.abs(x0) <= 1
    assert inside.any() and (~inside).any()
    np.testing.assert_array_equal(got[inside], eps[inside])
