"""Run reports: sample grids, the FD-vs-NFE frontier plot, and report.md (no Ray, no JAX)."""
from __future__ import annotations

import math
import os

import numpy as np

from pipeline.io import atomic_savefig, atomic_write_text


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_grid(images, path, ncol: int | None = None, title: str | None = None):
    """Save images [N, H, W, C] in [-1, 1] as one PNG grid."""
    images = np.clip((np.asarray(images, np.float32) + 1.0) / 2.0, 0.0, 1.0)
    n, h, w, c = images.shape
    ncol = ncol or int(math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(n / ncol))
    canvas = np.ones((nrow * (h + 1) + 1, ncol * (w + 1) + 1, c), np.float32)
    for i in range(n):
        r, q = divmod(i, ncol)
        canvas[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = images[i]
    plt = _pyplot()
    fig = plt.figure(figsize=(max(2.0, ncol * 0.35), max(2.0, nrow * 0.35 + (0.3 if title else 0))))
    ax = fig.add_axes([0, 0, 1, 0.92 if title else 1])
    ax.imshow(canvas[..., 0] if c == 1 else canvas, cmap="gray" if c == 1 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=8)
    atomic_savefig(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def pareto_front(points) -> list:
    """The (NFE, metric) points no other point beats at the same or a lower NFE, by NFE."""
    front = []
    for nfe, v in sorted(points, key=lambda p: (p[0], p[1])):
        if not front or v < front[-1][1]:
            front.append((nfe, v))
    return front


def frontier_plot(rows: list[dict], path, metric: str = "fd", title: str = "FD vs NFE"):
    """One line per method: `metric` against NFE on log-log axes, with error bars of ± the row's
    `<metric>_std` (its std over evaluation seeds) where it has one, and the frontier over all methods."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    by_method: dict[str, list] = {}
    for r in rows:
        if r.get(metric) is not None and r.get("nfe"):
            by_method.setdefault(r["method"], []).append((r["nfe"], r[metric], r.get(f"{metric}_std") or 0.0))
    colors = plt.get_cmap("tab20").colors
    markers = "osD^v<>p"
    for i, (method, pts) in enumerate(sorted(by_method.items())):
        pts.sort()
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt="-",
                    marker=markers[i % len(markers)], label=method, ms=5, capsize=3,
                    color=colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20])
    front = pareto_front([p[:2] for pts in by_method.values() for p in pts])
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], "k--", where="post", lw=1, alpha=0.6,
                label="frontier (best at <= NFE)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    nfes = sorted({p[0] for pts in by_method.values() for p in pts})
    if nfes:  # the NFEs measured as plain numbers, not 4 x 10^0
        ax.set_xticks(nfes, [str(n) for n in nfes])
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel("NFE (model evaluations per sample)")
    ax.set_ylabel(metric.upper())
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    atomic_savefig(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def kid_scale(rows: list[dict]) -> int:
    """The power of ten k, a multiple of 3, for which the table gives KID x 10^k: the largest |KID|
    then lies in [1, 1000) (k = 3 for the usual Inception KID ~ 0.01; k = 0 for KIDs in the
    hundreds, as in the digit classifier's unnormalised features)."""
    kids = [abs(r["kid"]) for r in rows if r.get("kid")]
    return 3 if not kids else -3 * math.floor(math.floor(math.log10(max(kids))) / 3)


def kid_header(k: int) -> str:
    return "KID (± std)" if k == 0 else f"KID x 1e{k} (± std)"


def _kid(r: dict, k: int) -> str:
    """"<KID x 10^k> ± <its std x 10^k>" (kid_std: over evaluation seeds for a row of several, else
    the standard error of KID's block estimates, or the jackknife's for one block), "-" when unknown."""
    kid, std = r.get("kid"), r.get("kid_std")
    if kid is None:
        return "-"
    return f"{kid * 10.0 ** k:.2f}" + ("" if std is None else f" ± {std * 10.0 ** k:.2f}")


def _fd(r: dict) -> str:
    """"<FD> ± <std over seeds>" (just FD for a row of one seed)."""
    return _fmt(r.get("fd"), ".3f") + ("" if r.get("fd_std") is None else f" ± {r['fd_std']:.3f}")


def results_table(rows: list[dict]) -> str:
    """Markdown table ordered by NFE (then method and steps): method, its setting (the grid a
    training-free sampler was tuned to, key "setting") when any row has one, steps, NFE, FD (±
    its std over seeds), KID x 10^k (k: kid_scale) ± its std, seeds, wall time, and the training
    time behind a row (a search, a distillation: key "train_s") when any row has one."""
    training, k = any(r.get("train_s") is not None for r in rows), kid_scale(rows)
    setting = any(r.get("setting") for r in rows)
    lines = ["| method |" + (" setting |" if setting else "") + f" steps | NFE | FD | {kid_header(k)} | seeds | wall time (s) |"
             + (" training (s) |" if training else ""),
             "|---|" + ("---|" if setting else "") + "---:|---:|---:|---:|---:|---:|" + ("---:|" if training else "")]
    for r in sorted(rows, key=lambda r: (r["nfe"], r["method"], r["steps"])):
        lines.append(
            f"| {r['method']} |" + (f" {r.get('setting') or '-'} |" if setting else "")
            + f" {r['steps']} | {r['nfe']} | {_fd(r)} | {_kid(r, k)} | {r.get('seeds', 1)} | "
            f"{_fmt(r.get('wall_s'), '.1f')} |" + (f" {_fmt(r.get('train_s'), '.1f')} |" if training else "")
        )
    return "\n".join(lines)


def write_report(run_dir, rows: list[dict], grids: dict[str, str], intro: str, notes: list[str] = ()):
    """report.md in run_dir with the results table, the frontier plot and the sample grids
    (grids: method label -> PNG path relative to run_dir)."""
    frontier_plot(rows, os.path.join(run_dir, "frontier.png"))
    k = kid_scale(rows)
    parts = [
        "# ddss-pipeline report",
        "",
        intro,
        "",
        "## Results",
        "",
        results_table(rows),
        "",
        "FD and KID are measured in digit-classifier features (not Inception: not FID). "
        f"KID is given {f'x 1e{k}' if k else 'as is'}. A row of several evaluation seeds gives FD and KID as "
        "mean ± std over its seeds (error bars in the plot); a row of one seed gives KID ± its standard error "
        "over blocks of 1024 samples (the jackknife's for one block). 'setting' is the time grid, first time "
        "and clipping a training-free sampler was tuned to on validation seeds (never the seeds reported).",
        "",
        "![FD vs NFE](frontier.png)",
        "",
    ]
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if grids:
        parts += ["## Samples", ""]
        for label, rel in grids.items():
            parts += [f"**{label}**", "", f"![{label}]({rel})", ""]
    path = os.path.join(run_dir, "report.md")
    atomic_write_text(path, "\n".join(parts))
    return path
