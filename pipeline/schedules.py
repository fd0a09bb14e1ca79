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


STRIDES = ("linear", "quadratic", "logsnr", "karras", "leading", "trailing", "linspace")
HALVING_STRIDES = ("linear", "quadratic", "logsnr")  # time_grid(2K)[::2] == time_grid(K) (distillation)
DIFFUSERS_STRIDES = ("leading", "trailing", "linspace")  # diffusers' DDIMScheduler timestep_spacing
DIFFUSERS_N = 1000  # training timesteps of the discrete schedule those spacings index
KARRAS_RHO = 7.0  # Karras et al. 2022, eq. 5
KARRAS_SIGMA_MIN = 0.002  # EDM's sigma_min (Karras et al. 2022, table 1)


def time_grid(K: int, stride: str = "quadratic", schedule: Schedule | None = None, t_max: float = 1.0) -> np.ndarray:
    """K+1 strictly decreasing times, first t_max (diffusers' spacings: their first timestep), last 0.0
    (float64 NumPy). `schedule` (default cosine) is used by logsnr and karras only.

    stride     what a user knows it as                        t_i, i = 0..K (t_K = 0 always)
    linear     DDIM "uniform" skip (Song et al. 2021, C.2)     t_max (1 - i/K)
    quadratic  DDIM "quadratic" skip                           t_max (1 - i/K)^2
    logsnr     uniform log-SNR (DPM-Solver's "logSNR")         logsnr(t_i) uniform from logsnr(t_max)
                                                               to min(logsnr(0), 20)
    karras     EDM / diffusers use_karras_sigmas, rho = 7     sigma_i = (smax^(1/rho) + i/(K-1)
               (Karras et al. 2022, eq. 5)                     (smin^(1/rho) - smax^(1/rho)))^rho, i < K, in
                                                               sigma_edm = sigma/alpha; smax = sigma_edm(t_max),
                                                               smin = max(0.002, sigma_edm(min(logsnr(0), 20)))
    leading    diffusers timestep_spacing="leading"           t_max (n_i + 1)/N, n from diffusers_timesteps
    trailing   diffusers timestep_spacing="trailing"          (N = 1000 training steps, DiscreteSchedule's
    linspace   diffusers timestep_spacing="linspace"           convention t = (n + 1)/N, scaled by t_max)
    """
    if not isinstance(K, (int, np.integer)) or isinstance(K, bool) or K < 1:
        raise UserError(f"steps K must be an integer >= 1, got {K!r}")
    choose("stride", stride, STRIDES)
    check_t_max(t_max)
    t_max = float(t_max)
    u = 1.0 - np.arange(K + 1, dtype=np.float64) / K
    if stride == "linear":
        grid = t_max * u
    elif stride == "quadratic":
        grid = t_max * (u * u)
    elif stride in DIFFUSERS_STRIDES:
        n = diffusers_timesteps(K, stride).astype(np.float64)
        grid = np.append(t_max * ((n + 1.0) / DIFFUSERS_N), 0.0)
    else:
        sched = schedule or get("cosine")
        lam_hi = min(float(sched.logsnr(np.float64(0.0))), LOGSNR_MAX)
        lam_lo = float(sched.logsnr(np.float64(t_max)))
        if stride == "logsnr":
            lam = lam_lo + (1.0 - u) * (lam_hi - lam_lo)
        else:
            s_min = max(KARRAS_SIGMA_MIN, math.exp(-0.5 * lam_hi))
            lam = np.append(-2.0 * np.log(karras_sigmas(K, math.exp(-0.5 * lam_lo), s_min)), lam_hi)
        grid = np.array(sched.t_from_logsnr(lam), dtype=np.float64, copy=True)
        grid[0], grid[-1] = t_max, 0.0
    grid = np.asarray(grid, dtype=np.float64)
    if not np.all(np.diff(grid) < 0):
        raise UserError(f"the {stride} grid of {K} steps with t_max={t_max} is not strictly decreasing "
                        f"(t_max too close to 0 for this schedule)")
    return grid


def check_t_max(t_max) -> float:
    """t_max, the grid's first time, if it is a finite number in (0, 1]; else a one-line UserError."""
    if isinstance(t_max, bool) or not isinstance(t_max, (int, float, np.integer, np.floating)) \
            or not math.isfinite(t_max) or not 0.0 < t_max <= 1.0:
        raise UserError(f"t_max must be a number in (0, 1], got {t_max!r}")
    return float(t_max)


def karras_sigmas(K: int, sigma_max: float, sigma_min: float, rho: float = KARRAS_RHO) -> np.ndarray:
    """EDM's K noise levels sigma_i = (smax^(1/rho) + i/(K-1) (smin^(1/rho) - smax^(1/rho)))^rho,
    i = 0..K-1 (Karras et al. 2022, eq. 5; K = 1: [sigma_max]); float64."""
    if K == 1:
        return np.array([sigma_max], dtype=np.float64)
    r = np.arange(K, dtype=np.float64) / (K - 1)
    hi, lo = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (hi + r * (lo - hi)) ** rho


def diffusers_timesteps(K: int, spacing: str, N: int = DIFFUSERS_N) -> np.ndarray:
    """The K decreasing integer timesteps of diffusers' DDIMScheduler.set_timesteps (steps_offset 0)
    for `spacing` over N training steps (diffusers src/diffusers/schedulers/scheduling_ddim.py;
    Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", table 2):
      leading:  arange(K) * (N // K), reversed
      trailing: round(arange(N, 0, -N / K)) - 1  (NumPy's arange with its float step, as diffusers;
                the extra last element ~0 that arange gives for some K, e.g. 61, is dropped)
      linspace: round(linspace(0, N - 1, K)), reversed
    More steps than N would repeat timesteps: a one-line UserError (K <= N gives K distinct ones)."""
    choose("spacing", spacing, DIFFUSERS_STRIDES)
    if K > N:
        raise UserError(f"stride {spacing!r} indexes {N} training timesteps: at most {N} steps, got {K}")
    if spacing == "leading":
        n = (np.arange(K) * (N // K))[::-1]
    elif spacing == "trailing":
        n = np.round(np.arange(N, 0, -N / K))[:K] - 1
    else:
        n = np.round(np.linspace(0, N - 1, K))[::-1]
    return np.asarray(n).astype(np.int64)


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
