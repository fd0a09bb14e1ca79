"""The regression targets of guided distillation, as pure functions of arrays (VP notation).

Stage 1 (Meng et al. 2023, "On Distillation of Guided Diffusion Models", sec. 4.1): the student's
x-prediction matches the classifier-free guided teacher's (1 + w) x_cond - w x_uncond.
Stage 2 (Salimans & Ho 2022, "Progressive Distillation", Alg. 2): one student DDIM step
t -> s matches two teacher DDIM steps t -> t' -> s; the x-target is the x that makes the
student's single step land on the teacher's z_s.
Both are weighted by truncated SNR, max(alpha_t^2 / sigma_t^2, 1) (Salimans & Ho, sec. 4).
Coefficients alpha_*, sigma_* broadcast against the arrays (see samplers.chain.bcast).
"""
from __future__ import annotations

import jax.numpy as jnp

from pipeline.samplers.steps import data_step


def truncated_snr_weight(alpha, sigma):
    """max(alpha^2 / sigma^2, 1): the 'truncated SNR' weight of the x-space loss (Salimans & Ho 2022, sec. 4)."""
    return jnp.maximum(jnp.square(alpha / sigma), 1.0)


def teacher_two_steps(x_fn, z_t, t, t_mid, s, coef):
    """z_s after two deterministic DDIM steps t -> t_mid -> s of the teacher x-predictor
    x_fn(z, t) (Salimans & Ho 2022, Alg. 2, lines 8-9); coef(t) -> (alpha, sigma) broadcast."""
    a_t, s_t = coef(t)
    a_m, s_m = coef(t_mid)
    a_s, s_s = coef(s)
    z_mid = data_step(z_t, x_fn(z_t, t), a_t, s_t, a_m, s_m)
    return data_step(z_mid, x_fn(z_mid, t_mid), a_m, s_m, a_s, s_s)


def two_step_target(z_t, z_s, alpha_t, sigma_t, alpha_s, sigma_s):
    """x_target = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t): the x whose
    single DDIM step from z_t lands on the teacher's z_s (Salimans & Ho 2022, Alg. 2, line 10)."""
    r = sigma_s / sigma_t
    return (z_s - r * z_t) / (alpha_s - r * alpha_t)


def weighted_mse(pred, target, weight):
    """mean over the batch of weight_b * mean over pixels (pred - target)^2 (Salimans & Ho 2022, sec. 4)."""
    axes = tuple(range(1, pred.ndim))
    return jnp.mean(jnp.reshape(weight, (-1,)) * jnp.mean(jnp.square(pred - target), axis=axes))
