"""The data-prediction multistep samplers (dpm-solver++3m, unipc-2, unipc-3): whole chains against float64 NumPy
loops written from the official update formulas, measured convergence orders on the cosine schedule (an exact
Gaussian and a 16-d Gaussian mixture), and finite values and gradients where the last step reaches logsnr = +inf.
(NFE = K and NaN reporting: the parametrised tests of test_samplers_baseline.py.)"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pipeline import samplers, schedules
from pipeline.data.gmm import gmm_preset
from pipeline.models.analytic import GaussianMixture
from pipeline.samplers.multistep import history_x0, moments
from pipeline.samplers.steps import data_step, exp_moments

M1, S1 = 0.5, 0.5  # the 1-D Gaussian target N(M1, S1^2)
GAUSS = GaussianMixture(np.array([[M1]]), np.array([S1]), np.array([1.0]))
MIX = gmm_preset("mix16d")
TOY = GaussianMixture(np.array([[1.5, -0.5], [-1.0, 1.0]]), np.array([0.3, 0.5]), np.array([0.4, 0.6]))
COSINE = schedules.get("cosine")
EPS = {"gauss": GAUSS.eps_fn(COSINE), "mix": MIX.eps_fn(COSINE)}  # one function each: jit caches hit across tests


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


# ----------------------------------------------------------------------------------------
# Float64 NumPy, written from the official updates (DPM-Solver++ / diffusers' 3M, UniPC's bh2 UniP/UniC).


def np_alpha_sigma(lam):
    return 1 / np.sqrt(1 + np.exp(-2 * lam)), 1 / np.sqrt(1 + np.exp(2 * lam))


def np_x0(gm, x, lam):
    """Tweedie's x0 of a mixture at lambda: (x - sigma eps)/alpha, eps = sigma sum_k r_k (x - alpha m_k)/v_k."""
    a, s = np_alpha_sigma(lam)
    v = a * a * gm.stds**2 + s * s
    diff = x[:, None, :] - a * gm.means[None]
    logits = np.log(gm.weights)[None] - 0.5 * np.sum(diff**2, -1) / v - 0.5 * x.shape[1] * np.log(v)
    r = np.exp(logits - logits.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    return (x - s * s * np.sum((r / v)[..., None] * diff, 1)) / a


def np_dpmpp(gm, x, lams, order):
    """DPM-Solver++ multistep: first, second (D1 = (m0 - m1)/r0, weight 1/2) and third-order updates
    (D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1)/(r0 + r1)), order min(order, i + 1, K - i)."""
    K, ms = len(lams) - 1, []
    for i in range(K):
        lt, ls, h = lams[i], lams[i + 1], lams[i + 1] - lams[i]
        (_, st), (a_s, ss) = np_alpha_sigma(lt), np_alpha_sigma(ls)
        ms.insert(0, np_x0(gm, x, lt))
        p, e = min(order, i + 1, K - i), np.expm1(-h)
        x_new = ss / st * x - a_s * e * ms[0]
        if p >= 2:
            r0 = (lt - lams[i - 1]) / h
            d1_0 = (ms[0] - ms[1]) / r0
            if p == 2:
                x_new = x_new - 0.5 * a_s * e * d1_0
            else:
                r1 = (lams[i - 1] - lams[i - 2]) / h
                d1_1 = (ms[1] - ms[2]) / r1
                d1, d2 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1), (d1_0 - d1_1) / (r0 + r1)
                x_new = x_new + a_s * (e / h + 1) * d1 - a_s * ((e + h) / h**2 - 0.5) * d2
        x = x_new
    return x


def np_unipc_update(x, ms, ls, lam_t, p, m_t=None):
    """UniP-p (m_t None) or UniC-p bh2 from (ls[-1], ms[-1]) to lam_t: rk = (l_i - l_0)/h, D1_i = (m_i - m0)/rk,
    b_k = h phi_{k+1}(-h) k! / B(h) by phi's recursion, rho from R rho = b (1/2 for UniP-2 and UniC-1)."""
    l0, m0 = ls[-1], ms[-1]
    h = lam_t - l0
    (_, s0), (a_t, st) = np_alpha_sigma(l0), np_alpha_sigma(lam_t)
    rks = [(ls[-1 - i] - l0) / h for i in range(1, p)] + [1.0]
    d1s = [(ms[-1 - i] - m0) / rks[i - 1] for i in range(1, p)]
    hh, hphi1 = -h, np.expm1(-h)
    hphik, fact, b, R = hphi1 / hh - 1, 1, [], []
    for i in range(1, p + 1):
        R.append(np.power(rks, i - 1))
        b.append(hphik * fact / hphi1)
        fact *= i + 1
        hphik = hphik / hh - 1 / fact
    R, b = np.array(R), np.array(b)
    base = st / s0 * x - a_t * hphi1 * m0
    if m_t is None:
        rho = [0.5] if p == 2 else (np.linalg.solve(R[:-1, :-1], b[:-1]) if p > 2 else [])
        return base - a_t * hphi1 * sum(r * d for r, d in zip(rho, d1s))
    rho = [0.5] if p == 1 else np.linalg.solve(R, b)
    return base - a_t * hphi1 * (sum(r * d for r, d in zip(rho[:-1], d1s)) + rho[-1] * (m_t - m0))


