"""DDSS on the digits teacher: FD and KID (digit-classifier features, test split) of the searched
GGDM samplers against training-free samplers at the same NFE, backprop memory of one search step
with and without rematerialisation, time per search step and search wall time.

    .venv/bin/python bench/ddss.py [--teacher RUN_DIR] [--ks 5 10 15 20 25] [--search-ks 5 10]

Goals: GGDM+PRED+TIME FD at most half the best DDIM's at K=5, and 1.3x below the best of
DPM-Solver++(2M)/iPNDM at K=5 and 10; backprop temp memory with remat K=25 / K=5 <= 1.5.
Without --teacher it uses (training once) the default digits teacher under bench/out/teacher
(bench/common.py). The same comparison runs on a Gaussian mixture with its exact denoiser
(--gmm, features = the samples, FD against exact samples) as a control free of model error.
Searches run in this process (no Ray) under bench/out/ddss/<problem>-<variant>-K<K> and are
reused (resumed) when the bench runs again. Writes bench/out/ddss.json, ddss.png and ddss.md
(the tables) and prints them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

ROOT, OUT = common.ROOT, common.OUT
# (sampler, stride) baselines; accel-ddim joins when it is registered.
BASELINES = [("ddpm", "linear"), ("ddpm", "quadratic"), ("ddim", "linear"), ("ddim", "quadratic"),
             ("accel-ddim", "quadratic"), ("dpm-solver++2m", "quadratic"), ("dpm-solver++2m", "logsnr"),
             ("ipndm", "quadratic"), ("ipndm", "logsnr")]
VARIANTS = ("ggdm", "ggdm+pred+time")
REMAT = ("adjoint", "adjoint-unrolled", "step", "none")


def memory_and_time(teacher: str, cache_dir: str, K: int, remat: str, batch: int) -> dict:
    """Temp memory XLA plans for one search gradient step (compiled memory_analysis), and its time."""
    import jax
    import jax.numpy as jnp

    from pipeline import ddss
    from pipeline.ddss.chain import Chain, kid_loss
    from pipeline.ddss.problem import build_problem
    from pipeline.distributed.context import make_mesh

    cfg = ddss.load_config(None, {"teacher": teacher, "steps": K, "remat": remat, "cache_dir": cache_dir})
    problem = build_problem(cfg)
    loss = kid_loss(Chain(problem.model, problem.feature_fn), problem.reference, make_mesh(), remat)
    params = ddss.init_params(K, "ggdm+pred+time", problem.model.schedule)
    t = time.time()
    step = jax.jit(jax.value_and_grad(lambda p: loss(p, jax.random.key(0), jnp.arange(batch)))).lower(params).compile()
    compile_s = time.time() - t
    jax.block_until_ready(step(params))
    t = time.time()
    jax.block_until_ready(step(params))
    mem = step.memory_analysis()
    out = {"K": K, "remat": remat, "batch": batch, "temp_bytes": int(mem.temp_size_in_bytes),
           "compile_s": compile_s, "step_s": time.time() - t}
    print(f"  memory K={K} {remat}: {out['temp_bytes'] / 2**20:.1f} MiB, step {out['step_s']:.2f} s, compile {compile_s:.0f} s", file=sys.stderr)
    return out


def run_search(problem_key: dict, variant: str, K: int, args, name: str, budget: tuple) -> dict:
    """A search (resumed if its run exists): its results, or {"diverged": message}."""
    from pipeline import ddss, rundir

    run_dir = os.path.join(OUT, "ddss", f"{name}-{variant}-K{K}")
    cfg = ddss.load_config(None, {
        **problem_key, "steps": K, "variant": variant, "batch_size": budget[0], "train_steps": budget[1],
        "learning_rate": args.learning_rate, "eval_every": args.eval_every, "eval_samples": args.eval_samples,
        "checkpoint_every": args.eval_every, "remat": args.remat, "workers": 0})
    resume = os.path.isfile(os.path.join(run_dir, rundir.CONFIG))
    t = time.time()
    try:
        result = ddss.search(cfg, run_dir=run_dir, resume=resume)
    except ddss.SearchDiverged as e:
        return {"diverged": str(e), "wall_s": time.time() - t}
    result["wall_s"] = time.time() - t
    return result


def table(rows, ks) -> str:
    names = list(dict.fromkeys(r["name"] for r in rows))
    by = {(r["name"], r["K"]): r for r in rows}
    head = "| sampler (NFE = K) | " + " | ".join(f"K={k} FD / KID" for k in ks) + " |"
    lines = [head, "|" + "---|" * (len(ks) + 1)]
    for name in names:
        cells = [f"{by[name, k]['fd']:.3f} / {by[name, k]['kid']:.4f}" if (name, k) in by else "-" for k in ks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(panels, path):
    """FD against K, one panel per problem."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.io import atomic_savefig

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (title, rows, ks) in zip(axes[0], panels):
        for name in dict.fromkeys(r["name"] for r in rows):
            pts = sorted((r["K"], r["fd"]) for r in rows if r["name"] == name)
            ours = name.startswith("GGDM")
            ax.plot([q[0] for q in pts], [q[1] for q in pts], "-o" if ours else "--.", label=name, lw=2 if ours else 1)
        ax.set_yscale("log")
        ax.set_xticks(ks)
        ax.set_xlabel("K = NFE")
        ax.set_ylabel("FD")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)


