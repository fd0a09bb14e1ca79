"""Exact denoisers: a Gaussian mixture's eps under a VP schedule (a "perfect pretrained model").

If x_0 ~ sum_k w_k N(m_k, s_k^2 I), then x_t = alpha x_0 + sigma eps ~ sum_k w_k N(alpha m_k, v_k I)
with v_k = alpha^2 s_k^2 + sigma^2, and the exact noise prediction is
eps(x, t) = -sigma grad log p_t(x) = sigma sum_k r_k(x) (x - alpha m_k) / v_k,
r_k the posterior responsibilities (Tweedie's formula).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from pipeline.errors import UserError


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianMixture:
    """Isotropic Gaussian mixture in d dimensions: means [K, d], stds [K], weights [K]."""

    means: np.ndarray
    stds: np.ndarray
    weights: np.ndarray

    def __post_init__(self):
        means = np.atleast_2d(np.asarray(self.means, np.float64))
        stds = np.broadcast_to(np.asarray(self.stds, np.float64), means.shape[:1]).copy()
        weights = np.broadcast_to(np.asarray(self.weights, np.float64), means.shape[:1]).copy()
        if np.any(stds <= 0) or np.any(weights < 0) or weights.sum() <= 0:
            raise UserError("GaussianMixture needs stds > 0 and non-negative weights with a positive sum")
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "stds", stds)
        object.__setattr__(self, "weights", weights / weights.sum())

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def log_prob_t(self, x, alpha, sigma):
        """log p_t(x) of the noised mixture at one point x [d] (alpha, sigma scalars)."""
        m, s2, w = (jnp.asarray(a, x.dtype) for a in (self.means, self.stds**2, self.weights))
        v = alpha**2 * s2 + sigma**2
        sq = jnp.sum((x[None, :] - alpha * m) ** 2, axis=-1)
        d = x.shape[-1]
        return jax.nn.logsumexp(jnp.log(w) - 0.5 * sq / v - 0.5 * d * jnp.log(2 * jnp.pi * v))

    def eps(self, x, alpha, sigma):
        """Exact eps at a batch x [B, d] with per-sample alpha, sigma [B]."""
        m, s2, w = (jnp.asarray(a, x.dtype) for a in (self.means, self.stds**2, self.weights))
        a, sg = alpha[:, None], sigma[:, None]  # [B, 1]
        v = a**2 * s2[None, :] + sg**2  # [B, K]
        diff = x[:, None, :] - a[:, :, None] * m[None]  # [B, K, d]
        logits = jnp.log(w)[None] - 0.5 * jnp.sum(diff**2, -1) / v - 0.5 * x.shape[-1] * jnp.log(v)
        r = jax.nn.softmax(logits, axis=-1)  # [B, K]
        return sg * jnp.sum((r / v)[..., None] * diff, axis=1)

    def eps_fn(self, sched):
        """The exact eps_fn(x, t) under `sched`."""

        def eps_fn(x, t):
            return self.eps(x, sched.alpha(t), sched.sigma(t))

        return eps_fn

    def sample(self, key, n: int, dtype=jnp.float32):
        """n exact samples of the mixture."""
        kc, kn = jax.random.split(key)
        comp = jax.random.choice(kc, len(self.weights), (n,), p=jnp.asarray(self.weights))
        z = jax.random.normal(kn, (n, self.dim), dtype)
        return jnp.asarray(self.means, dtype)[comp] + jnp.asarray(self.stds, dtype)[comp, None] * z
