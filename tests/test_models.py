"""U-Net and MLP denoisers: shapes, the zero-initialised guidance branch, class conditioning, and
the guided / student eps_fn builders against separate model calls in float64."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.models import MLPDenoiser, UNet, conditional_eps_fn, guided_eps_fn, null_label, student_eps_fn

B = 4


def _perturb(params, key, skip=()):
    """Random non-zero parameters (zero-initialised layers would make every output 0), except in the
    submodules named in skip."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    keys = jax.random.split(key, len(flat))
    leaves = []
    for (path, leaf), k in zip(flat, keys):
        names = {getattr(p, "key", None) for p in path}
        leaves.append(leaf if names & set(skip) else leaf + 0.1 * jax.random.normal(k, leaf.shape, leaf.dtype))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), leaves)


@pytest.fixture(scope="module")
def unet():
    model = UNet()
    x = jax.random.normal(jax.random.key(0), (B, 8, 8, 1))
    t = jnp.linspace(0.1, 0.9, B)
    params = model.init(jax.random.key(1), x, t)  # as a teacher is initialised: y=None, w=None
    return model, params, x, t


def test_unet_shape_dtype(unet):
    model, params, x, t = unet
    out = model.apply(_perturb(params, jax.random.key(2)), x, t, jnp.arange(B) % 10)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert np.all(np.isfinite(out))
    wide = UNet(ch=16, ch_mult=(1, 2, 2), attn_resolutions=(4,), out_ch=3, num_classes=0)
    x3 = jnp.ones((2, 16, 16, 3))
    p3 = wide.init(jax.random.key(0), x3, jnp.ones(2))
    assert wide.apply(p3, x3, jnp.ones(2)).shape == x3.shape


def test_guidance_branch_is_identity_at_init(unet):
    """Teacher params (init with w=None) contain the w branch with a zero last layer, so the student
    apply with any w equals the teacher's output; once that layer is non-zero, w matters."""
    model, params, x, t = unet
    assert "w_dense_1" in params["params"]
    assert not np.any(params["params"]["w_dense_1"]["kernel"])
    p = _perturb(params, jax.random.key(3), skip=("w_dense_1",))
    y = jnp.arange(B) % 10
    teacher = model.apply(p, x, t, y)
    for w in (0.0, 1.5, jnp.array([0.0, 0.5, 2.0, 4.0])):
        student = model.apply(p, x, t, y, jnp.broadcast_to(w, (B,)))
        np.testing.assert_array_equal(student, teacher)
    p_all = _perturb(params, jax.random.key(3))
    assert not np.allclose(model.apply(p_all, x, t, y, jnp.full((B,), 2.0)), model.apply(p_all, x, t, y))


def test_class_and_time_conditioning_change_output(unet):
    model, params, x, t = unet
    p = _perturb(params, jax.random.key(4))
    base = model.apply(p, x, t, jnp.zeros(B, jnp.int32))
    assert not np.allclose(base, model.apply(p, x, t, jnp.full((B,), 7, jnp.int32)), atol=1e-4)
    assert not np.allclose(base, model.apply(p, x, t + 0.05, jnp.zeros(B, jnp.int32)), atol=1e-4)
    # y=None means the null class
    np.testing.assert_array_equal(model.apply(p, x, t), model.apply(p, x, t, jnp.full((B,), null_label(10))))


def test_mlp_shape_and_w_branch():
    model = MLPDenoiser(hidden=32, depth=2, num_classes=3)
    x = jax.random.normal(jax.random.key(0), (B, 5))
    t = jnp.linspace(0.1, 0.9, B)
    p = model.init(jax.random.key(1), x, t)
    out = model.apply(p, x, t, jnp.array([0, 1, 2, 3]))
    assert out.shape == (B, 5) and out.dtype == x.dtype
    np.testing.assert_array_equal(model.apply(p, x, t, None, jnp.full((B,), 3.0)), model.apply(p, x, t))
    assert not np.allclose(out, model.apply(p, x, t, jnp.zeros(B, jnp.int32)))


def test_guided_and_student_eps_fn_float64(unet):
    """The 2B-batched guided eps equals (1 + w) eps(y) - w eps(null) from two separate calls (float64)."""
    model, params, _, t = unet
    with jax.enable_x64(True):
        p = jax.tree.map(lambda a: a.astype(jnp.float64), _perturb(params, jax.random.key(5)))
        x = np.random.default_rng(0).normal(size=(B, 8, 8, 1))
        t = np.linspace(0.2, 0.8, B)
        y = np.array([1, 2, 3, 4], np.int32)
        w = np.array([0.0, 0.5, 1.0, 3.0])
        apply_fn = lambda q, *a: model.apply(q, *a)  # noqa: E731
        cond = np.asarray(model.apply(p, x, t, y))
        unc = np.asarray(model.apply(p, x, t, np.full(B, 10)))
        assert cond.dtype == np.float64
        want = (1 + w[:, None, None, None]) * cond - w[:, None, None, None] * unc
        got = jax.jit(guided_eps_fn(apply_fn, p, y, w))(x, t)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
        got_scalar = guided_eps_fn(apply_fn, p, y, 2.0, num_classes=10)(x, t)
        np.testing.assert_allclose(got_scalar, 3.0 * cond - 2.0 * unc, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(conditional_eps_fn(apply_fn, p, y)(x, t), cond, rtol=1e-12)
        np.testing.assert_allclose(guided_eps_fn(apply_fn, p, y, 0.0)(x, t), cond, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(
            student_eps_fn(apply_fn, p, 3, w)(x, t), model.apply(p, x, t, np.full(B, 3), w), rtol=1e-12
        )


def test_guided_needs_class_embedding():
    model = MLPDenoiser(hidden=16, depth=1)  # unconditional: no class embedding to infer null from
    p = model.init(jax.random.key(0), jnp.ones((2, 3)), jnp.ones(2))
    with pytest.raises(UserError, match="num_classes"):
        guided_eps_fn(lambda q, *a: model.apply(q, *a), p, 0, 1.0)