def x0_error_at_t1(teacher: str) -> dict:
    """RMS error of the teacher's x0_hat = (x_t - sigma eps_hat) / alpha at t = 1 and t = 0.9 on the
    training digits: every sampler's first step from t = 1 divides eps_hat's error by alpha(1)."""
    import jax
    import jax.numpy as jnp

    from pipeline.data import loading
    from pipeline.teacher import model as tmodel

    T = tmodel.load_teacher(teacher)
    x0, y = (jnp.asarray(a[:512]) for a in loading.load_data(T.config.data, "train"))
    out = {}
    for t in (1.0, 0.9):
        eps = jax.random.normal(jax.random.key(0), x0.shape)
        a, s = T.schedule.alpha(t), T.schedule.sigma(t)
        e = T.eps_fn(y)(a * x0 + s * eps, jnp.full(x0.shape[:1], t))
        out[f"t={t}"] = {"alpha": float(a), "eps_rmse": float(jnp.sqrt(jnp.mean((e - eps) ** 2))),
                         "x0_rmse": float(jnp.sqrt(jnp.mean(((a * x0 + s * eps - s * e) / a - x0) ** 2)))}
    return out


def section(name: str, problem, problem_key: dict, args, ks, budget) -> dict:
    """Searches at search_ks for both variants, then every sampler at ks, FD/KID against the problem's reference."""
    from pipeline import samplers

    searches, rows = {}, []
    for variant in VARIANTS:
        for K in args.search_ks:
            res = searches[f"{variant} K={K}"] = run_search(problem_key, variant, K, args, name, budget)
            print(f"[{name}] search {variant} K={K}: {res.get('diverged') or res.get('best_val_kid')}", file=sys.stderr)
            if "artefact" in res:
                rows.append({"name": variant.upper(), "sampler": f"ggdm:{res['artefact']}", "K": K,
                             **common.score(problem, f"ggdm:{res['artefact']}", K, "quadratic", args.num_samples)})
    registered = set(samplers.names())
    for sampler, stride in BASELINES:
        if sampler in registered:
            for K in ks:
                rows.append({"name": f"{sampler} ({stride})", "sampler": sampler, "stride": stride, "K": K,
                             **common.score(problem, sampler, K, stride, args.num_samples)})

    def best(prefixes, K):
        vals = [r["fd"] for r in rows if r["K"] == K and any(r["name"].startswith(p) for p in prefixes)]
        return min(vals) if vals else None

    goals = {}
    for K in args.search_ks:
        ours, ddim, other = best(["GGDM+PRED+TIME"], K), best(["ddim "], K), best(["dpm-solver++2m", "ipndm"], K)
        goals[f"K={K}"] = {"ggdm+pred+time_fd": ours, "best_ddim_fd": ddim, "best_dpm_ipndm_fd": other,
                           "half_of_ddim": None if ours is None else bool(ours <= 0.5 * ddim),
                           "1.3x_below_dpm_ipndm": None if ours is None else bool(ours * 1.3 <= other)}
    return {"rows": rows, "searches": searches, "goals": goals, "table": table(rows, ks)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", help="a trained digits teacher run (default: the shared bench teacher, bench/out/teacher)")
    p.add_argument("--cache-dir", default=os.path.join(ROOT, ".cache"), help="digit-classifier cache")
    p.add_argument("--ks", type=int, nargs="+", default=[5, 10, 25], help="digits: K of the baselines")
    p.add_argument("--gmm-ks", type=int, nargs="+", default=[5, 10, 15, 20, 25], help="gmm control: K of the baselines")
    p.add_argument("--search-ks", type=int, nargs="+", default=[5, 10])
    p.add_argument("--num-samples", type=int, default=2000)
    p.add_argument("--train-steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=5e-3)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--eval-samples", type=int, default=500)
    p.add_argument("--remat", default="adjoint-unrolled", help="remat mode of the searches (CPU: adjoint-unrolled is fastest)")
    p.add_argument("--memory-ks", type=int, nargs="+", default=[5, 25])
    p.add_argument("--memory-batch", type=int, default=64)
    p.add_argument("--gmm-batch-size", type=int, default=256)
    p.add_argument("--gmm-train-steps", type=int, default=400)
    p.add_argument("--gmm", default="mix16d", help="the exact-denoiser control (features = the samples); '' skips it")
    args = p.parse_args(argv)

    t_start, load0 = time.time(), os.getloadavg()[0]
    teacher = os.path.abspath(args.teacher) if args.teacher else common.default_teacher()

    from pipeline.io import atomic_write_text
    from pipeline.data.gmm import gmm_preset
    from pipeline.evaluation import analytic_problem, teacher_problem

    out = {"meta": {"command": "python bench/ddss.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "teacher": teacher, "args": vars(args), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores"}}
    problem = teacher_problem(teacher, args.cache_dir)
    problem.prepare()  # the digit classifier, trained once and cached
    out["teacher_x0_error"] = x0_error_at_t1(teacher)
    print(f"teacher x0_hat error: {out['teacher_x0_error']}", file=sys.stderr)
    memory = [memory_and_time(teacher, args.cache_dir, K, remat, args.memory_batch)
              for K in args.memory_ks for remat in REMAT]
    lo, hi = min(args.memory_ks), max(args.memory_ks)
    mem = {(m["K"], m["remat"]): m["temp_bytes"] for m in memory}
    step_s = {(m["K"], m["remat"]): m["step_s"] for m in memory}
    out["memory"] = memory
    out["memory_ratio"] = {r: mem[hi, r] / mem[lo, r] for r in REMAT}
    out["digits"] = section("digits", problem, {"teacher": teacher, "cache_dir": args.cache_dir}, args, args.ks,
                           (args.batch_size, args.train_steps))
    if args.gmm:
        gm = gmm_preset(args.gmm)
        out["gmm"] = section(args.gmm, analytic_problem(gm.means, gm.stds, gm.weights, reference_samples=args.num_samples),
                             {"gmm": args.gmm, "reference_samples": args.num_samples}, args, args.gmm_ks,
                             (args.gmm_batch_size, args.gmm_train_steps))
    out["meta"].update(seconds=time.time() - t_start, load_average_start_end=[load0, os.getloadavg()[0]])

    os.makedirs(OUT, exist_ok=True)
    atomic_write_text(os.path.join(OUT, "ddss.json"), json.dumps(out, indent=1, default=float) + "\n")
    plot([("digits teacher, digit-classifier features", out["digits"]["rows"], args.ks)]
         + ([(f"{args.gmm} exact denoiser, samples as features", out["gmm"]["rows"], args.gmm_ks)] if args.gmm else []),
         os.path.join(OUT, "ddss.png"))
    md = ["## digits", out["digits"]["table"]] + ([f"## {args.gmm}", out["gmm"]["table"]] if args.gmm else [])
    md += ["## backprop memory and time of one search step (digits teacher, batch %d)" % args.memory_batch,
           "\n".join(["| remat | " + " | ".join(f"K={K}: temp MiB / step s" for K in args.memory_ks) + " | K=%d/K=%d memory |" % (hi, lo),
                      "|---|" + "---|" * (len(args.memory_ks) + 1)]
                     + [f"| {r} | " + " | ".join(f"{mem[K, r] / 2**20:.1f} / {step_s[K, r]:.2f}" for K in args.memory_ks)
                        + f" | {out['memory_ratio'][r]:.2f} |" for r in REMAT])]
    atomic_write_text(os.path.join(OUT, "ddss.md"), "\n\n".join(md) + "\n")
    print("\n\n".join(md))
    print(json.dumps({"goals": {k: out[k]["goals"] for k in ("digits", "gmm") if k in out},
                      "memory_ratio_K%d_over_K%d" % (hi, lo): out["memory_ratio"],
                      "teacher_x0_error": out["teacher_x0_error"],
                      "search": {f"{k} {n}": {x: v.get(x) for x in ("step_s", "search_s", "wall_s", "diverged")}
                                 for k in ("digits", "gmm") if k in out for n, v in out[k]["searches"].items()}},
                     indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
