"""The step maths every sampler shares (pure functions of arrays; VP notation).

A step goes from time t to the next, less noisy time s < t. alpha_*, sigma_* are the
schedule at those times, broadcastable against x.
"""
from __future__ import annotations

import math

import jax.numpy as jnp


def x0_from_eps(x, eps, alpha, sigma):
    """x0_hat = (x_t - sigma_t eps) / alpha_t (Ho et al. 2020, eq. 15)."""
    return (x - sigma * eps) / alpha


def ddim_noise_std(alpha_t, sigma_t, alpha_s, sigma_s, eta):
    """DDIM's sigma_{t->s}(eta) = eta sqrt(sigma_s^2/sigma_t^2 (1 - alpha_t^2/alpha_s^2)) (Song et al. 2021, eq. 16);
    eta = 1 is the DDPM ancestral step."""
    ratio = jnp.clip(1.0 - (alpha_t / alpha_s) ** 2, 0.0, None)
    return eta * (sigma_s / sigma_t) * jnp.sqrt(ratio)


def ddim_step(x, eps, alpha_t, sigma_t, alpha_s, sigma_s, eta=0.0, z=None):
    """x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps + c z, c = ddim_noise_std (Song et al. 2021, eq. 12)."""
    x0 = x0_from_eps(x, eps, alpha_t, sigma_t)
    if z is None:
        return alpha_s * x0 + sigma_s * eps
    c = ddim_noise_std(alpha_t, sigma_t, alpha_s, sigma_s, eta)
    return alpha_s * x0 + jnp.sqrt(jnp.clip(sigma_s**2 - c**2, 0.0, None)) * eps + c * z


def data_step(x, x0, alpha_t, sigma_t, alpha_s, sigma_s):
    """First-order data-prediction step x_s = (sigma_s/sigma_t) x_t + (alpha_s - alpha_t sigma_s/sigma_t) x0
    (DPM-Solver++ eq. 9 with h = lambda_s - lambda_t written through alpha, sigma; equals DDIM)."""
    r = sigma_s / sigma_t
    return r * x + (alpha_s - alpha_t * r) * x0


def forward_noise(x_k, alpha_k, sigma_k, alpha_s, sigma_s, z):
    """Move a sample from time k back up to a noisier time s > k with q(x_s | x_k):
    x_s = (alpha_s/alpha_k) x_k + sqrt(sigma_s^2 - (alpha_s/alpha_k)^2 sigma_k^2) z."""
    a = alpha_s / alpha_k
    return a * x_k + jnp.sqrt(jnp.clip(sigma_s**2 - a * a * sigma_k**2, 0.0, None)) * z


_PHI_TERMS = 18  # Taylor terms of phi_k for |z| < 1


def phi(k: int, z):
    """phi_k(z) = sum_{j>=0} z^j / (j+k)!, so phi_0 = e^z and phi_{k+1}(z) = (phi_k(z) - 1/k!) / z: the phi-functions
    of exponential integrators (Hochbruck & Ostermann 2010, sec. 2.1); a Taylor series where |z| < 1 (no cancellation)."""
    z = jnp.asarray(z)
    small = jnp.abs(z) < 1.0
    zs = jnp.where(small, z, 0.0)
    series = jnp.full_like(zs, 1.0 / math.factorial(_PHI_TERMS - 1 + k))
    for j in range(_PHI_TERMS - 2, -1, -1):  # Horner; the first omitted term is below 1/(18+k)! < 2e-16
        series = series * zs + 1.0 / math.factorial(j + k)
    zl = jnp.where(small, 1.0, z)
    big = jnp.exp(zl) if k == 0 else jnp.expm1(zl) / zl
    for m in range(1, k):
        big = (big - 1.0 / math.factorial(m)) / zl
    return jnp.where(small, series, big)


def exp_moments(h, n: int):
    """beta_k = int_0^1 e^{-h(1-u)} u^k du / int_0^1 e^{-h(1-u)} du = k! phi_{k+1}(-h) / phi_1(-h), k = 0..n-1: a
    data_step over lambda -> lambda + h is exact for x0 = sum_k a_k u^k, u = (lambda' - lambda)/h, given sum_k beta_k a_k as
    its x0 (DPM-Solver++ eq. 9 integrated; UniPC's b_k for B(h) = e^h - 1, Zhao et al. 2023, sec. 3)."""
    z = -jnp.asarray(h)
    p1 = phi(1, z)
    return jnp.stack([jnp.ones_like(p1)] + [math.factorial(k) * phi(k + 1, z) / p1 for k in range(1, n)])


def interp_weights(r, beta, n):
    """Weights w (zero past the first n of the nodes r; n may be traced) with sum_j w_j r_j^k = beta_k for k < n, so
    sum_j w_j p(r_j) = sum_k beta_k a_k for every p(r) = sum_k a_k r^k of degree < n (an interpolatory multistep rule)."""
    r, beta = jnp.asarray(r), jnp.asarray(beta, jnp.asarray(r).dtype)
    size = r.shape[0]
    idx = jnp.arange(size)
    used = idx < n
    r = jnp.where(used, r, 0.0)
    rows, power = [], jnp.ones_like(r)
    for _ in range(size):  # powers by products, not r**k: finite gradients at r = 0
        rows.append(power)
        power = power * r
    inside = used[:, None] & used[None, :]
    A = jnp.where(inside, jnp.stack(rows), jnp.eye(size, dtype=r.dtype))  # A[k, j] = r_j^k, identity outside
    return jnp.linalg.solve(A, jnp.where(used, beta, 0.0))