def np_unipc(gm, x, lams, order):
    """UniPC-p as in the official multistep loop: predictor, model at the predicted sample, corrector of the same
    order (none on the last step), that model output kept; order min(order, step, K + 1 - step)."""
    K, ms, ls = len(lams) - 1, [np_x0(gm, x, lams[0])], [lams[0]]
    for step in range(1, K + 1):
        p = min(order, step, K + 1 - step)
        x_pred = np_unipc_update(x, ms, ls, lams[step], p)
        if step == K:
            return x_pred
        m_t = np_x0(gm, x_pred, lams[step])
        x = np_unipc_update(x, ms, ls, lams[step], p, m_t)
        ms, ls = ms + [m_t], ls + [lams[step]]


NP_CHAINS = {"dpm-solver++3m": functools.partial(np_dpmpp, order=3), "unipc-2": functools.partial(np_unipc, order=2),
             "unipc-3": functools.partial(np_unipc, order=3)}
NEW = list(NP_CHAINS)


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("sched_name,stride,K", [("cosine", "logsnr", 7), ("linear", "linear", 6)])
def test_chain_matches_the_official_updates_in_float64(name, sched_name, stride, K):
    """The linear schedule's last step reaches t = 0, lambda = +inf (first order there: x = x0)."""
    sched = schedules.get(sched_name)
    x_T = np.random.default_rng(3).standard_normal((8, 2))
    lams = [0.5 * float(sched.logsnr(np.float64(t))) for t in schedules.time_grid(K, stride, sched)]
    got = samplers.sample(name, TOY.eps_fn(sched), sched, jnp.asarray(x_T), K, stride=stride)
    np.testing.assert_allclose(np.asarray(got), NP_CHAINS[name](TOY, x_T, lams), rtol=1e-9, atol=1e-9)


def test_3m_update_carries_half_the_x0_second_derivative_term():
    """Why dpm-solver++3m is second order: for x0 quadratic in lambda its step misses alpha_s (1 - e^{-h}) (b_2/2) a_2
    (x0 = a_2 u^2, u = (lambda - lambda_t)/h, b_2 = 2 phi_3(-h)/phi_1(-h)), a local error (h^3/12) x0'' + O(h^4);
    with the exact moments (UniP-3) the same three nodes integrate it exactly. On the nodes lambda_t - (0, 1, 2.5) h."""
    lam_t, h = 0.3, 0.05
    lams = lam_t + h * jnp.array([0.0, -1.0, -2.5])
    x0s = ((lams - lam_t) / h) ** 2  # a_2 = 1, one scalar "pixel" per node
    a_t, s_t, a_s, s_s = (float(v) for v in (*np_alpha_sigma(lam_t), *np_alpha_sigma(lam_t + h)))
    exact_x0 = float(exp_moments(h, 3)[2])  # the x0 whose data_step integrates u^2 exactly
    official = float(history_x0(x0s, lams, lam_t, h, 3, second=0.5))
    assert official == pytest.approx(exact_x0 / 2, rel=1e-12)
    assert float(history_x0(x0s, lams, lam_t, h, 3)) == pytest.approx(exact_x0, rel=1e-12)
    miss = float(data_step(0.0, exact_x0 - official, a_t, s_t, a_s, s_s))
    assert miss == pytest.approx(a_s * h**3 / 12 * (2 / h**2), rel=0.1)  # alpha_s (h^3/12) x0'', x0'' = 2/h^2
    np.testing.assert_array_equal(np.asarray(moments(h, 2, 3)), [1.0, 0.5, 0.0])  # 2 nodes: DPM-Solver++(2M)'s 1/2


# ----------------------------------------------------------------------------------------
# Convergence orders (float64, cosine schedule, logsnr stride: uniform steps in lambda).


def exact_gauss(x_T):
    """The probability-flow ODE maps quantiles to quantiles: x = alpha m + sqrt(alpha^2 s^2 + sigma^2) z, z fixed by x_T
    (at t = 0, where the cosine schedule's lambda is 10, not +inf)."""
    (a1, s1), (a0, s0) = (np_alpha_sigma(0.5 * float(COSINE.logsnr(np.float64(t)))) for t in (1.0, 0.0))
    z = (x_T - a1 * M1) / np.sqrt(a1**2 * S1**2 + s1**2)
    return a0 * M1 + np.sqrt(a0**2 * S1**2 + s0**2) * z


