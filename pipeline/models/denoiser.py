"""Turn a network and its parameters into denoisers eps_fn(x, t) for the samplers.

`apply_fn(params, x, t, y, w) -> eps` is a plain function, e.g.
`apply_fn = lambda p, *a: UNet().apply(p, *a)`, with y [B] int labels (the value `num_classes`
is the null class) and w [B] guidance weights or None. Labels and w may be given as scalars or
[B] arrays; they are broadcast to the batch of x.
"""
from __future__ import annotations

import jax.numpy as jnp

from pipeline.errors import UserError


def null_label(num_classes: int) -> int:
    """The label value of the unconditional (null) class used for classifier-free guidance."""
    return int(num_classes)


def _num_classes_from(params) -> int:
    try:
        return int(params["params"]["class_embed"]["embedding"].shape[0]) - 1
    except (KeyError, TypeError, IndexError):
        raise UserError("guided_eps_fn: parameters have no class embedding; pass num_classes=") from None


def _batch(v, x, dtype):
    return jnp.broadcast_to(jnp.asarray(v, dtype), (x.shape[0],))


def conditional_eps_fn(apply_fn, params, y):
    """eps_fn(x, t) = eps(x, t, y): the conditional model (y = null label: unconditional)."""

    def eps_fn(x, t):
        return apply_fn(params, x, t, _batch(y, x, jnp.int32), None)

    return eps_fn


def guided_eps_fn(apply_fn, params, y, w, num_classes: int | None = None):
    """Classifier-free guidance eps_w = (1 + w) eps(x, t, y) - w eps(x, t, null) (Ho & Salimans 2022,
    eq. 6 in Meng et al. 2023's convention, w = 0 conditional), in one batched call of size 2B.
    num_classes defaults to the size of the parameters' class embedding minus one."""
    null = null_label(_num_classes_from(params) if num_classes is None else num_classes)

    def eps_fn(x, t):
        B = x.shape[0]
        labels = jnp.concatenate([_batch(y, x, jnp.int32), jnp.full((B,), null, jnp.int32)])
        times = jnp.concatenate([_batch(t, x, jnp.asarray(t).dtype)] * 2)
        eps = apply_fn(params, jnp.concatenate([x, x]), times, labels, None)
        eps_c, eps_u = eps[:B], eps[B:]
        wb = _batch(w, x, x.dtype).reshape((B,) + (1,) * (x.ndim - 1))
        return (1 + wb) * eps_c - wb * eps_u

    return eps_fn


def student_eps_fn(apply_fn, params, y, w):
    """eps_fn(x, t) = eps_student(x, t, y, w): a w-conditioned (distilled) model, one evaluation."""

    def eps_fn(x, t):
        return apply_fn(params, x, t, _batch(y, x, jnp.int32), _batch(w, x, x.dtype))

    return eps_fn


def clip_x0_eps_fn(eps_fn, sched, lo: float = -1.0, hi: float = 1.0):
    """eps_fn whose data prediction is clipped to [lo, hi]: eps' = eps + alpha (x0_hat - clip(x0_hat)) / sigma
    = (x - alpha clip(x0_hat)) / sigma (the clipped x0 of Ho et al. 2020, sec. 3.3 and their code;
    "static thresholding" in Saharia et al. 2022). Near t = 1, where alpha ~ 5e-5 on the truncated
    cosine schedule, x0_hat = (x - sigma eps) / alpha multiplies the network's error by 1/alpha;
    clipping keeps every sampler's first steps on the data's range. Exactly eps where x0_hat is in range."""

    def clipped(x, t):
        eps = eps_fn(x, t)
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
        alpha, sigma = sched.alpha(t).reshape(shape), sched.sigma(t).reshape(shape)
        x0 = (x - sigma * eps) / alpha
        return eps + alpha * (x0 - jnp.clip(x0, lo, hi)) / sigma

    return clipped
