"""A fair comparison (issue 14): every training-free sampler at its best settings, DDSS against
the best of them, on test seeds, as mean ± std.

    .venv/bin/python bench/fair.py [--teacher RUN_DIR] [--ks 5 10 20] [--gmm ring2d mix16d]

The protocol is pipeline.evaluation.protocol's:
1. tune: for each problem, sampler and K, the time grid, first time t_max and x0 clipping are
   chosen on validation seeds (protocol.tune, lowest mean FD; each metric tuned separately);
2. test: the chosen setting on the test seeds, mean ± std;
3. ddss: GGDM+PRED+TIME searches (several search seeds) start from the best tuned training-free
   sampler at that K, exactly (its GGDM parameters on its grid, t_max and clipping:
   samplers.linear), are selected by FD on held-out data, and are scored on the
   same test seeds (mean ± std over search seeds x test seeds);
4. goals: DDSS against the best tuned training-free sampler, "better" only beyond 2 std.
Metrics, from the same samples: digits FD/KID (digit-classifier features) against the test split
("fd_test", floored by the teacher's own error) and against the teacher's converged samples
("fd_teacher": 512-step DDIM, no floor); Gaussian mixtures: FD against exact samples ("fd_exact").
Every score is cached in OUT/scores.json (a rerun resumes; another search setting wants another --out,
into which scores.json may be copied to reuse the tuning); writes OUT/fair.json, fair.md and fair.png
and prints the tables. --smoke: a seconds-long run on one mixture (tests).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SAMPLERS = ("ddim", "accel-ddim", "dpm-solver++2m", "dpm-solver++3m", "unipc-2", "unipc-3", "ipndm")
BLOCK = 500  # samples per jitted block


class Scorer:
    """One problem's model, features and references, built once; `score` evaluates n samples of
    a sampler from key(seed) with pipeline.evaluation's Evaluator (what `ddss evaluate` runs in
    its actors; its compiled chain is shared across grids and seeds) and returns FD/KID against
    every reference."""

    def __init__(self, name: str, problem, references: dict, clips: bool, block: int = BLOCK):
        from pipeline.evaluation import Problem, pixel_features

        self.name, self.block, self.clips = name, block, clips
        self.model = model = problem.model()
        self.feature_fn = feature_fn = problem.features() if problem.features is not None else pixel_features
        self.problem = Problem(model=lambda: model, features=lambda: feature_fn, label=problem.label)
        self.references = {k: np.asarray(fn(feature_fn), np.float32) for k, fn in references.items()}

    def score(self, sampler: str, K: int, setting, seed: int, n: int, plan=None) -> dict:
        from pipeline.evaluation import EvalSpec, Evaluator, merge, metrics
        from pipeline.samplers import SamplerDiverged

        spec = EvalSpec(self.problem, sampler, K, n, seed=seed, stride=setting.stride, t_max=setting.t_max,
                        clip_x0=setting.clip_x0, batch_size=min(self.block, n), plan=plan)
        try:
            feats, moments = merge(spec, [Evaluator(spec).run(0, spec.num_blocks)])
        except SamplerDiverged:
            return {k: float("inf") for r in self.references for k in (f"fd_{r}", f"kid_{r}")}
        out = {}
        for r, ref in self.references.items():
            m = metrics(feats, moments, ref)
            out[f"fd_{r}"], out[f"kid_{r}"] = float(m["fd"]), float(m["kid"])
        return out


class NotCached(Exception):
    """--cached-only: a score this run has not computed yet."""


class Cache:
    """Scores by key, kept in a JSON file rewritten atomically after each new score. cached_only:
    nothing is computed (NotCached instead), for tables of an interrupted run."""

    def __init__(self, path: str, cached_only: bool = False):
        self.path, self.cached_only = path, cached_only
        self.data = json.load(open(path)) if os.path.isfile(path) else {}

    def get(self, key: str, compute):
        if key not in self.data:
            if self.cached_only:
                raise NotCached(key)
            self.data[key] = compute()
            from pipeline.io import atomic_write_json

            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            atomic_write_json(self.path, self.data)
        return self.data[key]


def grid_key(grid) -> str:
    return hashlib.sha256(np.asarray(grid, np.float64).tobytes()).hexdigest()[:16]


def training_free(scorer, cache, sampler, K, metric, args):
    """(Tuned on validation seeds by `metric`, its test-seed scores)."""
    from pipeline import schedules
    from pipeline.evaluation import protocol

    sched = scorer.model.schedule

    def run(setting, seed, n):
        grid = schedules.time_grid(K, setting.stride, sched, t_max=setting.t_max)
        key = f"{scorer.name}|{sampler}|K={K}|grid={grid_key(grid)}|clip={setting.clip_x0 or not scorer.clips}|seed={seed}|n={n}"
        return cache.get(key, lambda: _timed(scorer.score, f"{scorer.name} {sampler} K={K} {setting.label} seed {seed}",
                                             sampler, K, setting, seed, n))

    tuned = protocol.tune(lambda s, seed: run(s, seed, args.val_samples)[metric], args.strides, args.val_seeds,
                          t_maxes=args.t_max, clips=(True, False) if scorer.clips else (True,))
    test = [run(tuned.setting, seed, args.test_samples) for seed in args.test_seeds]
    return tuned, test


def _timed(fn, label, *a):
    t = time.time()
    out = fn(*a)
    print(f"  {label}: " + " ".join(f"{k} {v:.4g}" for k, v in out.items()) + f" [{time.time() - t:.0f} s]", file=sys.stderr)
    return out


def ddss(scorer, cache, problem_key: dict, K: int, start_method: str, start, seed: int, args) -> list:
    """Test-seed scores of one GGDM+PRED+TIME search started from `start_method` exactly (samplers.linear) on
    `start`'s grid, t_max and clipping."""
    from pipeline import ddss as search_mod
    from pipeline import rundir
    from pipeline.ddss import artefact
    from pipeline.evaluation import protocol

    clip = "" if start.clip_x0 or not scorer.clips else "-unclipped"
    reference = {"reference": args.search_reference} if "teacher" in problem_key else {}
    run_dir = os.path.join(args.out, "ddss",
                           f"{scorer.name}-K{K}-{start_method}-{start.stride}-t{start.t_max:g}{clip}-seed{seed}")
    cfg = search_mod.load_config(None, {
        **problem_key, **reference, "reference_samples": args.search_reference_samples, "steps": K,
        "variant": "ggdm+pred+time", "init": start_method, "stride": start.stride, "t_max": start.t_max,
        "clip_x0": start.clip_x0 or not scorer.clips,
        "seed": seed, "batch_size": args.search_batch, "train_steps": args.search_steps, "learning_rate": args.search_lr,
        "eval_every": args.search_eval_every, "eval_samples": args.search_eval_samples, "select_by": "fd",
        "checkpoint_every": args.search_eval_every, "remat": "adjoint-unrolled", "workers": 0})
    if not os.path.isfile(os.path.join(run_dir, "sampler", "meta.json")):
        if cache.cached_only:
            raise NotCached(run_dir)
        resume = os.path.isfile(os.path.join(run_dir, rundir.CONFIG))
        t = time.time()
        search_mod.search(cfg, run_dir=run_dir, resume=resume)
        print(f"  search {run_dir}: {time.time() - t:.0f} s", file=sys.stderr)
    path = os.path.join(run_dir, "sampler")
    digest = artefact.load_artefact(path)["meta"]["params_sha256"][:16]
    plan = functools.partial(artefact.plan, path)
    return [cache.get(f"{scorer.name}|ggdm|K={K}|artefact={digest}|seed={s}|n={args.test_samples}",
                      lambda s=s: _timed(scorer.score, f"{scorer.name} ddss K={K} seed {s}", f"ggdm:{path}", K,
                                         protocol.Setting(), s, args.test_samples, plan))
            for s in args.test_seeds]


