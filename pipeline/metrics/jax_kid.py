"""Differentiable KID for DDSS's loss (Watson et al. 2022, sec. 4: KID on features as the
sample-quality objective): the unbiased MMD^2 with the cubic kernel on one block, in JAX."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _kernel(x, y):
    """k(x, y) = (x.y / d + 1)^3 with full-precision matmuls (TPU defaults to bfloat16 passes)."""
    return (jnp.matmul(x, y.T, precision=jax.lax.Precision.HIGHEST) / x.shape[1] + 1.0) ** 3


def kid_jax(feats_a, feats_b):
    """Unbiased MMD^2 between [m, F] and [n, F] features, one block (Binkowski et al. 2018, eq. 4);
    a scalar array, differentiable in both arguments."""
    m, n = feats_a.shape[0], feats_b.shape[0]
    kaa, kbb, kab = _kernel(feats_a, feats_a), _kernel(feats_b, feats_b), _kernel(feats_a, feats_b)
    return (
        (kaa.sum() - jnp.trace(kaa)) / (m * (m - 1))
        + (kbb.sum() - jnp.trace(kbb)) / (n * (n - 1))
        - 2.0 * kab.mean()
    )
