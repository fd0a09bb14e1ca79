"""The demo's orchestration: the whole pipeline on the digits testbed, on a local Ray, with a report.

Stages: the teacher and the feature net (trained once, then reused from the cache directory);
the baselines and the accelerated samplers; a DDSS search per K; guided distillation (stage 1
and progressive rounds down to 4 steps). Every row is evaluated on ONE pool of evaluation
actors, started at the beginning and kept to the end; evaluations run on the pool from a second
driver thread, in the order submitted, while this thread goes on with the distillation and the
DDSS search (both mostly compile on one core). A stage that fails on its own terms (a search
that diverges, a sampler that produces non-finite values) is reported in the report's notes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import jax

from pipeline import config, ddss, report, rundir
from pipeline.app.evaluate_job import EvaluateConfig, run_evaluations
from pipeline.distill import config as dconfig
from pipeline.distill import rounds
from pipeline.distill.run import run_until
from pipeline.distributed.pool import EvalPool
from pipeline.distributed.ray_init import ensure_ray
from pipeline.errors import UserError
from pipeline.models.classifier import load_or_train_feature_net
from pipeline.samplers.registry import SamplerDiverged
from pipeline.teacher import config as tconfig
from pipeline.teacher.train import reuse_or_train

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


def teacher_config(budget: Budget, cache_dir: str):
    """The demo's teacher config: configs/digits_teacher.yaml (the package's copy when the cwd has
    none) with the budget's overrides and a short end-of-training check (no FD: the demo measures it)."""
    base = "configs/digits_teacher.yaml"
    steps = budget.teacher.get("train.steps", 700)
    return tconfig.load_config(base, {**budget.teacher, "train.checkpoint_every": max(1, steps // 2),
                                      "sample.steps": 32, "sample.fd_samples": 0, "sample.cache_dir": cache_dir})


def cached_teacher(cfg, cache_dir: str) -> str:
    """The run directory of a teacher trained with cfg under cache_dir, named by the config's hash
    (teacher-digits-<hash>): reused if finished, continued if interrupted, trained here otherwise."""
    digest = hashlib.sha256(json.dumps(config.to_dict(cfg), sort_keys=True).encode()).hexdigest()[:10]
    return reuse_or_train(cfg, os.path.join(cache_dir, f"teacher-digits-{digest}"), log=_log_teacher)


def _log_teacher(state: str, path: str):
    if state == "reuse":
        print(f"  reusing {path}")
    elif state == "resume":
        print(f"  continuing the interrupted training in {path}")


class Rows:
    """The demo's result rows, their sample grids and notes, recorded as they come in."""

    def __init__(self, run_dir: str):
        self.run_dir, self.rows, self.grids, self.notes = run_dir, [], {}, []

    def note(self, text: str):
        self.notes.append(text)
        print(f"  note: {text}")

    def add(self, method: str, row: dict, stage: str, extra_s: float | None = None):
        r = {"stage": stage, "method": method, "sampler": row["sampler"], "steps": row["steps"], "nfe": row["nfe"],
             "fd": row["fd"], "kid": row["kid"], "kid_std": row["kid_std"], "wall_s": row["wall_s"], "train_s": extra_s}
        self.rows.append(r)
        rundir.append_metrics(self.run_dir, {"event": "row", **r})
        if row.get("samples") is not None:
            slug = re.sub(r"[^a-z0-9]+", "-", method.lower()).strip("-")
            rel = f"grids/{slug}-K{row['steps']}.png"
            report.save_grid(row["samples"], os.path.join(self.run_dir, rel), ncol=10)
            self.grids[f"{method}, {row['steps']} steps"] = rel
        print(f"  {method:28s} K={r['steps']:<3d} NFE={r['nfe']:<3d} FD={r['fd']:9.3f} KID={r['kid']:.4f} "
              f"({r['wall_s']:.1f} s)")


@dataclasses.dataclass
class Stages:
    """What the stages share: the budget and directories, the evaluation pool, the thread that
    evaluates on it, the evaluations pending there, the rows and the time of each stage."""

    budget: Budget
    run_dir: str
    cache_dir: str
    workers: int
    address: str | None
    pool: EvalPool
    background: ThreadPoolExecutor
    out: Rows
    teacher: str = ""
    pending: list = dataclasses.field(default_factory=list)
    stage_s: dict = dataclasses.field(default_factory=dict)

    def evaluate(self, todo, label: str = "rows") -> float:
        """Evaluate rows (method, sampler, K, stride, stage, training s) together on the pool."""
        b = self.budget
        cfgs = [config.load(EvaluateConfig, {
            "teacher": self.teacher, "sampler": sampler, "steps": k, "num_samples": b.num_samples,
            "workers": self.workers, "stride": stride, "cache_dir": self.cache_dir, "results_dir": self.run_dir,
            "batch_size": min(b.batch_size, b.num_samples)}) for _, sampler, k, stride, _, _ in todo]
        t1 = time.time()
        rows = run_evaluations(cfgs, address=self.address, progress=False, pool=self.pool, keep_samples=GRID_SAMPLES,
                               return_errors=True, heartbeat=f"{label} in the background")  # a line every 10 s
        print(f"  evaluated {label} in the background: {len(todo)} rows in {time.time() - t1:.0f} s", flush=True)
        for (method, _, k, _, stage, extra_s), row in zip(todo, rows):
            if isinstance(row, SamplerDiverged):  # reported, not hidden: the row is left out
                self.out.note(f"{method} at K = {k}: {row}")
            elif isinstance(row, BaseException):
                raise row
            else:
                self.out.add(method, row, stage, extra_s)
        return time.time() - t1

    def submit(self, stage: str, todo):
        print(f"  evaluating {len(todo)} rows on the pool in the background ({stage})")
        self.pending.append((stage, self.background.submit(self.evaluate, todo, stage)))


def samplers_stage(st: Stages):
    """[2/5]: the baselines and the accelerated samplers, submitted for evaluation."""
    print(f"[2/5] baselines and accelerated samplers at K = {list(st.budget.ks)}")
    st.submit("samplers", [(method, sampler, k, stride, stage, None)
                           for stage, methods in (("baseline", BASELINES), ("accelerated", ACCELERATED))
                           for method, sampler, stride in methods for k in st.budget.ks])


def distill_stage(st: Stages):
    """[3/5]: guided distillation down to budget.distill_until steps (it needs no feature net,
    so it runs while the feature net may still be training); its students submitted. Returns
    the distillation config."""
    t0 = time.time()
    dcfg = dconfig.load({"teacher": st.teacher, "dir": os.path.join(st.run_dir, "distill"), **st.budget.distill,
                         "checkpoint_every": 10 ** 6, "log_every": 10})
    until = st.budget.distill_until
    steps = [dcfg.steps_of(r) for r in range(dcfg.num_rounds) if dcfg.steps_of(r) >= until]
    print(f"[3/5] guided distillation: stage 1 at {steps[0]} steps, then rounds down to {steps[-1]} steps")
    try:
        records = run_until(dcfg, until, workers=0, log=lambda m: print(f"  {m}"))
    except UserError as e:  # reported, not hidden: the student rows are left out
        st.out.note(f"guided distillation stopped: {e}")
        records = []
    distill_s = time.time() - t0
    st.stage_s["distillation"] = distill_s
    root = dcfg.dir
    todo = [("student-ddim (distilled)", f"student-ddim:{rounds.round_dir(root, r)}", n, "linear", "distilled",
             distill_s if n == steps[-1] else None) for r, n in enumerate(steps[: len(records)])]
    if len(records) == len(steps):
        todo.append(("student-stochastic (distilled)", f"student-stochastic:{root}", steps[-1], "linear",
                     "distilled", distill_s))
    if todo:
        st.submit("students", todo)
    return dcfg


def search_stage(st: Stages):
    """[4/5]: a DDSS search (GGDM+PRED+TIME) per K of budget.search_ks, each result submitted."""
    t0 = time.time()
    b = st.budget
    print(f"[4/5] DDSS search (GGDM+PRED+TIME) at K = {list(b.search_ks)}")
    st.pool.wait_prepared()  # the search's loss needs the feature net
    for k in b.search_ks:
        t1 = time.time()
        cfg = ddss.load_config(None, {
            "teacher": st.teacher, "steps": k, "train_steps": b.search_steps, "batch_size": b.search_batch,
            "eval_every": max(1, b.search_steps // 4), "eval_samples": b.search_eval_samples,
            # K <= 10 on CPU: the unrolled adjoint is the fastest reverse pass, its memory small
            "remat": "adjoint-unrolled", "cache_dir": st.cache_dir, "workers": 0,
            "checkpoint_every": b.search_steps})
        try:
            result = ddss.search(cfg, run_dir=os.path.join(st.run_dir, f"ddss-K{k}"), workers=0)
        except ddss.SearchDiverged as e:  # reported, not hidden: the row is left out
            st.out.note(f"DDSS search at K = {k} stopped: {e}")
            continue
        st.submit(f"DDSS K={k}", [("ggdm+pred+time (DDSS)", f"ggdm:{result['artefact']}", k, "quadratic", "ddss",
                                   time.time() - t1)])
    st.stage_s["ddss search"] = time.time() - t0


def wait_evaluations(st: Stages):
    """The evaluations pending on the pool, in the order submitted (a failed one raises here)."""
    t0 = time.time()
    for stage, future in st.pending:
        st.stage_s[f"evaluation ({stage})"] = future.result()
    st.stage_s["waiting for evaluations"] = time.time() - t0


def report_stage(st: Stages, dcfg, quick: bool, t_start: float) -> dict:
    """[5/5]: report.md, the demo's entry of results.json (returned) and the printed summary."""
    print("[5/5] report")
    out = st.out
    intro = (f"Digits testbed ({'quick' if quick else 'full'} budgets), teacher {st.teacher}, "
             f"{st.budget.num_samples} samples per row against the digits test split, {st.workers} evaluation "
             "actors (one pool for every row, rows evaluated together). Wall time is the evaluation's (sampling "
             "and features, while other rows shared the actors); 'training' is the DDSS search or the whole "
             "distillation (all rounds) behind a row. Distilled students sample on the grid they were distilled "
             f"on (from logsnr {dcfg.logsnr_start:g}, linear stride), at the teacher's default guidance.")
    if quick:  # a run-through of every stage, not a measurement
        intro += (" Quick budgets: the teacher is tiny and briefly trained, so its samples (and every sampler's) are "
                  "expected to look like noise; the quick demo shows that every stage runs, not sample quality.")
    path = report.write_report(st.run_dir, out.rows, out.grids, intro, out.notes)
    total = time.time() - t_start
    demo = {"rows": out.rows, "notes": out.notes, "stage_s": st.stage_s, "total_s": total, "report": path}
    rundir.update_results(st.run_dir, {"demo": demo})
    print("\n" + report.results_table(out.rows))
    for n in out.notes:
        print(f"note: {n}")
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in st.stage_s.items()) + f"; total {total:.0f} s")
    print(f"report: {path}")
    return demo