def section(scorer, cache, metrics_: tuple, problem_key: dict, args) -> dict:
    """Tuned training-free samplers and DDSS at every K, for each metric; the goals."""
    from pipeline import ddss as search_mod
    from pipeline.evaluation import protocol

    out, starts = {}, {}
    for metric in metrics_:
        rows, goals = [], {}
        for K in args.ks:
            tuned_rows = []
            for sampler in args.samplers:
                try:
                    tuned, test = training_free(scorer, cache, sampler, K, metric, args)
                except NotCached:
                    continue
                tuned_rows.append({"method": sampler, "K": K, "setting": dataclasses.asdict(tuned.setting),
                                   "label": tuned.setting.label, "val": dataclasses.asdict(tuned.score),
                                   "tried": [{"setting": dataclasses.asdict(s), **dataclasses.asdict(v)}
                                             for s, v in tuned.tried.items()],
                                   "test": dataclasses.asdict(protocol.summary(t[metric] for t in test)),
                                   "kid": dataclasses.asdict(protocol.summary(t[metric.replace("fd", "kid")] for t in test))})
            rows += tuned_rows
            if not args.ddss_seeds:
                continue
            if not tuned_rows:
                continue
            if K not in starts:  # chosen on validation (never test) by the first metric; every metric scores the same searches
                start_row = min(tuned_rows, key=lambda r: r["val"]["mean"])
                starts[K] = (start_row["method"], protocol.Setting(**start_row["setting"]))
            start_method, start = starts[K]
            scores, diverged = [], []
            for seed in args.ddss_seeds:
                try:
                    scores += ddss(scorer, cache, problem_key, K, start_method, start, seed, args)
                except NotCached:
                    continue
                except search_mod.SearchDiverged as e:  # reported in the row, not hidden
                    print(f"  {scorer.name} K={K} search seed {seed}: {e}", file=sys.stderr)
                    diverged.append(seed)
            if not scores:
                continue
            ours = protocol.summary(t[metric] for t in scores)
            gone = f"; search seeds {diverged} diverged" if diverged else ""
            rows.append({"method": "DDSS (GGDM+PRED+TIME)", "K": K, "label": f"from {start_method} {start.label}{gone}",
                         "setting": dataclasses.asdict(start), "test": dataclasses.asdict(ours),
                         "kid": dataclasses.asdict(protocol.summary(t[metric.replace("fd", "kid")] for t in scores))})
            best = min(tuned_rows, key=lambda r: r["test"]["mean"])
            b = protocol.Stat(**best["test"])
            goals[f"K={K}"] = {"ddss": str(ours), "best_training_free": f"{best['method']} ({best['label']}) {b}",
                               "ratio": protocol.ratio(ours, b), "verdict": protocol.verdict(ours, b)}
        out[metric] = {"rows": rows, "goals": goals}
    return out


