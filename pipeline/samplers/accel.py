"""Training-free accelerated samplers of Li, Huang, Efimov, Wei, Chi, Chen, "Accelerating
Convergence of Score-Based Diffusion Models, Provably" (ICML 2024, arXiv 2403.03852):
"accel-ddim" (eq. 15; error O(1/K^2) against DDIM's O(1/K)) and "accel-ddpm" (eq. 24).

Notation: VP, x_t = alpha_t x_0 + sigma_t eps, abar_t = alpha_t^2 = 1 - sigma_t^2. A grid of
K+1 decreasing times t_0 = 1 > t_1 > ... > t_K = 0 (any stride); step i goes from t = t_i to
s = t_{i+1}, and p = t_{i-1} is the previous, noisier grid time. The paper's discrete index
(t+1, t, t-1) maps to our (p, t, s); its per-step alpha_t is our abar_t / abar_s.

accel-ddim, derivation on a general grid (paper eq. 15; the authors' README eq. 5)
--------------------------------------------------------------------------------------
The probability-flow ODE in the variable a = abar is d(x / sqrt(a)) = eps(x(a), a) dg(a) with
g(a) = sqrt((1 - a) / a) = sigma / alpha (DDIM's ODE, Song et al. 2021, eq. 14), so exactly

    x_s / alpha_s = x_t / alpha_t + integral_{a_t}^{a_s} eps(a) dg(a).

(i)  eps constant = eps_t gives DDIM: x_s = (alpha_s/alpha_t) x_t + (sigma_s - alpha_s sigma_t / alpha_t) eps_t.
(ii) eps linear in a through the two latest predictions (one new model evaluation per step),
     eps(a) = eps_t + (a - a_t) (eps_t - eps_p) / (a_t - a_p), adds
     (eps_t - eps_p) / (a_t - a_p) * integral_{a_t}^{a_s} (a - a_t) g'(a) da.
     By parts, with integral g(a) da = arcsin(sqrt a) + sqrt(a (1 - a)) (substitute a = sin^2 th),
     integral_{a_t}^{a_s} (a - a_t) g'(a) da = -[G(a_s) - G(a_t)],  G(a) = a_t g(a) + arcsin(sqrt a).
     Hence, multiplying by alpha_s,

         x_s = DDIM(x_t, eps_t) + c_i (eps_p - eps_t),
         c_i = alpha_s [G(abar_s) - G(abar_t)] / (abar_t - abar_p)
             = alpha_s [alpha_t^2 (sigma_s/alpha_s - sigma_t/alpha_t) + th_s - th_t] / (alpha_t^2 - alpha_p^2),

     th = arcsin(alpha) = atan2(alpha, sigma) (atan2 keeps precision where alpha -> 1). This is the
     paper's rule with its (t+1, t, t-1) read as our (p, t, s); it holds for any spacing because
     only the three times of the step enter. The neglected term is eps'' (a_s - a_t)^3, so the
     local error is O(h^3) and the global error O(h^2) = O(1/K^2) on a grid of step h.
First step (i = 0): no previous prediction exists; it is a plain DDIM step (c_0 = 0), whose
O(h^2) local error is one-off and keeps the global order 2.
Non-finite correction: c_i is 0/0 when two grid times coincide (or round to the same abar,
e.g. near t = 0 in float32) and blows up where abar_s = 0 (never for s < t on our schedules).
There the correction is skipped, i.e. that step is plain DDIM, as the authors' code does.

accel-ddpm (paper eq. 24; the authors' README and ImageNet code)
----------------------------------------------------------------
With a = abar_t / abar_s (the paper's alpha_t) and score_t = -eps(., t) / sigma_t:
    y+  = y_t + sqrt((1 - a)/2) z1                                 (randomisation, no model call)
    y_s = (y+ + (1 - a) score_t(y+)) / sqrt(a) + sqrt((1 - a)/2) z2   (score step at time t)
One model evaluation per step, nfe = K; the z2 noise is added at every step, the last included.
The rule is an expansion in (1 - a): each step should be small. On strides whose first step
jumps from abar(1) ~ 0 to abar(t_1) >> abar(1) (linear, quadratic) the first step has
1 - a ~ 1 for every K; the logsnr stride keeps 1 - a -> 0 there (see bench/RESULTS.md).
For a Gaussian target (exact moments, tests/test_accel.py) the rule's variance error per step
is -(1 - a)^2 / (2a): first order in W2, like DDPM's, with a constant about 3x smaller. The
paper's O(1/K) vs O(1/sqrt K) are upper bounds on TV for general targets, not the measured
orders here.
"""
from __future__ import annotations

import jax.numpy as jnp

