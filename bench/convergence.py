"""Convergence order of the training-free samplers on Gaussian mixtures with the exact eps.

    .venv/bin/python bench/convergence.py            # ~5 min on 2 idle CPU cores

Targets: gmm_preset("ring2d") (d = 2) and gmm_preset("mix16d") (d = 16), exact eps_fn, cosine
schedule. For each stride and K in {5, 10, 20, 40, 80, 160}:

- deterministic samplers (ddim, accel-ddim, dpm-solver++2m), float64: mean Euclidean distance between
  x_0 and a reference solution of the same x_T (dpm-solver++2m with --ref-steps steps on a
  logsnr grid; its own error is estimated from a half-step run and reported). The median
  distance is reported too: near the boundary between two modes the flow is ill-conditioned and
  a few x_T (1 in 1000) can end in another mode than the reference, which dominates the mean;
- stochastic samplers (ddpm, accel-ddpm), chains in float32 (their resolution, ~1e-3, is far
  above float32 rounding; the MMD is computed in float64): MMD to the exact mixture with a Gaussian kernel
  approximated by D random Fourier features, k(x, y) = mean_j cos(w_j . (x - y)),
  w_j ~ N(0, I / bandwidth^2). The mixture's side is exact (its characteristic function
  phi(w) = sum_k pi_k exp(i w.m_k - s_k^2 |w|^2 / 2), i.e. infinitely many exact samples), and the
  sampler's side is the unbiased U-statistic: MMD^2 = mean_j [(|S_j|^2 - n) / (n (n - 1))
  - 2 Re(conj(phi_j) S_j) / n + |phi_j|^2], S_j = sum_i exp(i w_j . x_i). Its noise floor (its
  mean and spread when the samples are exact mixture samples) is measured on --floor-reps sets
  of exact samples; the floor's mean is subtracted (it is ~0 since the estimator is unbiased)
  and points within 3 spreads of it are left out of the slope fits.

Writes bench/out/convergence.json and bench/out/convergence.png; prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

jax.config.update("jax_enable_x64", True)

from pipeline import samplers, schedules  # noqa: E402
from pipeline.io import atomic_savefig, atomic_write_text  # noqa: E402
from pipeline.data.gmm import gmm_preset  # noqa: E402

DETERMINISTIC = ("ddim", "accel-ddim", "dpm-solver++2m")
STOCHASTIC = ("ddpm", "accel-ddpm")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def rff_frequencies(key, n_features: int, dim: int, bandwidth: float):
    """w_j ~ N(0, I / bandwidth^2): random Fourier features of the Gaussian kernel (Rahimi & Recht 2007)."""
    return jax.random.normal(key, (n_features, dim), jnp.float64) / bandwidth


def mixture_charfn(gmm, w):
    """phi(w) = E exp(i w.x) = sum_k pi_k exp(i w.m_k - s_k^2 |w|^2 / 2) for the isotropic mixture; (re, im)."""
    phase = w @ jnp.asarray(gmm.means).T  # [D, K]
    damp = jnp.exp(-0.5 * jnp.asarray(gmm.stds) ** 2 * jnp.sum(w * w, 1, keepdims=True))  # [D, K]
    wk = jnp.asarray(gmm.weights)
    return jnp.sum(wk * damp * jnp.cos(phase), 1), jnp.sum(wk * damp * jnp.sin(phase), 1)


@jax.jit
def _feature_sums(x, w):
    proj = x @ w.T  # [n, D]
    return jnp.sum(jnp.cos(proj), 0), jnp.sum(jnp.sin(proj), 0)


def mmd2_to_mixture(x, w, phi, chunk: int = 16384) -> float:
    """Unbiased MMD^2 between the samples x [n, d] and the exact mixture (characteristic function
    phi at the frequencies w), for the kernel mean_j cos(w_j . (x - y))."""
    n = x.shape[0]
    c = s = 0.0
    for i in range(0, n, chunk):
        ci, si = _feature_sums(x[i : i + chunk], w)
        c, s = c + ci, s + si
    pr, pi = phi
    per_freq = (c * c + s * s - n) / (n * (n - 1.0)) - 2.0 * (pr * c + pi * s) / n + pr * pr + pi * pi
    return float(jnp.mean(per_freq))


def fit_slope(ks, errs, keep):
    """Least-squares slope of log err on log K over the kept points (None if fewer than 3)."""
    ks, errs = np.asarray(ks, float)[keep], np.asarray(errs, float)[keep]
    if len(ks) < 3:
        return None
    return float(np.polyfit(np.log(ks), np.log(errs), 1)[0])


def run(args) -> dict:
    sched = schedules.get("cosine")
    key = jax.random.key(args.seed)
    results = {"meta": {}, "targets": {}}
    t_start = time.time()
    total = len(args.targets) * (1 + len(args.strides) * len(args.ks) * (len(DETERMINISTIC) + len(STOCHASTIC)))
    bar = tqdm(total=total, desc="convergence", file=sys.stderr)
    n_stoch = dict(zip(args.targets, args.n_stoch * len(args.targets) if len(args.n_stoch) == 1 else args.n_stoch))
    load_start = os.getloadavg()[0]
    for target in args.targets:
        gmm = gmm_preset(target)
        d = gmm.dim
        k_det, k_sto, k_w, k_floor, k_noise = jax.random.split(jax.random.fold_in(key, d), 5)
        eps_fn = gmm.eps_fn(sched)
        bandwidth = args.bandwidth_per_std * float(np.mean(gmm.stds)) * np.sqrt(d)
        w = rff_frequencies(k_w, args.features, d, bandwidth)
        phi = mixture_charfn(gmm, w)

        # reference PF-ODE solutions of the deterministic x_T, and their own error
        x_T = jax.random.normal(k_det, (args.n_det, d), jnp.float64)
        ref = samplers.sample("dpm-solver++2m", eps_fn, sched, x_T, args.ref_steps, stride="logsnr")
        half = samplers.sample("dpm-solver++2m", eps_fn, sched, x_T, args.ref_steps // 2, stride="logsnr")
        ref_err = float(jnp.mean(jnp.linalg.norm(half - ref, axis=1))) / 3.0  # Richardson, order 2

        # the MMD estimator on exact mixture samples: its noise floor
        floor = [mmd2_to_mixture(gmm.sample(jax.random.fold_in(k_floor, r), n_stoch[target], jnp.float64), w, phi)
                 for r in range(args.floor_reps)]
        floor_mean, floor_std = float(np.mean(floor)), float(np.std(floor, ddof=1))
        bar.update(1)

        entry = {"dim": d, "n_stoch": n_stoch[target], "bandwidth": bandwidth, "reference_error": ref_err,
                 "mmd2_floor_mean": floor_mean, "mmd2_floor_std": floor_std, "strides": {}}
        x_noise = jax.random.normal(k_sto, (n_stoch[target], d), jnp.float32)
        for stride in args.strides:
            rows = {}
            for name in DETERMINISTIC:
                errs, medians = [], []
                for K in args.ks:
                    dist = jnp.linalg.norm(samplers.sample(name, eps_fn, sched, x_T, K, stride=stride) - ref, axis=1)
                    errs.append(float(jnp.mean(dist)))
                    medians.append(float(jnp.median(dist)))
                    bar.update(1)
                keep = np.asarray(errs) > 10 * ref_err
                late = np.asarray(args.ks) >= 20
                rows[name] = {"metric": "mean |x0 - x0_ref|", "errors": errs, "kept": keep.tolist(),
                              "slope": fit_slope(args.ks, errs, keep), "slope_K>=20": fit_slope(args.ks, errs, keep & late),
                              "median_errors": medians,
                              "median_slope_K>=20": fit_slope(args.ks, medians, (np.asarray(medians) > 10 * ref_err) & late)}
            for name in STOCHASTIC:
                mmd2 = []
                for K in args.ks:
                    x0 = samplers.sample(name, eps_fn, sched, x_noise, K, key=jax.random.fold_in(k_noise, K), stride=stride)
                    mmd2.append(mmd2_to_mixture(x0.astype(jnp.float64), w, phi) - floor_mean)
                    bar.update(1)
                mmd = [float(np.sqrt(max(v, 0.0))) for v in mmd2]
                keep = np.asarray(mmd2) > 3 * floor_std
                rows[name] = {"metric": "MMD (RFF Gaussian kernel, floor subtracted)", "mmd2": mmd2, "errors": mmd,
                              "kept": keep.tolist(), "slope": fit_slope(args.ks, mmd, keep),
                              "slope_K>=20": fit_slope(args.ks, mmd, keep & (np.asarray(args.ks) >= 20))}
            entry["strides"][stride] = rows
        results["targets"][target] = entry
    bar.close()
    results["meta"] = {
        "command": "python bench/convergence.py " + " ".join(sys.argv[1:]),
        "schedule": "cosine", "dtype": "float64 (deterministic), float32 (stochastic chains)", "ks": list(args.ks), "strides": list(args.strides),
        "n_det": args.n_det, "n_stoch": n_stoch, "features": args.features, "ref_steps": args.ref_steps,
        "floor_reps": args.floor_reps, "seed": args.seed, "seconds": round(time.time() - t_start, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__} ({jax.default_backend()})",
        "load_average_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    }
    return results


def table(results) -> str:
    ks = results["meta"]["ks"]
    head = ("| target | stride | sampler | " + " | ".join(f"K={k}" for k in ks)
            + " | slope (all kept) | slope (K>=20) | median-error slope (K>=20) |")
    lines = [head, "|" + "---|" * (len(ks) + 6)]
    for target, entry in results["targets"].items():
        for stride, rows in entry["strides"].items():
            for name, row in rows.items():
                cells = [f"{e:.2e}" if kept else f"({e:.1e})" for e, kept in zip(row["errors"], row["kept"])]
                sl = [f"{row[k]:.2f}" if row.get(k) is not None else "-" for k in ("slope", "slope_K>=20", "median_slope_K>=20")]
                lines.append(f"| {target} | {stride} | {name} | " + " | ".join(cells) + " | " + " | ".join(sl) + " |")
    return "\n".join(lines)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = np.asarray(results["meta"]["ks"], float)
    panels = [(t, s) for t, e in results["targets"].items() for s in e["strides"]]
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 7.5), squeeze=False)
    for col, (target, stride) in enumerate(panels):
        rows = results["targets"][target]["strides"][stride]
        for r, names in enumerate((DETERMINISTIC, STOCHASTIC)):
            ax = axes[r, col]
            for name in names:
                e = np.asarray(rows[name]["errors"])
                keep = np.asarray(rows[name]["kept"]) & (e > 0)
                sl = rows[name]["slope"]
                ax.loglog(ks[keep], e[keep], "o-", label=f"{name} ({sl:.2f})" if sl is not None else name)
            for p, style in ((1, ":"), (2, "--")) if r == 0 else ((0.5, ":"), (1, "--")):
                e0 = max(rows[n]["errors"][0] for n in names)
                ax.loglog(ks, e0 * (ks / ks[0]) ** -p, "k" + style, lw=0.7, label=f"K^-{p}")
            ax.set_title(f"{target}, {stride} stride")
            ax.set_xlabel("steps K")
            ax.set_ylabel("mean |x0 - ref|" if r == 0 else "MMD to the mixture")
            ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--targets", nargs="+", default=["ring2d", "mix16d"])
    p.add_argument("--strides", nargs="+", default=["quadratic", "logsnr"], choices=schedules.STRIDES)
    p.add_argument("--ks", nargs="+", type=int, default=[5, 10, 20, 40, 80, 160])
    p.add_argument("--n-det", type=int, default=1000, help="x_T per deterministic sampler")
    p.add_argument("--n-stoch", nargs="+", type=int, default=[2**17, 2**16],
                   help="samples per stochastic run, one per target (or one for all)")
    p.add_argument("--features", type=int, default=256, help="random Fourier features of the MMD kernel")
    p.add_argument("--bandwidth-per-std", type=float, default=1.0, help="kernel bandwidth / (mean component std * sqrt(d))")
    p.add_argument("--ref-steps", type=int, default=3000)
    p.add_argument("--floor-reps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=OUT)
    args = p.parse_args(argv)
    if len(args.n_stoch) not in (1, len(args.targets)):
        p.error("--n-stoch takes one value, or one per target")
    os.makedirs(args.out, exist_ok=True)
    results = run(args)
    atomic_write_text(os.path.join(args.out, "convergence.json"), json.dumps(results, indent=1))
    plot(results, os.path.join(args.out, "convergence.png"))
    print(table(results))
    for target, e in results["targets"].items():
        print(f"{target}: reference error ~{e['reference_error']:.1e}; MMD^2 floor {e['mmd2_floor_mean']:.1e} +- {e['mmd2_floor_std']:.1e}")
    meta = results["meta"]
    print(f"{meta['seconds']} s; {meta['machine']}; load average {meta['load_average_start_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