def table(rows, ks, metric) -> str:
    by = {(r["method"], r["K"]): r for r in rows}
    lines = ["| method | " + " | ".join(f"K={k} {metric} (setting)" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for m in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for k in ks:
            r = by.get((m, k))
            cells.append("-" if r is None else f"{r['test']['mean']:.4g} ± {r['test']['std']:.2g} ({r['label']})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(panels, path):
    """FD (mean ± std over test seeds) against K, one panel per problem and metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.io import atomic_savefig

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (title, rows) in zip(axes[0], panels):
        for m in dict.fromkeys(r["method"] for r in rows):
            pts = sorted((r["K"], r["test"]["mean"], r["test"]["std"]) for r in rows if r["method"] == m)
            ours = m.startswith("DDSS")
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], capsize=3,
                        fmt="-o" if ours else "--.", lw=2 if ours else 1, label=m)
        ax.set(xlabel="K = NFE", ylabel="FD (mean ± std over test seeds)", yscale="log", title=title)
        if rows:
            ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", help="a trained digits teacher run (default: bench/out/teacher, trained once)")
    p.add_argument("--no-digits", action="store_true", help="only the Gaussian mixtures")
    p.add_argument("--gmm", nargs="*", default=["ring2d", "mix16d"], help="Gaussian-mixture presets (exact eps)")
    p.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20])
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    p.add_argument("--strides", nargs="+", default=None, help="grids tried (default: every schedules.STRIDES)")
    p.add_argument("--t-max", type=float, nargs="+", default=None, help="first times tried (default protocol.T_MAX)")
    p.add_argument("--val-seeds", type=int, nargs="+", default=None)
    p.add_argument("--test-seeds", type=int, nargs="+", default=None)
    p.add_argument("--val-samples", type=int, default=500)
    p.add_argument("--test-samples", type=int, default=1000)
    p.add_argument("--reference-steps", type=int, default=512, help="digits: DDIM steps of the teacher's reference samples")
    p.add_argument("--reference-samples", type=int, default=1000)
    p.add_argument("--gmm-reference-samples", type=int, default=20000)
    p.add_argument("--ddss-seeds", type=int, nargs="*", default=[0, 1])
    p.add_argument("--search-steps", type=int, default=300)
    p.add_argument("--search-batch", type=int, default=64)
    p.add_argument("--search-lr", type=float, default=5e-3)
    p.add_argument("--search-reference", choices=("data", "teacher"), default="data",
                   help="digits: what the search's KID loss matches (ddss search --reference)")
    p.add_argument("--search-reference-samples", type=int, default=2000,
                   help="the search's reference (loss and held-out validation): exact mixture samples, or teacher samples")
    p.add_argument("--search-eval-every", type=int, default=50)
    p.add_argument("--search-eval-samples", type=int, default=500)
    p.add_argument("--out", default=os.path.join(common.OUT, "fair"))
    p.add_argument("--cached-only", action="store_true", help="compute nothing: tables of what an earlier run scored")
    p.add_argument("--smoke", action="store_true", help="seconds: one mixture, K=3, tiny budgets (the tests run it)")
    args = p.parse_args(argv)

    from pipeline import schedules
    from pipeline.data.gmm import gmm_preset
    from pipeline.evaluation import analytic_problem, protocol, teacher_problem
    from pipeline.io import atomic_write_text

    if args.smoke:
        args.no_digits, args.gmm, args.ks, args.samplers = True, args.gmm[:1], [3], args.samplers[:2]
        args.val_samples, args.test_samples, args.gmm_reference_samples = 64, 64, 256
        args.search_steps, args.search_batch, args.search_eval_every, args.search_eval_samples = 4, 32, 2, 64
        args.ddss_seeds = args.ddss_seeds[:1]
        args.strides = args.strides or ["linear", "karras"]
        args.t_max = args.t_max or [1.0, 0.99]
    args.strides = args.strides or list(schedules.STRIDES)
    args.t_max = args.t_max or list(protocol.T_MAX)
    args.val_seeds = args.val_seeds or list(protocol.VALIDATION_SEEDS)
    args.test_seeds = args.test_seeds or list(protocol.TEST_SEEDS)
    protocol.check_seeds(args.val_seeds, args.test_seeds)
    t0, load0 = time.time(), os.getloadavg()[0]
    cache = Cache(os.path.join(args.out, "scores.json"), args.cached_only)
    out = {"meta": {"command": "python bench/fair.py " + " ".join(sys.argv[1:] if argv is None else argv),
                    "args": vars(args)}}
    panels, md = [], []
    if not args.no_digits:
        teacher = os.path.abspath(args.teacher) if args.teacher else common.default_teacher()
        prob = teacher_problem(teacher, common.CACHE_DIR)
        prob.prepare()
        ref = teacher_problem(teacher, common.CACHE_DIR, reference="teacher", reference_steps=args.reference_steps,
                              reference_samples=args.reference_samples)
        scorer = Scorer("digits", prob, {"test": prob.reference, "teacher": ref.reference}, clips=True)
        out["digits"] = section(scorer, cache, ("fd_test", "fd_teacher"),
                                {"teacher": teacher, "cache_dir": common.CACHE_DIR}, args)
        out["meta"]["teacher"] = teacher
    for name in args.gmm:
        gm = gmm_preset(name)
        prob = analytic_problem(gm.means, gm.stds, gm.weights, reference_samples=args.gmm_reference_samples)
        scorer = Scorer(name, prob, {"exact": prob.reference}, clips=False)
        out[name] = section(scorer, cache, ("fd_exact",), {"gmm": name}, args)
    for problem, metrics_ in out.items():
        if problem == "meta":
            continue
        for metric, res in metrics_.items():
            panels.append((f"{problem}: {metric}", res["rows"]))
            md += [f"### {problem}: {metric} (test seeds {args.test_seeds}, mean ± std)", table(res["rows"], args.ks, metric)]
            if res["goals"]:
                md.append("\n".join(f"- {k}: DDSS {g['ddss']} vs {g['best_training_free']}: "
                                     f"{g['ratio']:.2f}x, {g['verdict']}" for k, g in res["goals"].items()))
    out["meta"].update(seconds=time.time() - t0, **common.machine(load0))
    os.makedirs(args.out, exist_ok=True)
    atomic_write_text(os.path.join(args.out, "fair.json"), json.dumps(out, indent=1, default=float) + "\n")
    atomic_write_text(os.path.join(args.out, "fair.md"), "\n\n".join(md) + "\n")
    plot(panels, os.path.join(args.out, "fair.png"))
    print("\n\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
