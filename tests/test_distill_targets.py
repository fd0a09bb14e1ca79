"""Guided distillation's two-step target (pipeline/distill/targets.py) against float64 NumPy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pipeline import schedules
from pipeline.distill.targets import teacher_two_steps, two_step_target
from pipeline.models.analytic import GaussianMixture


def np_ddim_x(z, x, a_t, s_t, a_s, s_s):
    """DDIM with an x-prediction: z_s = alpha_s x + sigma_s (z_t - alpha_t x) / sigma_t (Song et al. 2021, eq. 12)."""
    return a_s * x + s_s * (z - a_t * x) / s_t


@pytest.mark.parametrize("sched_name", ["cosine", "linear"])
def test_two_step_target_against_float64_numpy(sched_name):
    sched = schedules.get(sched_name)
    gmm = GaussianMixture(np.array([[1.0, -0.5, 0.3], [-0.7, 0.8, 0.0]]), np.array([0.3, 0.5]), np.array([0.5, 0.5]))
    rng = np.random.default_rng(0)
    z = rng.standard_normal((32, 3))
    ts = np.array([0.9, 0.6, 0.3, 0.125])  # (t, t', s) triples below, s = 0 included
    with jax.enable_x64(True):
        def coef64(tt):
            tt = jnp.asarray(tt, jnp.float64)
            return sched.alpha(tt), sched.sigma(tt)

        def x_fn(zz, tt):
            a, s = coef64(tt)
            return (zz - s * gmm.eps(zz, jnp.full(zz.shape[:1], a), jnp.full(zz.shape[:1], s))) / a

        for t, t_mid, s in [(ts[0], ts[1], ts[2]), (ts[2], ts[3], 0.0)]:
            got_z = np.asarray(teacher_two_steps(x_fn, jnp.asarray(z), t, t_mid, s, coef64))
            got_x = np.asarray(two_step_target(jnp.asarray(z), jnp.asarray(got_z), *coef64(t), *coef64(s)))
            # independent float64 NumPy: two explicit DDIM steps, then solve one DDIM step for x
            a = {u: float(np.sqrt(1 / (1 + np.exp(-float(sched.logsnr(np.float64(u))))))) for u in (t, t_mid, s)}
            sg = {u: float(np.sqrt(1 - a[u] ** 2)) for u in (t, t_mid, s)}
            x1 = np.asarray(x_fn(jnp.asarray(z), t))
            z_mid = np_ddim_x(z, x1, a[t], sg[t], a[t_mid], sg[t_mid])
            x2 = np.asarray(x_fn(jnp.asarray(z_mid), t_mid))
            z_s = np_ddim_x(z_mid, x2, a[t_mid], sg[t_mid], a[s], sg[s])
            np.testing.assert_allclose(got_z, z_s, rtol=1e-10, atol=1e-12)
            want_x = (z_s - sg[s] / sg[t] * z) / (a[s] - sg[s] / sg[t] * a[t])
            np.testing.assert_allclose(got_x, want_x, rtol=1e-9, atol=1e-11)
            # defining property: one student DDIM step t -> s with x_target lands on the teacher's z_s
            np.testing.assert_allclose(np_ddim_x(z, got_x, a[t], sg[t], a[s], sg[s]), z_s, rtol=1e-9, atol=1e-11)