@functools.lru_cache(maxsize=None)
def rk4_mix(n_steps=2500):
    """(x_T, x at t = 0) for the mixture: RK4 in lambda on dx/dlambda = alpha (x0(x, lambda) - alpha x) (the PF ODE in
    DPM-Solver++'s variables; not stiff). Its error, 6e-11 (against 5000 steps), is under 1% of the samplers' here."""
    x = np.random.default_rng(4).standard_normal((8, MIX.dim))
    x_T = x.copy()
    l0, l1 = (0.5 * float(COSINE.logsnr(np.float64(t))) for t in (1.0, 0.0))
    dl = (l1 - l0) / n_steps

    def f(v, lam):
        a = np_alpha_sigma(lam)[0]
        return a * (np_x0(MIX, v, lam) - a * v)

    for i in range(n_steps):
        lam = l0 + i * dl
        k1 = f(x, lam)
        k2 = f(x + dl / 2 * k1, lam + dl / 2)
        k3 = f(x + dl / 2 * k2, lam + dl / 2)
        k4 = f(x + dl * k3, lam + dl)
        x = x + dl / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x_T, x


def slope(ks, errs):
    return float(np.polyfit(np.log(ks), np.log(errs), 1)[0])


def errors(name, target, ks):
    """Max |x - reference| at t = 0 for each K (the K chains in one jit: one compilation instead of len(ks))."""
    x_T, ref = (np.linspace(-2.5, 2.5, 11)[:, None], None) if target == "gauss" else rk4_mix()
    ref = exact_gauss(x_T) if ref is None else ref
    grids = [jnp.asarray(schedules.time_grid(K, "logsnr", COSINE)) for K in ks]
    outs = jax.jit(lambda x: [samplers.run(name, EPS[target], COSINE, x, g) for g in grids])(jnp.asarray(x_T))
    assert all(int(bad) == 0 for _, bad in outs)
    return [float(np.max(np.abs(np.asarray(x0) - ref))) for x0, _ in outs]


@pytest.mark.parametrize("target", ["gauss", "mix"])
@pytest.mark.parametrize("name,ks,lo,hi,last", [
    ("dpm-solver++3m", [512, 1024, 2048], -2.3, -1.7, 1e-5),
    ("unipc-2", [128, 256, 512], -3.3, -2.7, 5e-5),
    ("unipc-3", [512, 1024, 2048], -4.3, -3.5, 5e-8),
])
def test_convergence_order(name, ks, lo, hi, last, target):
    """Measured slopes of the max error vs K (Gaussian / mix16d): 3m -2.0 / -2.06, unipc-2 -3.0 / -3.08, unipc-3
    -3.95 / -3.76. Theory: a step whose x0 is exact to degree n - 1 in lambda has local error O(h^{n+1}).
    - dpm-solver++3m: second order, not third: its D2 term is half the exact one (test above), so the local
      error is (h^3/12) x0'' + O(h^4); at small K the O(h^4) part dominates and the slope is steeper (mix16d:
      -2.5 from K = 64 to 256, Gaussian: -2.5 from K = 8 to 32), then it settles at -2.
    - UniPC-p: UniC-p (p + 1 nodes, the new one included) has local error O(h^{p+2}); the predicted sample it uses
      is off by O(h^{p+1}) and enters with a weight O(h), as does the x0 kept in the history: global order p + 1
      (UniPC's theorem), i.e. 3 for unipc-2 and 4 for unipc-3, reached late by unipc-3 (from K = 32 up the
      Gaussian's error ratios per doubling are 22, 6.8, 12.6, 14.5, 15.3, 15.7 -> 16; mix16d's slope from K = 256
      to 512 is -3.2), hence K up to 2048.
    - The low-order steps (the first ones, the last one without corrector) cost no order here: at the ends of
      the cosine schedule (lambda = -10, +10) x0 barely moves with lambda (its derivatives are O(e^{lambda})
      and O(e^{-2 lambda}))."""
    errs = errors(name, target, ks)
    assert lo < slope(ks, errs) < hi, errs
    assert errs[-1] < last, errs


# ----------------------------------------------------------------------------------------
# The last step to logsnr = +inf (linear schedule, t = 0).


def test_values_and_gradients_are_finite_when_the_last_step_reaches_logsnr_inf():
    sched = schedules.get("linear")
    assert float(sched.logsnr(np.float64(0.0))) == np.inf
    grid = jnp.asarray(schedules.time_grid(5, "linear"))

    def loss(name, x_T):
        return jnp.sum(samplers.run(name, TOY.eps_fn(sched), sched, x_T, grid)[0] ** 2)

    x_T = jnp.asarray(np.random.default_rng(5).standard_normal((4, 2)))
    out = jax.jit(lambda x: [jax.value_and_grad(functools.partial(loss, name))(x) for name in NEW])(x_T)
    for name, (value, grad) in zip(NEW, out):
        assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad))), name
