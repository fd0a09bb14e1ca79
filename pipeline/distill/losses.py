"""The two distillation losses, as pure functions of (student params, teacher params, batch, key).

The network is any `apply_fn(variables, x, t, y, w) -> eps` (pipeline.models.denoiser's
contract; w=None is the teacher's unguided network). Predictions are compared in x-space,
x_hat = (z_t - sigma_t eps_hat) / alpha_t, with the truncated-SNR weight max(SNR_t, 1)
(Salimans & Ho 2022, sec. 4). Times are drawn in [0, t_start]: see `student_grid`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pipeline import schedules
from pipeline.distill.targets import teacher_two_steps, truncated_snr_weight, two_step_target, weighted_mse
from pipeline.models import denoiser
from pipeline.samplers.chain import bcast
from pipeline.samplers.steps import x0_from_eps


def t_start(sched, logsnr_start: float) -> float:
    """The students' first time: where logsnr = logsnr_start (1.0 if the schedule never gets that noisy).
    x_T ~ N(0, I) stands for z at t_start, as a discrete DDPM's last step does (Ho et al. 2020)."""
    if float(sched.logsnr(np.float64(1.0))) >= logsnr_start:
        return 1.0
    return float(np.clip(np.asarray(sched.t_from_logsnr(np.float64(logsnr_start)), np.float64), 0.0, 1.0))


def student_grid(sched, steps: int, stride: str, start: float) -> np.ndarray:
    """The students' steps+1 decreasing times from `start` to 0, nested under halving (the grid of
    2K steps holds the grid of K at its even entries): `time_grid` scaled onto [0, start], or for
    stride "logsnr" uniform in logsnr between logsnr(start) and min(logsnr(0), 20)."""
    grid = schedules.time_grid(steps, stride, sched)
    if stride != "logsnr":
        return start * grid
    lam_lo = float(sched.logsnr(np.float64(start)))
    lam_hi = min(float(sched.logsnr(np.float64(0.0))), schedules.LOGSNR_MAX)
    u = np.arange(steps + 1, dtype=np.float64) / steps
    out = np.array(sched.t_from_logsnr(lam_lo + u * (lam_hi - lam_lo)), np.float64)
    out[0], out[-1] = start, 0.0
    return out


def x_hat(apply_fn, variables, z, t, y, w, sched):
    """A network's x-prediction x0_hat = (z - sigma eps_hat) / alpha (Ho et al. 2020, eq. 15)."""
    eps = apply_fn(variables, z, t, y, w)
    return x0_from_eps(z, eps, bcast(sched.alpha(t), z), bcast(sched.sigma(t), z))


def _noised(x0, t, keys, sched):
    """z_t = alpha_t x0 + sigma_t eps (the forward process), row i's eps from keys[i]."""
    eps = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:], x0.dtype))(keys)
    return bcast(sched.alpha(t), x0) * x0 + bcast(sched.sigma(t), x0) * eps


def _draw(key, B, w_range, dtype):
    """Per-row keys for the time, w ~ U[w_range] and the keys of the noise. `key` is one key
    (split into B) or B keys, one per row (the split of a batch over devices does not change
    a row's draws)."""
    keys = key if key.shape == (B,) else jax.random.split(key, B)
    k = jax.vmap(lambda kk: jax.random.split(kk, 3))(keys)
    w = jax.vmap(lambda kk: jax.random.uniform(kk, (), dtype, w_range[0], w_range[1]))(k[:, 1])
    return k[:, 0], w, k[:, 2]


def stage1_loss(params, teacher_params, x0, y, key, *, apply_fn, sched, start: float, w_range):
    """Meng et al. 2023, sec. 4.1: E_{w~U[w_min,w_max], t~U(0,start], x} max(SNR,1) ||x_student(z_t, w) -
    ((1+w) x_cond(z_t) - w x_uncond(z_t))||^2, the teacher's guided x from one batched call."""
    B = x0.shape[0]
    k_t, w, k_z = _draw(key, B, w_range, x0.dtype)
    t = start * (1.0 - jax.vmap(lambda k: jax.random.uniform(k, (), x0.dtype))(k_t))  # (0, start]
    z = _noised(x0, t, k_z, sched)
    teacher = jax.lax.stop_gradient(teacher_params)
    eps_guided = denoiser.guided_eps_fn(apply_fn, {"params": teacher}, y, w)(z, t)
    target = x0_from_eps(z, eps_guided, bcast(sched.alpha(t), z), bcast(sched.sigma(t), z))
    pred = x_hat(apply_fn, {"params": params}, z, t, y, w, sched)
    return weighted_mse(pred, target, truncated_snr_weight(sched.alpha(t), sched.sigma(t)))


def round_loss(params, teacher_params, x0, y, key, *, apply_fn, sched, teacher_grid, w_range):
    """Salimans & Ho 2022, Alg. 2 with w-conditioning (Meng et al. 2023, sec. 4.2): t = a student grid time,
    the teacher's two DDIM steps t -> t' -> s on its grid of twice the steps, the student regressed
    onto x_target with weight max(SNR_t, 1). teacher_grid: [2K+1] times, the student's at even entries."""
    B = x0.shape[0]
    K = (teacher_grid.shape[0] - 1) // 2
    k_t, w, k_z = _draw(key, B, w_range, x0.dtype)
    i = 2 * jax.vmap(lambda k: jax.random.randint(k, (), 0, K))(k_t)
    grid = jnp.asarray(teacher_grid, x0.dtype)
    t, t_mid, s = grid[i], grid[i + 1], grid[i + 2]
    z = _noised(x0, t, k_z, sched)
    teacher = jax.lax.stop_gradient(teacher_params)

    def coef(tt):
        return bcast(sched.alpha(tt), z), bcast(sched.sigma(tt), z)

    z_s = teacher_two_steps(lambda zz, tt: x_hat(apply_fn, {"params": teacher}, zz, tt, y, w, sched), z, t, t_mid, s, coef)
    target = two_step_target(z, z_s, *coef(t), *coef(s))
    pred = x_hat(apply_fn, {"params": params}, z, t, y, w, sched)
    return weighted_mse(pred, target, truncated_snr_weight(sched.alpha(t), sched.sigma(t)))
