"""`ddss demo`: the whole pipeline on the digits testbed, on a local Ray, with a report.

Stages: the teacher and the feature net (trained once, then reused from --cache-dir); the
baselines and the accelerated samplers; a DDSS search per K; guided distillation (stage 1 and
progressive rounds down to 4 steps). Every row is evaluated on ONE pool of evaluation actors,
started at the beginning and kept to the end. A stage that fails on its own terms (a search
that diverges, a sampler that produces non-finite values) is reported in the report's notes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time

NAME = "demo"
HELP = ("Run the pipeline on the digits testbed: train (or reuse) the teacher and feature net, "
        "evaluate the baselines and the accelerated samplers, run a DDSS search, distil the guided "
        "teacher down to 4 steps, evaluate everything on one pool of evaluation actors, and write "
        "report.md with a table, a frontier plot and sample grids.")
EXAMPLE = "ddss demo --quick --run-dir runs/demo-quick"

GRID_SAMPLES = 30  # three samples of each digit per grid (sample i has label i % 10)


@dataclasses.dataclass(frozen=True)
class Budget:
    teacher: dict  # overrides of configs/digits_teacher.yaml
    ks: tuple  # K of the baselines and accelerated samplers
    num_samples: int  # per evaluated row
    batch_size: int  # samples per evaluation block
    search_ks: tuple
    search_steps: int
    search_batch: int
    search_eval_samples: int
    distill: dict  # overrides of the distillation config
    distill_until: int = 4


QUICK = Budget(
    teacher={"model.kwargs": {"ch": 8, "ch_mult": [1], "num_res_blocks": 1}, "train.steps": 150,
             "train.batch_size": 64, "train.warmup_steps": 20},
    ks=(5,), num_samples=100, batch_size=100,
    search_ks=(5,), search_steps=4, search_batch=16, search_eval_samples=50,
    distill={"start_steps": 8, "stage1": {"train_steps": 20, "lr": 1e-3, "batch": 16},
             "rounds": {"train_steps": 10, "lr": 1e-3, "batch": 16}},
)
FULL = Budget(
    teacher={"train.steps": 700},
    ks=(5, 10, 20), num_samples=1000, batch_size=250,
    search_ks=(5, 10), search_steps=100, search_batch=64, search_eval_samples=250,
    distill={"start_steps": 16, "stage1": {"train_steps": 1000, "lr": 3e-4, "batch": 64},
             "rounds": {"train_steps": 400, "lr": 2e-4, "batch": 64}},
)

# (method label, sampler name, stride)
BASELINES = [
    ("ddpm", "ddpm", "quadratic"),
    ("ddim (linear)", "ddim", "linear"),
    ("ddim (quadratic)", "ddim", "quadratic"),
    ("dpm-solver++2m", "dpm-solver++2m", "logsnr"),
    ("ipndm", "ipndm", "quadratic"),
]
ACCELERATED = [
    ("accel-ddim", "accel-ddim", "quadratic"),
    ("accel-ddpm", "accel-ddpm", "logsnr"),
]


def add_arguments(p):
    p.add_argument("--quick", action="store_true", help="tiny budgets, same stages (about 3 minutes)")
    p.add_argument("--run-dir", metavar="D", help="the demo's run directory, new or empty (default runs/demo-<time>-<id>)")
    p.add_argument("--cache-dir", default=".cache", help="teacher and feature net are reused from here")
    p.add_argument("--workers", type=int, default=2, metavar="W", help="evaluation actors")
    p.add_argument("--address", help="a Ray cluster to join (default: a local Ray on 127.0.0.1)")


def teacher_config(budget: Budget, cache_dir: str):
    """The demo's teacher config: configs/digits_teacher.yaml (or the defaults) with the budget's
    overrides and a short end-of-training check (no FD: the demo measures it)."""
    from pipeline import train

    base = "configs/digits_teacher.yaml" if os.path.isfile("configs/digits_teacher.yaml") else None
    steps = budget.teacher.get("train.steps", 700)
    return train.load_config(base, {**budget.teacher, "train.checkpoint_every": max(1, steps // 2),
                                    "sample.steps": 32, "sample.fd_samples": 0, "sample.cache_dir": cache_dir})


def cached_teacher(cfg, cache_dir: str, log=print) -> str:
    """The run directory of a teacher trained with cfg under cache_dir (named by the config's
    hash): reused if finished, continued if interrupted, trained here otherwise."""
    from pipeline import config, rundir, train

    digest = hashlib.sha256(json.dumps(config.to_dict(cfg), sort_keys=True).encode()).hexdigest()[:10]
    path = os.path.abspath(os.path.join(cache_dir, f"teacher-digits-{digest}"))
    if os.path.isfile(os.path.join(path, rundir.RESULTS)) and "teacher" in rundir.read_results(path):
        log(f"  reusing {path}")
        return path
    if os.path.isfile(os.path.join(path, rundir.CONFIG)):
        log(f"  continuing the interrupted training in {path}")
        train.train_teacher(run_dir=path, resume=True)
    else:
        os.makedirs(cache_dir, exist_ok=True)
        train.train_teacher(cfg, run_dir=path)
    return path


class Rows:
    """The demo's result rows, their sample grids and notes, recorded as they come in."""

    def __init__(self, run_dir: str):
        self.run_dir, self.rows, self.grids, self.notes = run_dir, [], {}, []

    def note(self, text: str):
        self.notes.append(text)
        print(f"  note: {text}")

    def add(self, method: str, row: dict, stage: str, extra_s: float | None = None):
        from pipeline import report, rundir

        r = {"stage": stage, "method": method, "sampler": row["sampler"], "steps": row["steps"], "nfe": row["nfe"],
             "fd": row["fd"], "kid": row["kid"], "wall_s": row["wall_s"], "train_s": extra_s}
        self.rows.append(r)
        rundir.append_metrics(self.run_dir, {"event": "row", **r})
        if row.get("samples") is not None:
            slug = re.sub(r"[^a-z0-9]+", "-", method.lower()).strip("-")
            rel = f"grids/{slug}-K{row['steps']}.png"
            report.save_grid(row["samples"], os.path.join(self.run_dir, rel), ncol=10)
            self.grids[f"{method}, {row['steps']} steps"] = rel
        print(f"  {method:28s} K={r['steps']:<3d} NFE={r['nfe']:<3d} FD={r['fd']:9.3f} KID={r['kid']:.4f} "
              f"({r['wall_s']:.1f} s)")