from pipeline.samplers.chain import coeffs, eps_at, scan_chain, split_noise
from pipeline.samplers.registry import register
from pipeline.samplers.steps import ddim_step


def accel_ddim_coeff(alpha_p, alpha_t, sigma_t, alpha_s, sigma_s):
    """c = alpha_s [G(abar_s) - G(abar_t)] / (abar_t - abar_p), G(a) = abar_t sqrt((1-a)/a) + arcsin(sqrt a)
    (Li et al. 2024, eq. 15, on a general grid); 0 where it is not finite (correction skipped)."""
    th_t, th_s = jnp.arctan2(alpha_t, sigma_t), jnp.arctan2(alpha_s, sigma_s)
    bracket = alpha_t**2 * (sigma_s / alpha_s - sigma_t / alpha_t) + (th_s - th_t)
    den = alpha_t**2 - alpha_p**2
    ok = den != 0
    c = alpha_s * bracket / jnp.where(ok, den, 1.0)
    return jnp.where(ok & jnp.isfinite(c), c, 0.0)


def accel_ddim_step(x, eps, eps_prev, alpha_p, alpha_t, sigma_t, alpha_s, sigma_s):
    """x_s = DDIM(x_t, eps_t) + c (eps_prev - eps_t), c = accel_ddim_coeff (Li et al. 2024, eq. 15)."""
    c = accel_ddim_coeff(alpha_p, alpha_t, sigma_t, alpha_s, sigma_s)
    return ddim_step(x, eps, alpha_t, sigma_t, alpha_s, sigma_s) + c * (eps_prev - eps)


def step_alpha(alpha_t, alpha_s):
    """The paper's per-step alpha = abar_t / abar_s of a step t -> s (Li et al. 2024, sec. 2)."""
    return (alpha_t / alpha_s) ** 2


def accel_ddpm_perturb(y, z1, alpha_t, alpha_s):
    """y+ = Phi_t(y, z1) = y + sqrt((1 - alpha)/2) z1, alpha = abar_t/abar_s (Li et al. 2024, eq. 24)."""
    return y + jnp.sqrt(0.5 * (1.0 - step_alpha(alpha_t, alpha_s))) * z1


def accel_ddpm_step(y_plus, eps, z2, alpha_t, sigma_t, alpha_s):
    """y_s = Psi_t(y+, z2) = (y+ + (1 - alpha) score_t(y+)) / sqrt(alpha) + sqrt((1 - alpha)/2) z2,
    score_t = -eps(y+, t) / sigma_t (Li et al. 2024, eq. 24)."""
    a = step_alpha(alpha_t, alpha_s)
    score = -eps / sigma_t
    return (y_plus + (1.0 - a) * score) / jnp.sqrt(a) + jnp.sqrt(0.5 * (1.0 - a)) * z2


@register("accel-ddim")
def accel_ddim(eps_fn, sched, x_T, grid, key=None):
    """Accelerated DDIM (Li et al. 2024, eq. 15): DDIM plus a correction from the previous step's
    eps; the first step is plain DDIM. One model evaluation per step."""

    def step(state, i, t, s):
        x = state["x"]
        a_t, s_t, a_s, s_s = coeffs(sched, t, s)
        eps = eps_at(eps_fn, x, t)
        x_s = accel_ddim_step(x, eps, state["eps_prev"], state["alpha_prev"], a_t, s_t, a_s, s_s)
        x_s = jnp.where(i == 0, ddim_step(x, eps, a_t, s_t, a_s, s_s), x_s)  # first step: no eps_prev
        return {"x": x_s, "eps_prev": eps, "alpha_prev": a_t}

    init = {"x": x_T, "eps_prev": jnp.zeros_like(x_T), "alpha_prev": jnp.zeros((), x_T.dtype)}
    state, bad = scan_chain(step, init, grid)
    return state["x"], bad


@register("accel-ddpm", stochastic=True)
def accel_ddpm(eps_fn, sched, x_T, grid, key=None):
    """Accelerated DDPM (Li et al. 2024, eq. 24): a randomisation step, then a score step at the
    perturbed point. One model evaluation per step (the randomisation needs none)."""

    def step(state, i, t, s):
        y = state["x"]
        a_t, s_t, a_s, _ = coeffs(sched, t, s)
        z1, z2 = split_noise(key, i, y, 2)
        y_plus = accel_ddpm_perturb(y, z1, a_t, a_s)
        return {"x": accel_ddpm_step(y_plus, eps_at(eps_fn, y_plus, t), z2, a_t, s_t, a_s)}

    state, bad = scan_chain(step, {"x": x_T}, grid)
    return state["x"], bad
