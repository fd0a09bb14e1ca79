"""The U-Net: shapes, size, the zero-initialised guidance branch, class and time conditioning."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import perturb
from pipeline.models.denoiser import null_label
from pipeline.models.unet import UNet, init_params, param_count

B = 4


@pytest.fixture(scope="module")
def unet():
    model = UNet(ch=8)  # every property tested holds at any width; small keeps compiles short
    x = jax.random.normal(jax.random.key(0), (B, 8, 8, 1))
    t = jnp.linspace(0.1, 0.9, B)
    params = init_params(model, jax.random.key(1), x, t)  # as a teacher is initialised: y=None, w=None
    return jax.jit(model.apply), params, x, t


def test_unet_shape_dtype(unet):
    apply, params, x, t = unet
    out = apply(perturb(params, 2), x, t, jnp.arange(B) % 10)
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
    p = perturb(params, 3, skip=("w_dense_1",))
    y = jnp.arange(B) % 10
    teacher = apply(p, x, t, y)
    for w in (0.0, 1.5, jnp.array([0.0, 0.5, 2.0, 4.0])):
        student = apply(p, x, t, y, jnp.broadcast_to(w, (B,)))
        np.testing.assert_array_equal(student, teacher)
    p_all = perturb(params, 3)
    assert not np.allclose(apply(p_all, x, t, y, jnp.full((B,), 2.0)), apply(p_all, x, t, y))


def test_class_and_time_conditioning_change_output(unet):
    apply, params, x, t = unet
    p = perturb(params, 4)
    base = apply(p, x, t, jnp.zeros(B, jnp.int32))
    assert not np.allclose(base, apply(p, x, t, jnp.full((B,), 7, jnp.int32)), atol=1e-4)
    assert not np.allclose(base, apply(p, x, t + 0.05, jnp.zeros(B, jnp.int32)), atol=1e-4)
    # y=None means the null class
    np.testing.assert_array_equal(apply(p, x, t), apply(p, x, t, jnp.full((B,), null_label(10))))


def test_sizes_no_machine_could_build_are_one_line():
    import pytest

    from pipeline.errors import UserError
    from pipeline.models.unet import UNet

    for kwargs, key in [({"num_res_blocks": 2**31}, "num_res_blocks"), ({"ch": 2**31}, "ch"), ({"ch": 0}, "ch"),
                        ({"ch_mult": (1, 10**6)}, "ch_mult"), ({"num_classes": -1}, "num_classes")]:
        with pytest.raises(UserError, match=f"model.kwargs.{key}'"):
            UNet(**kwargs)
    assert UNet(ch=8, ch_mult=(1,), num_res_blocks=0).ch == 8