def run(args) -> int:
    from concurrent.futures import ThreadPoolExecutor

    import jax

    from pipeline import config, ddss, report, rundir
    from pipeline.distill import config as dconfig
    from pipeline.distill import rounds
    from pipeline.distill.run import run_until
    from pipeline.distributed.evaluation import EvalPool, run_evaluations
    from pipeline.distributed.ray_init import ensure_ray
    from pipeline.errors import UserError
    from pipeline.evaluate import EvaluateConfig
    from pipeline.models.classifier import load_or_train_feature_net
    from pipeline.samplers.core import SamplerDiverged

    budget = QUICK if args.quick else FULL
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    t_start = time.time()
    run_dir = rundir.prepare(args.run_dir, prefix="demo")
    cache_dir = os.path.abspath(args.cache_dir)
    rundir.write_config(run_dir, {"quick": args.quick, "budget": dataclasses.asdict(budget), "workers": args.workers,
                                  "cache_dir": cache_dir})
    ensure_ray(args.address)
    out = Rows(run_dir)
    stage_s = {}

    print(f"[1/5] teacher and feature net (cached in {cache_dir})")
    t0 = time.time()
    compile_cache = os.path.join(cache_dir, "jax-compilation")  # a second demo compiles (almost) nothing
    jax.config.update("jax_compilation_cache_dir", compile_cache)
    # the actors start (and import JAX) while the teacher trains
    pool = EvalPool(args.workers, env={"JAX_COMPILATION_CACHE_DIR": compile_cache})
    # Evaluations run on the pool from a second driver thread, in the order submitted, while this
    # thread goes on with the DDSS search and the distillation (both mostly compile on one core).
    background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluate")
    pending = []
    try:
        pool.prepare(load_or_train_feature_net, cache_dir, 0, False)  # in an actor, alongside the teacher
        teacher = cached_teacher(teacher_config(budget, cache_dir), cache_dir)
        stage_s["teacher"] = time.time() - t0

        def evaluate(todo):
            """Evaluate rows (method, sampler, K, stride, stage, training s) together on the pool."""
            cfgs = [config.load(EvaluateConfig, {
                "teacher": teacher, "sampler": sampler, "steps": k, "num_samples": budget.num_samples,
                "workers": args.workers, "stride": stride, "cache_dir": cache_dir, "results_dir": run_dir,
                "batch_size": min(budget.batch_size, budget.num_samples)}) for _, sampler, k, stride, _, _ in todo]
            t1 = time.time()
            rows = run_evaluations(cfgs, address=args.address, progress=False, pool=pool, keep_samples=GRID_SAMPLES,
                                   return_errors=True)
            for (method, _, k, _, stage, extra_s), row in zip(todo, rows):
                if isinstance(row, SamplerDiverged):  # reported, not hidden: the row is left out
                    out.note(f"{method} at K = {k}: {row}")
                elif isinstance(row, BaseException):
                    raise row
                else:
                    out.add(method, row, stage, extra_s)
            return time.time() - t1

        def submit(stage, todo):
            print(f"  evaluating {len(todo)} rows on the pool in the background ({stage})")
            pending.append((stage, background.submit(evaluate, todo)))

        print(f"[2/5] baselines and accelerated samplers at K = {list(budget.ks)}")
        submit("samplers", [(method, sampler, k, stride, stage, None)
                            for stage, methods in (("baseline", BASELINES), ("accelerated", ACCELERATED))
                            for method, sampler, stride in methods for k in budget.ks])

        # Distillation needs no feature net: it runs while the feature net may still be training.
        t0 = time.time()
        dcfg = dconfig.load({"teacher": teacher, "dir": os.path.join(run_dir, "distill"), **budget.distill,
                             "checkpoint_every": 10 ** 6, "log_every": 10})
        steps = [dcfg.steps_of(r) for r in range(dcfg.num_rounds) if dcfg.steps_of(r) >= budget.distill_until]
        print(f"[3/5] guided distillation: stage 1 at {steps[0]} steps, then rounds down to {steps[-1]} steps")
        try:
            records = run_until(dcfg, budget.distill_until, workers=0, log=lambda m: print(f"  {m}"))
        except UserError as e:  # reported, not hidden: the student rows are left out
            out.note(f"guided distillation stopped: {e}")
            records = []
        distill_s = time.time() - t0
        stage_s["distillation"] = distill_s
        root = dcfg.dir
        todo = [("student-ddim (distilled)", f"student-ddim:{rounds.round_dir(root, r)}", n, "linear", "distilled",
                 distill_s if n == steps[-1] else None) for r, n in enumerate(steps[: len(records)])]
        if len(records) == len(steps):
            todo.append(("student-stochastic (distilled)", f"student-stochastic:{root}", steps[-1], "linear",
                         "distilled", distill_s))
        if todo:
            submit("students", todo)

        t0 = time.time()
        print(f"[4/5] DDSS search (GGDM+PRED+TIME) at K = {list(budget.search_ks)}")
        pool.wait_prepared()  # the search's loss needs the feature net
        for k in budget.search_ks:
            t1 = time.time()
            cfg = ddss.load_config(None, {
                "teacher": teacher, "steps": k, "train_steps": budget.search_steps, "batch_size": budget.search_batch,
                "eval_every": max(1, budget.search_steps // 4), "eval_samples": budget.search_eval_samples,
                # K <= 10 on CPU: the unrolled adjoint is the fastest reverse pass, its memory small
                "remat": "adjoint-unrolled", "cache_dir": cache_dir, "workers": 0,
                "checkpoint_every": budget.search_steps})
            try:
                result = ddss.search(cfg, run_dir=os.path.join(run_dir, f"ddss-K{k}"), workers=0)
            except ddss.SearchDiverged as e:  # reported, not hidden: the row is left out
                out.note(f"DDSS search at K = {k} stopped: {e}")
                continue
            submit(f"DDSS K={k}", [("ggdm+pred+time (DDSS)", f"ggdm:{result['artefact']}", k, "quadratic", "ddss",
                                    time.time() - t1)])
        stage_s["ddss search"] = time.time() - t0

        t0 = time.time()
        for stage, future in pending:
            stage_s[f"evaluation ({stage})"] = future.result()
        stage_s["waiting for evaluations"] = time.time() - t0
    finally:
        background.shutdown(wait=True, cancel_futures=True)
        pool.close()

    print("[5/5] report")
    intro = (f"Digits testbed ({'quick' if args.quick else 'full'} budgets), teacher {teacher}, "
             f"{budget.num_samples} samples per row against the digits test split, {args.workers} evaluation "
             "actors (one pool for every row, rows evaluated together). Wall time is the evaluation's (sampling "
             "and features, while other rows shared the actors); 'training' is the DDSS search or the whole "
             "distillation (all rounds) behind a row. Distilled students sample on the grid they were distilled "
             f"on (from logsnr {dcfg.logsnr_start:g}, linear stride), at the teacher's default guidance.")
    path = report.write_report(run_dir, out.rows, out.grids, intro, out.notes)
    total = time.time() - t_start
    rundir.update_results(run_dir, {"demo": {"rows": out.rows, "notes": out.notes, "stage_s": stage_s, "total_s": total,
                                             "report": path}})
    print()
    print(report.results_table(out.rows))
    for n in out.notes:
        print(f"note: {n}")
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in stage_s.items()) + f"; total {total:.0f} s")
    print(f"report: {path}")
    return 0
