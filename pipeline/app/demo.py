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
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax

from pipeline import config, ddss, report, rundir
from pipeline.app.demo_budget import ACCELERATED, FULL, QUICK, Budget
from pipeline.app.demo_rows import GRID_SAMPLES, Rows, Todo
from pipeline.app.evaluate_job import EvaluateConfig, run_evaluations
from pipeline.distill import config as dconfig
from pipeline.distill import rounds
from pipeline.distill.run import run_until
from pipeline.distributed.pool import EvalPool
from pipeline.distributed.ray_init import ensure_ray
from pipeline.errors import UserError
from pipeline.evaluation import protocol
from pipeline.models.classifier import load_or_train_feature_net
from pipeline.samplers import linear
from pipeline.samplers.registry import SamplerDiverged
from pipeline.teacher import config as tconfig
from pipeline.teacher.train import reuse_or_train


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
    tuned: dict = dataclasses.field(default_factory=dict)  # (sampler, K) -> protocol.Tuned
    tuning: Any = None  # the Future of `tune`

    def run(self, items, label: str, samples: int, keep: int = 0) -> list:
        """Evaluate (sampler, K, Setting, seed) items together on the pool: their rows, or their
        SamplerDiverged (the caller reports it)."""
        cfgs = [config.load(EvaluateConfig, {
            "teacher": self.teacher, "sampler": sampler, "steps": k, "num_samples": samples, "seed": seed,
            "workers": self.workers, "stride": s.stride, "t_max": s.t_max, "clip_x0": s.clip_x0,
            "cache_dir": self.cache_dir, "results_dir": self.run_dir,
            "batch_size": min(self.budget.batch_size, samples)}) for sampler, k, s, seed in items]
        rows = run_evaluations(cfgs, address=self.address, progress=False, pool=self.pool, keep_samples=keep,
                               return_errors=True, heartbeat=f"{label} in the background")  # a line every 10 s
        for row in rows:
            if isinstance(row, BaseException) and not isinstance(row, SamplerDiverged):
                raise row
        return rows

    def evaluate(self, todo: list[Todo], label: str = "rows", seeds: list | None = None) -> float:
        """Evaluate rows on the pool, each on every test seed (or `seeds`: a DDSS row's several
        artefacts, one list of sampler names per todo), and record them as mean ± std."""
        t1 = time.time()
        tests = self.budget.test_seeds
        samplers = seeds or [[t.sampler] for t in todo]
        items = [(name, t.steps, t.setting, seed) for t, names in zip(todo, samplers) for name in names for seed in tests]
        rows = iter(self.run(items, label, self.budget.num_samples, keep=GRID_SAMPLES))
        print(f"  evaluated {label} in the background: {len(todo)} rows in {time.time() - t1:.0f} s", flush=True)
        for t, names in zip(todo, samplers):
            got = [next(rows) for _ in names for _ in tests]
            bad = [r for r in got if isinstance(r, BaseException)]
            if bad:  # reported, not hidden: the row is left out
                self.out.note(f"{t.method} at K = {t.steps}: {bad[0]}")
            else:
                self.out.add(t, got)
        return time.time() - t1

    def submit(self, stage: str, todo, *args):
        print(f"  evaluating {len(todo)} rows on the pool in the background ({stage})")
        self.pending.append((stage, self.background.submit(self.evaluate, todo, stage, *args)))

    def tune(self) -> float:
        """Choose each training-free sampler's setting at each K on the validation seeds (all of
        a coordinate stage at once on the pool)."""
        b, t1 = self.budget, time.time()

        def score_batch(todo):
            rows = self.run([(sampler, k, s, seed) for (sampler, k), s, seed in todo], "tuning", b.val_samples)
            return [float("inf") if isinstance(r, BaseException) else r["fd"] for r in rows]

        self.tuned = protocol.tune_all(score_batch, {(s, k): protocol.Setting() for s in b.samplers for k in b.ks},
                                       b.strides, b.val_seeds, b.t_maxes, b.clips)
        print(f"  tuned {len(self.tuned)} sampler settings on validation seeds {list(b.val_seeds)} "
              f"in {time.time() - t1:.0f} s", flush=True)
        return time.time() - t1

    def evaluate_tuned(self) -> float:
        """The training-free samplers at their tuned settings, on the test seeds."""
        b = self.budget
        return self.evaluate([Todo(s, s, k, "accelerated" if s in ACCELERATED else "baseline", self.tuned[s, k].setting,
                                   label=self.tuned[s, k].setting.label) for s in b.samplers for k in b.ks], "samplers")

    def best_setting(self, k: int) -> tuple[str, protocol.Setting]:
        """The deterministic training-free sampler at K (one a search can start from: samplers.linear.STARTS)
        with the lowest validation FD, and its setting."""
        (sampler, _), tuned = min(((key, t) for key, t in self.tuned.items() if key[1] == k and key[0] in linear.STARTS),
                                  key=lambda kv: kv[1].score.mean)
        return sampler, tuned.setting