def run_demo(run_dir: str | None, *, quick: bool, cache_dir: str, workers: int = 2, address: str | None = None) -> dict:
    """Run every stage into run_dir (new or empty; None: runs/demo-<time>-<id>), the teacher and
    the feature net cached in cache_dir, on one pool of `workers` evaluation actors of a local Ray
    (or the cluster at `address`). Returns the demo's entry of results.json (rows, notes, stage_s,
    total_s, report)."""
    budget = QUICK if quick else FULL
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    t_start = time.time()
    run_dir = rundir.prepare(run_dir, prefix="demo")
    cache_dir = os.path.abspath(cache_dir)
    rundir.write_config(run_dir, {"quick": quick, "budget": dataclasses.asdict(budget), "workers": workers,
                                  "cache_dir": cache_dir})
    ensure_ray(address)

    print(f"[1/5] teacher and feature net (cached in {cache_dir})")
    t0 = time.time()
    compile_cache = os.path.join(cache_dir, "jax-compilation")  # a second demo compiles (almost) nothing
    jax.config.update("jax_compilation_cache_dir", compile_cache)
    # the actors start (and import JAX) while the teacher trains
    pool = EvalPool(workers, env={"JAX_COMPILATION_CACHE_DIR": compile_cache})
    st = Stages(budget, run_dir, cache_dir, workers, address, pool,
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluate"), Rows(run_dir))
    try:
        st.pool.prepare(load_or_train_feature_net, cache_dir, 0, False)  # in an actor, alongside the teacher
        st.teacher = cached_teacher(teacher_config(budget, cache_dir), cache_dir)
        st.stage_s["teacher"] = time.time() - t0
        samplers_stage(st)
        dcfg = distill_stage(st)
        search_stage(st)
        wait_evaluations(st)
    finally:
        st.background.shutdown(wait=True, cancel_futures=True)
        st.pool.close()
    return report_stage(st, dcfg, quick, t_start)
