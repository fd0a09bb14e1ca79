"""Guided distillation on digits: FD and KID (digit-classifier features vs the test split) of the
guided teacher at --teacher-steps and of the distilled students at 1, 2, 4, 8, 16 steps,
deterministic (student-ddim) and stochastic (student-stochastic), for w in {0, 0.5, 1, 2, 4};
wall time of every round.

    .venv/bin/python bench/distill.py [--teacher RUN_DIR] [--round-steps 150] [--num-samples 2000]

Goal: the 4-step student's FD within 1.2x of the teacher's at the same w.
Without --teacher it uses (training once) the default digits teacher under bench/out/teacher
(bench/common.py). The rounds run in this process (no Ray) under bench/out/distill/rounds and
are reused when the bench runs again with the same settings; the teacher's figures are cached
in bench/out/distill/teacher-ref.json. Every sampler runs on the students' grid (from t_start,
where logsnr = -8; see pipeline.distill.losses.student_grid), the teacher too, so the
comparison is on one grid. Writes bench/out/distill.json, distill.png, distill.md and sample
grids under bench/out/distill/, and prints the table.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

ROOT, OUT = common.ROOT, common.OUT
HERE = os.path.join(OUT, "distill")
GOAL = 1.2


class Scorer:
    """Samples of a denoiser factory on one grid, in jitted blocks (w and params traced, so one
    compilation per (sampler, steps)), scored by FD and KID against the digits test split."""

    def __init__(self, teacher, cache_dir: str, num_samples: int, batch: int, seed: int = 0):
        import numpy as np

        from pipeline.data.digits import load_digits
        from pipeline.models.classifier import feature_fn, load_or_train_feature_net

        self.teacher, self.n, self.batch, self.seed = teacher, num_samples, batch, seed
        self.features = feature_fn(load_or_train_feature_net(cache_dir))
        self.reference = np.asarray(self.features(load_digits("test")[0]), np.float64)

    @functools.lru_cache(maxsize=None)
    def _block(self, kind: str, sampler: str, steps: int):
        import jax
        import jax.numpy as jnp

        from pipeline import samplers
        from pipeline.evaluation import sample_inputs
        from pipeline.models import denoiser

        t = self.teacher
        make = denoiser.guided_eps_fn if kind == "teacher" else denoiser.student_eps_fn

        def block(params, grid, w, idx):
            x_T, kn, y = sample_inputs(jax.random.key(self.seed), idx, t.data_shape, t.num_classes)
            eps_fn = make(t.apply_fn, {"params": params}, y, jnp.full(idx.shape, w, jnp.float32))
            x0, bad = samplers.run(sampler, eps_fn, t.schedule, x_T, grid, key=kn)
            return x0, self.features(x0), bad

        return jax.jit(block)

    def score(self, kind: str, sampler: str, params, grid, w: float) -> dict:
        """{"fd", "kid", "kid_std", "wall_s"} of num_samples samples, and the first 100 samples."""
        import jax.numpy as jnp
        import numpy as np

        from pipeline import metrics

        fn = self._block(kind, sampler, len(grid) - 1)
        t0, feats, first, bad = time.time(), [], None, 0
        for start in range(0, self.n, self.batch):
            idx = jnp.arange(start, start + self.batch, dtype=jnp.int32)
            x0, f, b = fn(params, jnp.asarray(grid, jnp.float32), jnp.float32(w), idx)
            feats.append(np.asarray(f, np.float64))
            bad = bad or int(b)
            first = np.asarray(x0[:100]) if first is None else first
        feats = np.concatenate(feats)[: self.n]
        if bad or not np.all(np.isfinite(feats)):
            return {"fd": None, "kid": None, "kid_std": None, "wall_s": time.time() - t0, "diverged_at_step": bad}, first
        kid, kid_std = metrics.kid_with_std(feats, self.reference)
        return {"fd": metrics.frechet_distance(feats, self.reference), "kid": kid, "kid_std": kid_std,
                "wall_s": time.time() - t0}, first


def distill(teacher_dir: str, args) -> tuple[object, list[dict]]:
    """Run (or reuse) the rounds down to min(--student-steps); wall time per round."""
    from pipeline import rundir
    from pipeline.distill import config as dconfig
    from pipeline.distill import rounds
    from pipeline.distill.run import run_round

    cfg = dconfig.load({
        "teacher": teacher_dir, "dir": os.path.join(HERE, "rounds"), "start_steps": args.start_steps,
        "stage1": {"train_steps": args.stage1_steps, "lr": args.stage1_lr, "batch": args.batch},
        "rounds": {"train_steps": args.round_steps, "lr": args.round_lr, "batch": args.batch},
        "checkpoint_every": 1000, "log_every": 50,
    })
    root = rounds.root_dir(cfg)
    out = []
    for r in rounds.rounds_until(cfg, min(args.student_steps)):
        t0 = time.time()
        reused = rounds.is_finished(root, r)
        res = run_round(cfg, r, workers=0, log=lambda m: print(m, file=sys.stderr))
        out.append({"round": r, "steps": cfg.steps_of(r), "train_steps": res["train_steps"],
                    "train_time_s": res["train_time_s"], "round_wall_s": None if reused else time.time() - t0,
                    "final_loss": res["final_loss"], "reused": reused})
    return cfg, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", help="a trained digits teacher run (default: the shared bench teacher, bench/out/teacher)")
    p.add_argument("--teacher-steps", type=int, default=256)
    p.add_argument("--start-steps", type=int, default=256)
    p.add_argument("--stage1-steps", type=int, default=300)
    p.add_argument("--round-steps", type=int, default=150)
    p.add_argument("--stage1-lr", type=float, default=2e-4)
    p.add_argument("--round-lr", type=float, default=2e-4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--ws", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 4.0])
    p.add_argument("--student-steps", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--num-samples", type=int, default=2000)
    p.add_argument("--eval-batch", type=int, default=500)
    args = p.parse_args(argv)

    import numpy as np

    from pipeline import rundir
    from pipeline.distill import losses
    from pipeline.distill.student import load_student_params
    from pipeline.distill import rounds
    from pipeline.io import atomic_write_text
    from pipeline.report import save_grid
    from pipeline.teacher.model import load_teacher

    t_all = time.time()
    os.makedirs(HERE, exist_ok=True)
    teacher_dir = os.path.abspath(args.teacher) if args.teacher else common.default_teacher()
    cfg, round_rows = distill(teacher_dir, args)
    teacher = load_teacher(teacher_dir)
    sched = teacher.schedule
    start = losses.t_start(sched, cfg.logsnr_start)
    scorer = Scorer(teacher, os.path.join(ROOT, ".cache"), args.num_samples, args.eval_batch)
    root = rounds.root_dir(cfg)

    # The teacher: cached per (teacher checkpoint, grid, samples, w).
    ref_path = os.path.join(HERE, "teacher-ref.json")
    cache = json.load(open(ref_path)) if os.path.exists(ref_path) else {}
    tgrid = losses.student_grid(sched, args.teacher_steps, cfg.stride, start)
    rows = []
    for w in args.ws:
        key = f"{teacher_dir}|step{teacher.step}|ddim|{args.teacher_steps}|{cfg.stride}|{start:.6f}|n{args.num_samples}|w{w}"
        if key not in cache:
            m, x = scorer.score("teacher", "ddim", teacher.params, tgrid, w)
            cache[key] = m
            atomic_write_text(ref_path, json.dumps(cache, indent=1, sort_keys=True))
            save_grid(x, os.path.join(HERE, f"grid-teacher-{args.teacher_steps}-w{w:g}.png"), ncol=10,
                      title=f"teacher ddim {args.teacher_steps} steps (NFE {2 * args.teacher_steps}), w={w:g}")
        rows.append({"method": "teacher-ddim", "steps": args.teacher_steps, "nfe": 2 * args.teacher_steps, "w": w, **cache[key]})
        print(f"teacher w={w:g}: FD {cache[key]['fd']}", file=sys.stderr)

    for K in sorted(args.student_steps):
        r = cfg.start_steps.bit_length() - K.bit_length()
        params = load_student_params(root, r, teacher.params)
        grid = losses.student_grid(sched, K, cfg.stride, start)
        for sampler in ("student-ddim", "student-stochastic"):
            for w in args.ws:
                m, x = scorer.score("student", sampler, params, grid, w)
                rows.append({"method": sampler, "steps": K, "nfe": K, "w": w, "round": r, **m})
                if w == 1.0 or len(args.ws) == 1:
                    save_grid(x, os.path.join(HERE, f"grid-{sampler}-{K}-w{w:g}.png"), ncol=10,
                              title=f"{sampler} {K} steps, w={w:g}")
                print(f"{sampler} K={K} w={w:g}: FD {m['fd']}", file=sys.stderr)

    teacher_fd = {r_["w"]: r_["fd"] for r_ in rows if r_["method"] == "teacher-ddim"}
    for r_ in rows:
        if r_["method"] != "teacher-ddim" and r_["fd"] is not None and teacher_fd.get(r_["w"]):
            r_["fd_ratio_to_teacher"] = r_["fd"] / teacher_fd[r_["w"]]
    four = [r_ for r_ in rows if r_["method"] == "student-ddim" and r_["steps"] == 4]
    met = {f"{r_['w']:g}": (r_.get("fd_ratio_to_teacher") is not None and r_["fd_ratio_to_teacher"] <= GOAL) for r_ in four}
    result = {
        "bench": "distill", "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_implementation()} {platform.python_version()}",
        "load_avg_1min_at_end": os.getloadavg()[0],
        "command": "python bench/distill.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "teacher": teacher_dir, "teacher_model": rundir.read_config(teacher_dir).get("model"),
        "teacher_train_steps": teacher.step, "features": "digit-classifier (penultimate layer), test split",
        "num_samples": args.num_samples, "t_start": start, "logsnr_start": cfg.logsnr_start, "stride": cfg.stride,
        "distill": {"start_steps": cfg.start_steps, "stage1": {"train_steps": args.stage1_steps, "lr": args.stage1_lr},
                    "rounds": {"train_steps": args.round_steps, "lr": args.round_lr}, "batch": args.batch},
        "rounds": round_rows, "rows": rows,
        "goal": f"4-step student-ddim FD <= {GOAL} x teacher FD at the same w", "goal_met_by_w": met,
        "wall_s": time.time() - t_all,
    }
    atomic_write_text(os.path.join(OUT, "distill.json"), json.dumps(result, indent=2, sort_keys=True) + "\n")
    _plot(rows, os.path.join(OUT, "distill.png"))
    table = _table(result)
    atomic_write_text(os.path.join(OUT, "distill.md"), table)
    print(table)
    return 0


def _fmt(v, spec=".3g"):
    return "diverged" if v is None else format(v, spec)


def _table(res: dict) -> str:
    ws = sorted({r["w"] for r in res["rows"]})
    lines = ["| method | steps | NFE | " + " | ".join(f"FD w={w:g}" for w in ws) + " |",
             "|---|---|---|" + "---|" * len(ws)]
    keys = sorted({(r["method"], r["steps"], r["nfe"]) for r in res["rows"]}, key=lambda k: (k[0] != "teacher-ddim", k[0], k[1]))
    by = {(r["method"], r["steps"], r["w"]): r for r in res["rows"]}
    for method, steps, nfe in keys:
        cells = []
        for w in ws:
            r = by.get((method, steps, w))
            if r is None:
                cells.append("-")
                continue
            ratio = r.get("fd_ratio_to_teacher")
            cells.append(_fmt(r["fd"]) + (f" ({ratio:.2f}x)" if ratio is not None else ""))
        lines.append(f"| {method} | {steps} | {nfe} | " + " | ".join(cells) + " |")
    lines += ["", "| round | student steps | train steps | wall s |", "|---|---|---|---|"]
    for r in res["rounds"]:
        wall = r["round_wall_s"] if r["round_wall_s"] is not None else r["train_time_s"]
        lines.append(f"| {r['round']} | {r['steps']} | {r['train_steps']} | {wall:.0f}{' (reused)' if r['reused'] else ''} |")
    return "\n".join(lines) + "\n"


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.io import atomic_savefig

    ws = sorted({r["w"] for r in rows})
    fig, axes = plt.subplots(1, len(ws), figsize=(3.2 * len(ws), 3.2), sharey=True, squeeze=False)
    for ax, w in zip(axes[0], ws):
        for method, style in (("student-ddim", "o-"), ("student-stochastic", "s--")):
            pts = sorted((r["steps"], r["fd"]) for r in rows if r["method"] == method and r["w"] == w and r["fd"] is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, ms=4, label=method)
        for r in rows:
            if r["method"] == "teacher-ddim" and r["w"] == w and r["fd"] is not None:
                ax.axhline(r["fd"], color="k", lw=1, label=f"teacher {r['steps']} steps")
                ax.axhline(GOAL * r["fd"], color="k", lw=0.8, ls=":", label=f"{GOAL}x teacher")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"w = {w:g}")
        ax.set_xlabel("sampling steps (NFE)")
    axes[0][0].set_ylabel("FD (digit-classifier features)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
