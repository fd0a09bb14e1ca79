"""U-Net and MLP denoisers: shapes, the zero-initialised guidance branch, class conditioning, and
the guided / student eps_fn builders against separate model calls in float64."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.models import MLPDenoiser, UNet, conditional_eps_fn, guided_eps_fn, init_params, null_label, param_count, student_eps_fn

B = 4


def _perturb(params, seed, skip=()):
    """Random non-zero parameters (zero-initialised layers would make every output 0), except in the
    submodules named in skip. NumPy draws: no per-shape XLA compiles."""
    rng = np.random.default_rng(seed)

    def leaf(path, a):
        if {getattr(p, "key", None) for p in path} & set(skip):
            return a
        return a + 0.1 * rng.standard_normal(a.shape).astype(a.dtype)

    return jax.tree_util.tree_map_with_path(leaf, params)


@pytest.fixture(scope="module")
def unet():
    model = UNet(ch=8)  # every property tested holds at any width; small keeps compiles short
    x = jax.random.normal(jax.random.key(0), (B, 8, 8, 1))
    t = jnp.linspace(0.1, 0.9, B)
    params = init_params(model, jax.random.key(1), x, t)  # as a teacher is initialised: y=None, w=None
    return jax.jit(model.apply), params, x, t


def test_unet_shape_dtype(unet):
    apply, params, x, t = unet
    out = apply(_perturb(params, 2), x, t, jnp.arange(B) % 10)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert np.all(np.isfinite(out))
    wide = UNet(ch=8, ch_mult=(1, 2, 2), attn_resolutions=(4,), out_ch=2, num_classes=0)
    x3 = jnp.ones((2, 16, 16, 3))
    out3 = jax.eval_shape(lambda x: wide.apply(wide.init(jax.random.key(0), x, jnp.ones(2)), x, jnp.ones(2)), x3)
    assert out3.shape == (2, 16, 16, 2) and out3.dtype == jnp.float32


def test_default_unet_size_and_init_params(unet):
    """The default U-Net's size (reported in the docs); init_params gives module.init's tree."""
    args = (jnp.ones((1, 8, 8, 1)), jnp.ones(1))
    assert 150_000 < param_count(jax.eval_shape(UNet().init, jax.random.key(0), *args)) < 500_000
    _, params, _, _ = unet
    want = jax.eval_shape(UNet(ch=8).init, jax.random.key(0), *args)
    assert jax.tree.map(lambda a: a.shape, params) == jax.tree.map(lambda a: a.shape, want)


def test_guidance_branch_is_identity_at_init(unet):
    """Teacher params (init with w=None) contain the w branch with a zero last layer, so the student
    apply with any w equals the teacher's output; once that layer is non-zero, w matters."""
    apply, params, x, t = unet
    assert "w_dense_1" in params["params"]
    assert not np.any(params["params"]["w_dense_1"]["kernel"])
    p = _perturb(params, 3, skip=("w_dense_1",))
    y = jnp.arange(B) % 10
    teacher = apply(p, x, t, y)
    for w in (0.0, 1.5, jnp.array([0.0, 0.5, 2.0, 4.0])):
        student = apply(p, x, t, y, jnp.broadcast_to(w, (B,)))
        np.testing.assert_array_equal(student, teacher)
    p_all = _perturb(params, 3)
    assert not np.allclose(apply(p_all, x, t, y, jnp.full((B,), 2.0)), apply(p_all, x, t, y))


def test_class_and_time_conditioning_change_output(unet):
    apply, params, x, t = unet
    p = _perturb(params, 4)
    base = apply(p, x, t, jnp.zeros(B, jnp.int32))
    assert not np.allclose(base, apply(p, x, t, jnp.full((B,), 7, jnp.int32)), atol=1e-4)
    assert not np.allclose(base, apply(p, x, t + 0.05, jnp.zeros(B, jnp.int32)), atol=1e-4)
    # y=None means the null class
    np.testing.assert_array_equal(apply(p, x, t), apply(p, x, t, jnp.full((B,), null_label(10))))


def test_mlp_shape_and_w_branch():
    model = MLPDenoiser(hidden=32, depth=2, num_classes=3)
    x = jax.random.normal(jax.random.key(0), (B, 5))
    t = jnp.linspace(0.1, 0.9, B)
    p = init_params(model, jax.random.key(1), x, t)
    out = model.apply(p, x, t, jnp.array([0, 1, 2, 3]))
    assert out.shape == (B, 5) and out.dtype == x.dtype
    np.testing.assert_array_equal(model.apply(p, x, t, None, jnp.full((B,), 3.0)), model.apply(p, x, t))
    assert not np.allclose(out, model.apply(p, x, t, jnp.zeros(B, jnp.int32)))


def test_guided_and_student_eps_fn_float64():
    """The 2B-batched guided eps equals (1 + w) eps(y) - w eps(null) from two separate calls (float64)."""
    model = UNet(ch=8)
    params = init_params(model, jax.random.key(1), jnp.ones((B, 8, 8, 1)), jnp.ones(B))
    with jax.enable_x64(True):
        p = jax.tree.map(lambda a: a.astype(jnp.float64), _perturb(params, 5))
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
