"""Variance-preserving noise schedules in continuous time, and sampling time grids.

x_t = alpha(t) x_0 + sigma(t) eps with alpha^2 + sigma^2 = 1, t in [0, 1], t = 1 is
noise and t = 0 is data; logsnr(t) = log(alpha^2 / sigma^2) (Kingma et al. 2021, VDM).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax.numpy as jnp
import numpy as np

from pipeline.errors import UserError, choose


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A VP schedule given by its log-SNR curve and the inverse of that curve."""

    name: str
    logsnr: Callable  # t -> logsnr(t), decreasing
    t_from_logsnr: Callable  # inverse of logsnr

    def alpha(self, t):
        """alpha(t) = sqrt(sigmoid(logsnr(t)))."""
        return jnp.sqrt(jax_sigmoid(self.logsnr(t)))

    def sigma(self, t):
        """sigma(t) = sqrt(sigmoid(-logsnr(t)))."""
        return jnp.sqrt(jax_sigmoid(-self.logsnr(t)))

    def __hash__(self):  # schedules are static arguments of jitted samplers
        return hash(self.name)

    def __eq__(self, other):
        return isinstance(other, Schedule) and other.name == self.name


def jax_sigmoid(x):
    return 1.0 / (1.0 + jnp.exp(-x))


LOGSNR_MIN, LOGSNR_MAX = -20.0, 20.0


def cosine(logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX) -> Schedule:
    """Cosine schedule, alpha = cos(pi t / 2) truncated to logsnr in [min, max]:
    logsnr(t) = -2 log tan(a t + b) (Nichol & Dhariwal 2021; VDM / diffusion_distillation)."""
    b = math.atan(math.exp(-0.5 * logsnr_max))
    a = math.atan(math.exp(-0.5 * logsnr_min)) - b

    def logsnr(t):
        return -2.0 * jnp.log(jnp.tan(a * jnp.asarray(t) + b))

    def t_from_logsnr(lam):
        return (jnp.arctan(jnp.exp(-0.5 * jnp.asarray(lam))) - b) / a

    return Schedule("cosine", logsnr, t_from_logsnr)


def linear(beta_min: float = 0.1, beta_max: float = 20.0) -> Schedule:
    """Linear-beta VP SDE (Song et al. 2021): log abar(t) = -(beta_min t + (beta_max - beta_min) t^2 / 2),
    logsnr = log(abar / (1 - abar)); t = 0 has logsnr = +inf (sigma = 0 exactly)."""
    db = beta_max - beta_min

    def logsnr(t):
        t = jnp.asarray(t)
        log_abar = -(beta_min * t + 0.5 * db * t * t)
        return log_abar - jnp.log(-jnp.expm1(log_abar))

    def t_from_logsnr(lam):
        # log abar = -softplus(-lam); solve 0.5 db t^2 + beta_min t - c = 0 for t >= 0.
        c = jnp.logaddexp(0.0, -jnp.asarray(lam))
        return 2.0 * c / (beta_min + jnp.sqrt(beta_min**2 + 2.0 * db * c))

    return Schedule("linear", logsnr, t_from_logsnr)


_SCHEDULES = {"cosine": cosine, "linear": linear}


def get(name: str) -> Schedule:
    """The schedule called `name` ("cosine" or "linear")."""
    choose("schedule", name, _SCHEDULES)
    return _SCHEDULES[name]()


STRIDES = ("linear", "quadratic", "logsnr")


def time_grid(K: int, stride: str = "quadratic", schedule: Schedule | None = None) -> np.ndarray:
    """K+1 decreasing times from 1.0 to 0.0 (float64 NumPy).

    linear:    t_i = 1 - i/K                    (DDIM's uniform skip, Song et al. 2021, sec. C.2)
    quadratic: t_i = (1 - i/K)^2                (DDIM's quadratic skip: dense near the data)
    logsnr:    logsnr(t_i) uniform between logsnr(1) and min(logsnr(0), 20), last time 0.
    """
    if not isinstance(K, (int, np.integer)) or isinstance(K, bool) or K < 1:
        raise UserError(f"steps K must be an integer >= 1, got {K!r}")
    choose("stride", stride, STRIDES)
    u = 1.0 - np.arange(K + 1, dtype=np.float64) / K
    if stride == "linear":
        grid = u
    elif stride == "quadratic":
        grid = u * u
    else:
        sched = schedule or get("cosine")
        lam_hi = min(float(sched.logsnr(np.float64(0.0))), LOGSNR_MAX)
        lam_lo = float(sched.logsnr(np.float64(1.0)))
        lam = lam_lo + (1.0 - u) * (lam_hi - lam_lo)
        grid = np.array(sched.t_from_logsnr(lam), dtype=np.float64, copy=True)
        grid[0], grid[-1] = 1.0, 0.0
    return np.asarray(grid, dtype=np.float64)


class DiscreteSchedule:
    """The continuous contract for a discrete N-step model (betas linear in [1e-4, 0.02],
    Ho et al. 2020): abar at t = (n + 1)/N equals the model's abar_n; log abar is linearly
    interpolated in between and abar(0) = 1."""

    def __init__(self, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
        self.N = num_steps
        self.log_abar = np.concatenate([[0.0], np.cumsum(np.log1p(-betas))])  # index n+1 <-> step n
        log_abar = jnp.asarray(self.log_abar)
        knots = jnp.linspace(0.0, 1.0, num_steps + 1)

        def logsnr(t):
            la = jnp.interp(jnp.asarray(t), knots, log_abar)
            return la - jnp.log(-jnp.expm1(la))

        def t_from_logsnr(lam):
            la = -jnp.logaddexp(0.0, -jnp.asarray(lam))
            return jnp.interp(la, log_abar[::-1], knots[::-1])

        self.schedule = Schedule(f"discrete{num_steps}", logsnr, t_from_logsnr)

    def wrap(self, eps_discrete: Callable) -> Callable:
        """eps_fn(x, t) for a model eps_discrete(x, n) with integer n in {0..N-1}."""
        N = self.N

        def eps_fn(x, t):
            n = jnp.clip(jnp.round(jnp.asarray(t) * N - 1.0), 0, N - 1).astype(jnp.int32)
            return eps_discrete(x, n)

        return eps_fn