def samplers_stage(st: Stages):
    """[2/5]: every training-free sampler tuned on validation seeds, then evaluated on the test
    seeds (in the background)."""
    b = st.budget
    print(f"[2/5] training-free samplers at K = {list(b.ks)}: settings chosen on validation seeds "
          f"{list(b.val_seeds)}, rows on test seeds {list(b.test_seeds)}")
    st.tuning = st.background.submit(st.tune)  # the single background thread runs its tasks in order
    st.pending.append(("tuning", st.tuning))
    print(f"  evaluating {len(b.samplers) * len(b.ks)} rows on the pool in the background (samplers)")
    st.pending.append(("samplers", st.background.submit(st.evaluate_tuned)))


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
    todo = [Todo("student-ddim (distilled)", f"student-ddim:{rounds.round_dir(root, r)}", n, "distilled",
                 train_s=distill_s if n == steps[-1] else None) for r, n in enumerate(steps[: len(records)])]
    if len(records) == len(steps):
        todo.append(Todo("student-stochastic (distilled)", f"student-stochastic:{root}", steps[-1], "distilled",
                         train_s=distill_s))
    if todo:
        st.submit("students", todo)
    return dcfg


def search_stage(st: Stages):
    """[4/5]: DDSS searches (GGDM+PRED+TIME) per K of budget.search_ks, one per search seed, each
    started from the best tuned training-free sampler at that K (chosen on validation seeds), exactly:
    its GGDM parameters on its grid, t_max and clipping (samplers.linear), and selected by FD on held-out
    data; a K's row covers all its searches."""
    t0 = time.time()
    b = st.budget
    print(f"[4/5] DDSS search (GGDM+PRED+TIME) at K = {list(b.search_ks)}, search seeds {list(b.search_seeds)}")
    st.pool.wait_prepared()  # the search's loss needs the feature net
    st.tuning.result()  # the start grids come from the tuning
    for k in b.search_ks:
        t1 = time.time()
        sampler, start = st.best_setting(k)
        artefacts = []
        for seed in b.search_seeds:
            cfg = ddss.load_config(None, {
                "teacher": st.teacher, "steps": k, "init": sampler, "stride": start.stride, "t_max": start.t_max,
                "clip_x0": start.clip_x0, "seed": seed,
                "train_steps": b.search_steps, "batch_size": b.search_batch,
                "eval_every": max(1, b.search_steps // 4), "eval_samples": b.search_eval_samples,
                # K <= 10 on CPU: the unrolled adjoint is the fastest reverse pass, its memory small
                "remat": "adjoint-unrolled", "cache_dir": st.cache_dir, "workers": 0,
                "checkpoint_every": b.search_steps})
            try:
                result = ddss.search(cfg, run_dir=os.path.join(st.run_dir, f"ddss-K{k}-seed{seed}"), workers=0)
            except ddss.SearchDiverged as e:  # reported, not hidden: the row is left out
                st.out.note(f"DDSS search at K = {k} (seed {seed}) stopped: {e}")
                continue
            artefacts.append(f"ggdm:{result['artefact']}")
        if artefacts:
            st.submit(f"DDSS K={k}", [Todo("ggdm+pred+time (DDSS)", artefacts[0], k, "ddss", train_s=time.time() - t1,
                                           label=f"from {sampler} {start.label}, {len(artefacts)} searches")],
                      [artefacts])
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
    b = st.budget
    intro = (f"Digits testbed ({'quick' if quick else 'full'} budgets), teacher {st.teacher}, "
             f"{b.num_samples} samples per evaluation against the digits test split, {st.workers} evaluation "
             f"actors (one pool for every row, rows evaluated together). Every row is the mean ± std over test seeds "
             f"{list(b.test_seeds)}; each training-free sampler runs at the setting (grid of {', '.join(b.strides)}; "
             f"first time of {', '.join(f'{t:g}' for t in b.t_maxes)}; x0 clipping) with the lowest FD on validation "
             f"seeds {list(b.val_seeds)} ({b.val_samples} samples each); a DDSS row covers its searches (seeds "
             f"{list(b.search_seeds)}), each started exactly from the best tuned deterministic sampler at its K (its grid, first time and "
             "clipping) and selected by FD on held-out "
             "training data. Wall time is the evaluation's (sampling "
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
