"""Guided distillation's losses and grids (pipeline/distill/losses.py): the student at init is
the guided teacher at w = 0; the student grids nest under halving."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from distill_fixtures import TINY

from pipeline import schedules
from pipeline.distill import losses
from pipeline.models import denoiser


@pytest.fixture
def float64():
    with jax.enable_x64(True):
        yield


def test_student_initialised_from_the_teacher_is_the_guided_teacher_at_w0():
    from pipeline.models.unet import UNet

    model = UNet(**{**TINY, "ch_mult": (1,)})
    x = jax.random.normal(jax.random.key(0), (6, 8, 8, 1), jnp.float32)
    t = jnp.linspace(0.05, 0.95, 6, dtype=jnp.float32)
    y = jnp.arange(6, dtype=jnp.int32) % 10
    variables = model.init(jax.random.key(1), x, t, y)
    # A "trained" teacher: every parameter perturbed except the zero-initialised last w layer,
    # which teacher training never touches (its branch is skipped when w is None).
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
    rng = np.random.default_rng(2)
    variables = jax.tree_util.tree_unflatten(treedef, [
        v if "w_dense_1" in jax.tree_util.keystr(p) else v + 0.1 * jnp.asarray(rng.standard_normal(v.shape), v.dtype)
        for p, v in leaves])
    apply_fn = lambda v, *a: model.apply(v, *a)  # noqa: E731
    sched = schedules.get("cosine")
    w0 = jnp.zeros(6, jnp.float32)

    @jax.jit
    def predictions(variables):
        cond_eps = apply_fn(variables, x, t, y, None)  # the teacher's conditional network
        guided_eps = denoiser.guided_eps_fn(apply_fn, variables, y, w0)(x, t)  # one batched call of 2B
        student_x = losses.x_hat(apply_fn, variables, x, t, y, w0, sched)
        a, s = sched.alpha(t)[:, None, None, None], sched.sigma(t)[:, None, None, None]
        return student_x, (x - s * cond_eps) / a, (x - s * guided_eps) / a

    student_x, cond_x, guided_x = predictions(variables)
    # (1 + 0) x_cond - 0 x_uncond = x_cond: bit for bit
    np.testing.assert_array_equal(np.asarray(student_x), np.asarray(cond_x))
    # the guided teacher evaluates cond and uncond in one batch of 2B: equal up to float rounding
    np.testing.assert_allclose(np.asarray(student_x), np.asarray(guided_x), rtol=1e-4, atol=1e-5)
    loss = jax.jit(lambda p, w_range: losses.stage1_loss(p, p, x, y, jax.random.key(3), apply_fn=apply_fn, sched=sched,
                                                         start=0.99, w_range=w_range), static_argnums=1)
    at_w0, at_w = float(loss(variables["params"], (0.0, 0.0))), float(loss(variables["params"], (1.0, 2.0)))
    # the stage-1 loss of the teacher-initialised student vanishes at w = 0 (rounding only) but
    # not at w > 0, where the untrained w-embedding cannot follow the guidance
    assert at_w0 < 1e-6 * at_w and at_w > 1e-3, (at_w0, at_w)


@pytest.mark.parametrize("stride", schedules.HALVING_STRIDES)
def test_student_grids_nest_under_halving(stride, float64):
    sched = schedules.get("cosine")
    start = losses.t_start(sched, -8.0)
    assert abs(float(sched.logsnr(np.float64(start))) + 8.0) < 1e-9
    for K in (1, 2, 4, 8):
        fine, coarse = losses.student_grid(sched, 2 * K, stride, start), losses.student_grid(sched, K, stride, start)
        np.testing.assert_allclose(fine[::2], coarse, rtol=1e-12, atol=1e-15)
        assert fine[0] == start and fine[-1] == 0.0 and np.all(np.diff(fine) < 0)
    assert losses.t_start(schedules.get("linear"), -20.0) == 1.0  # never that noisy: start at t = 1
