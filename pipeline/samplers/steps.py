"""The step maths every sampler shares (pure functions of arrays; VP notation).

A step goes from time t to the next, less noisy time s < t. alpha_*, sigma_* are the
schedule at those times, broadcastable against x.
"""
from __future__ import annotations

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
