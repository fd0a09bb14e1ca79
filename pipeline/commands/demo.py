"""`ddss demo`: the whole pipeline on the digits testbed, on a local Ray, with a report."""
from __future__ import annotations

import dataclasses
import os
import time

NAME = "demo"
HELP = ("Run the pipeline on the digits testbed: train (or reuse) the teacher and feature net, "
        "evaluate the baselines and the accelerated samplers, run a DDSS search, evaluate everything "
        "with the evaluation actors, and write report.md with a table, a frontier plot and sample grids.")
EXAMPLE = "ddss demo --quick --run-dir runs/demo-quick"


@dataclasses.dataclass(frozen=True)
class Budget:
    teacher_steps: int
    ks: tuple
    num_samples: int
    search_ks: tuple
    search_steps: int
    search_batch: int


FULL = Budget(teacher_steps=1500, ks=(5, 10), num_samples=1000, search_ks=(5, 10), search_steps=60, search_batch=64)
QUICK = Budget(teacher_steps=60, ks=(5,), num_samples=100, search_ks=(5,), search_steps=4, search_batch=16)

# (method label, sampler name, stride)
BASELINES = [
    ("ddpm", "ddpm", "quadratic"),
    ("ddim (linear)", "ddim", "linear"),
    ("ddim (quadratic)", "ddim", "quadratic"),
    ("dpm-solver++2m", "dpm-solver++2m", "logsnr"),
    ("ipndm", "ipndm", "quadratic"),
    ("accel-ddim", "accel-ddim", "quadratic"),
    ("accel-ddpm", "accel-ddpm", "logsnr"),
]


def add_arguments(p):
    p.add_argument("--quick", action="store_true", help="tiny budgets, same stages (about 3 minutes)")
    p.add_argument("--run-dir", metavar="D", help="the demo's run directory (default runs/demo-<time>-<id>)")
    p.add_argument("--cache-dir", default=".cache", help="teacher and feature net are reused from here")
    p.add_argument("--workers", type=int, default=2, metavar="W", help="evaluation actors")
    p.add_argument("--address", help="a Ray cluster to join (default: a local Ray on 127.0.0.1)")


def _teacher(cache_dir: str, steps: int) -> str:
    """The cached digits teacher trained for `steps` steps (trained here the first time)."""
    from pipeline import rundir, train

    path = os.path.abspath(os.path.join(cache_dir, f"teacher-digits-{steps}"))
    if os.path.isfile(os.path.join(path, rundir.RESULTS)):
        return path
    if os.path.exists(path):  # an interrupted training: continue it
        train.train_teacher(train.load_config(), run_dir=path, resume=True)
        return path
    cfg = train.load_config("configs/digits_teacher.yaml" if os.path.isfile("configs/digits_teacher.yaml") else None,
                            {"train.steps": steps, "train.checkpoint_every": max(1, steps // 3),
                             "sample.steps": 64, "sample.fd_samples": 0, "sample.cache_dir": cache_dir})
    train.train_teacher(cfg, run_dir=path)
    return path


def _grid(teacher_dir: str, sampler: str, steps: int, stride: str, path: str, params=None):
    import jax
    import numpy as np

    from pipeline import report, samplers, train

    t = train.load_teacher(teacher_dir)
    y = np.arange(30) % t.num_classes
    key = jax.random.key(123)
    x_T = jax.random.normal(key, (len(y),) + t.data_shape)
    kw = {} if params is None else {"params": params}
    x = samplers.sample(sampler, t.eps_fn(jax.numpy.asarray(y)), t.schedule, x_T, steps, key=jax.random.fold_in(key, 1),
                        stride=stride, **kw)
    report.save_grid(np.asarray(x), path, ncol=10)


def run(args) -> int:
    from pipeline import config, ddss, report, rundir
    from pipeline.distributed.evaluation import run_evaluation
    from pipeline.distributed.ray_init import ensure_ray
    from pipeline.evaluate import EvaluateConfig

    budget = QUICK if args.quick else FULL
    t_start = time.time()
    run_dir = rundir.prepare(args.run_dir, prefix="demo")
    rundir.write_config(run_dir, {"quick": args.quick, "budget": dataclasses.asdict(budget), "workers": args.workers})
    ensure_ray(args.address)
    print(f"[1/4] teacher ({budget.teacher_steps} steps) and feature net, cached in {args.cache_dir}")
    teacher = _teacher(args.cache_dir, budget.teacher_steps)

    rows, grids, notes = [], {}, []

    def evaluate(label, sampler, k, stride):
        cfg = config.load(EvaluateConfig, {
            "teacher": teacher, "sampler": sampler, "steps": k, "num_samples": budget.num_samples,
            "workers": args.workers, "stride": stride, "cache_dir": args.cache_dir, "results_dir": run_dir,
            "batch_size": min(100, budget.num_samples)})
        row = run_evaluation(cfg, address=args.address, progress=True)
        rows.append({"method": label, "steps": k, "nfe": row["nfe"], "fd": row["fd"], "kid": row["kid"],
                     "wall_s": row["wall_s"]})
        rundir.append_metrics(run_dir, {"stage": "evaluate", **rows[-1]})

    print(f"[2/4] baselines and accelerated samplers at K = {list(budget.ks)}")
    for label, sampler, stride in BASELINES:
        for k in budget.ks:
            evaluate(label, sampler, k, stride)
        rel = f"grids/{sampler}-{stride}-K{budget.ks[0]}.png"
        _grid(teacher, sampler, budget.ks[0], stride, os.path.join(run_dir, rel))
        grids[f"{label}, K = {budget.ks[0]}"] = rel

    print(f"[3/4] DDSS search (GGDM+PRED+TIME) at K = {list(budget.search_ks)}")
    for k in budget.search_ks:
        t0 = time.time()
        cfg = ddss.load_config(None, {
            "teacher": teacher, "steps": k, "train_steps": budget.search_steps, "batch_size": budget.search_batch,
            "eval_every": budget.search_steps, "eval_samples": min(256, budget.num_samples),
            "cache_dir": args.cache_dir, "workers": 0, "checkpoint_every": budget.search_steps})
        try:
            result = ddss.search(cfg, run_dir=os.path.join(run_dir, f"ddss-K{k}"), workers=0)
        except ddss.SearchDiverged as e:  # reported, not hidden: the row is left out
            notes.append(f"DDSS search at K = {k} stopped: {e}")
            print(f"  {notes[-1]}")
            continue
        search_s = time.time() - t0
        evaluate("ggdm+pred+time (DDSS)", f"ggdm:{result['artefact']}", k, "quadratic")
        rows[-1]["wall_s"] = rows[-1]["wall_s"] + search_s
        if k == budget.search_ks[0]:
            rel = f"grids/ggdm-K{k}.png"
            _grid(teacher, "ggdm", k, "quadratic", os.path.join(run_dir, rel), params=ddss.load_ggdm(result["artefact"]))
            grids[f"ggdm+pred+time (DDSS), K = {k}"] = rel

    print("[4/4] report")
    intro = (f"Digits testbed, teacher {teacher} ({budget.teacher_steps} training steps), {budget.num_samples} "
             f"samples per row against the digits test split, {args.workers} evaluation actors. "
             "Wall time of DDSS rows includes the search. Guided distillation is not in this demo yet.")
    path = report.write_report(run_dir, rows, grids, intro, notes)
    rundir.update_results(run_dir, {"demo": rows, "total_s": time.time() - t_start})
    print(report.results_table(rows))
    print(f"\nreport: {path}  ({time.time() - t_start:.0f} s)")
    return 0
