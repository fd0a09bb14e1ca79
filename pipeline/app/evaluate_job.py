"""The evaluation job of `ddss evaluate`, jobs/evaluate.py and `ddss demo`: an EvaluateConfig
(flags or YAML) becomes an EvalSpec of the teacher in its feature space, is evaluated on a pool
of Ray actors, and its row is appended to results.json."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import threading
import time

from pipeline import config, rundir
from pipeline.config import MAX_BATCH, MAX_SAMPLES, MAX_SEED, MAX_STEPS
from pipeline.app.artefacts import check_artefact
from pipeline.app.artefacts import eval_spec as artefact_spec
from pipeline.errors import UserError
from pipeline.evaluation.problems import teacher_problem
from pipeline.evaluation.spec import split_sampler

METRICS_BACKENDS = ("jax", "tfgan")
MAX_WORKERS = 4096
HEARTBEAT_S = 10.0  # run_evaluations(heartbeat=...): a line this often


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """An evaluation of a teacher's samples (or an artefact's: sampler NAME:ARTEFACT)."""

    teacher: str = dataclasses.field(default="", metadata=config.PATH)  # the teacher's run directory
    sampler: str = dataclasses.field(default="ddim", metadata=config.ARTEFACT)  # NAME or NAME:ARTEFACT (ggdm:PATH, student-ddim:RUN_DIR)
    steps: int = 10
    num_samples: int = 1000
    workers: int = 2
    seed: int = 0
    stride: str = "quadratic"  # the time grid (schedules.STRIDES)
    t_max: float = 1.0  # the grid's first time, in (0, 1] (schedules.time_grid; an artefact's own times ignore it)
    clip_x0: bool = True  # the model's data prediction clipped to [-1, 1] (false: --no-clip-x0)
    w: float | None = None  # guidance weight (None: the model's default)
    batch_size: int = 100  # samples per block (one jitted call)
    kid_samples: int | None = None  # KID on the first kid_samples samples (None: all)
    metrics_backend: str = "jax"  # "tfgan": KID/FD by tensorflow-gan in its own venv
    inception_path: str | None = dataclasses.field(default=None, metadata=config.PATH)  # a TF-Hub Inception module directory (real data)
    cache_dir: str = dataclasses.field(default=".cache", metadata=config.PATH)  # where feature networks are cached
    results_dir: str | None = dataclasses.field(default=None, metadata=config.PATH)  # results.json goes here (default: the teacher's run)
    worker_cpus: float = 1.0
    worker_gpus: float = 0.0  # e.g. 0.5: two actors per GPU
    worker_tpus: float = 0.0  # e.g. 4: one actor per TPU host
    pin_cores: bool = False  # hold actor j to core j (benchmarks)
    max_failures: int = 3  # lost actors tolerated before giving up
    reference: str = "test"  # test: the data's test split | teacher: the teacher's own converged samples (no floor)
    reference_steps: int = 512  # reference teacher: DDIM steps of its reference samples
    reference_samples: int = 1000  # reference teacher: how many
    seeds: tuple[int, ...] = ()  # the fair protocol (pipeline.app.protocol_job): mean ± std over these test seeds
    tune: bool = False  # choose stride, t_max and clipping on val_seeds first (training-free samplers)
    val_seeds: tuple[int, ...] = (1000, 1001)  # tune: settings are chosen on these, never reported
    val_samples: int | None = None  # tune: samples per validation evaluation (None: num_samples)
    tune_strides: tuple[str, ...] = ()  # tune: the grids tried (empty: every schedules.STRIDES)
    tune_t_max: tuple[float, ...] = (1.0, 0.99, 0.97)  # tune: the first times tried

    def validate(self):
        from pipeline import schedules

        config.check(bool(self.teacher), "teacher", "give the teacher's run directory (--teacher RUN_DIR)")
        name, sep, artefact = self.sampler.partition(":")
        config.check(bool(name) and (not sep or bool(artefact)), "sampler", f"expected NAME or NAME:ARTEFACT, got {self.sampler!r}")
        config.check_range(self.steps, 1, MAX_STEPS, "steps")
        config.check_range(self.num_samples, 2, MAX_SAMPLES, "num_samples", " (KID needs two)")
        config.check(0 <= self.seed <= MAX_SEED, "seed", f"must be in [0, 2**32 - 1], got {self.seed}")
        config.check(self.workers >= 1, "workers", f"must be >= 1, got {self.workers}")
        config.check(self.w is None or math.isfinite(self.w), "w", f"must be a finite guidance weight, got {self.w}")
        config.check_range(self.batch_size, 1, MAX_BATCH, "batch_size")
        config.check(self.kid_samples is None or self.kid_samples >= 2, "kid_samples", "must be >= 2")
        config.check(self.stride in schedules.STRIDES, "stride", f"must be one of {', '.join(schedules.STRIDES)}")
        config.check(math.isfinite(self.t_max) and 0.0 < self.t_max <= 1.0, "t_max", f"must be in (0, 1], got {self.t_max}")
        config.check(self.stride not in schedules.DIFFUSERS_STRIDES or self.steps <= schedules.DIFFUSERS_N, "steps",
                     f"stride {self.stride!r} takes at most {schedules.DIFFUSERS_N} steps, got {self.steps}")
        config.check(self.metrics_backend in METRICS_BACKENDS, "metrics_backend",
                     f"must be one of {', '.join(METRICS_BACKENDS)}, got {self.metrics_backend!r}")
        config.check(self.workers <= MAX_WORKERS, "workers", f"must be <= {MAX_WORKERS}, got {self.workers}")
        for key in ("worker_cpus", "worker_gpus", "worker_tpus"):
            config.check(math.isfinite(getattr(self, key)) and getattr(self, key) >= 0, key,
                         f"must be a finite number >= 0, got {getattr(self, key)}")
        config.check(self.max_failures >= 0, "max_failures", "must be >= 0")
        from pipeline.evaluation.problems import REFERENCES

        config.check(self.reference in REFERENCES, "reference", f"must be one of {', '.join(REFERENCES)}, got {self.reference!r}")
        config.check_range(self.reference_steps, 1, MAX_STEPS, "reference_steps")
        config.check_range(self.reference_samples, 2, MAX_SAMPLES, "reference_samples")
        for key in ("seeds", "val_seeds"):
            config.check(all(0 <= s <= MAX_SEED for s in getattr(self, key)), key, "must be seeds in [0, 2**32 - 1]")
        config.check(self.val_samples is None or 2 <= self.val_samples <= MAX_SAMPLES, "val_samples",
                     f"must be in [2, {MAX_SAMPLES}]")
        config.check(all(s in schedules.STRIDES for s in self.tune_strides), "tune_strides",
                     f"must be among {', '.join(schedules.STRIDES)}, got {list(self.tune_strides)}")
        config.check(all(math.isfinite(t) and 0.0 < t <= 1.0 for t in self.tune_t_max) and bool(self.tune_t_max),
                     "tune_t_max", f"must be first times in (0, 1], got {list(self.tune_t_max)}")

    def result_key(self) -> str:
        """The key of this evaluation in results.json["evaluations"]; t_max and clipping appear
        only when they differ from their defaults (so the keys of earlier results stay the same)."""
        w = "default" if self.w is None else f"{self.w:g}"
        grid = self.stride + ("" if self.t_max == 1.0 else f" t_max={self.t_max!r}") + ("" if self.clip_x0 else " unclipped")
        ref = "" if self.reference == "test" else f" vs teacher-{self.reference_steps}x{self.reference_samples}"
        return f"{self.sampler} K={self.steps} {grid} w={w} n={self.num_samples} seed={self.seed} {self.metrics_backend}{ref}"


def eval_spec(cfg: EvaluateConfig):
    """The EvalSpec of an EvaluateConfig (its teacher in digit-classifier, pixel or Inception features)."""
    problem = teacher_problem(cfg.teacher, cfg.cache_dir, inception=cfg.inception_path is not None,
                              reference=cfg.reference, reference_steps=cfg.reference_steps,
                              reference_samples=cfg.reference_samples)
    return artefact_spec(problem, cfg.sampler, cfg.steps, cfg.num_samples, seed=cfg.seed, stride=cfg.stride,
                         t_max=cfg.t_max, clip_x0=cfg.clip_x0, w=cfg.w, batch_size=cfg.batch_size,
                         kid_samples=cfg.kid_samples)


def check(cfg: EvaluateConfig) -> tuple[str, str]:
    """Every check of `cfg` that needs no computation (no model loaded, no Ray started), each a
    one-line UserError: the teacher's run directory (and its data set), the results directory (writable, its
    results.json readable: it is written at the end), the sampler name and its artefact, the
    Inception module directory. Returns (teacher run directory, results directory)."""
    from pipeline import samplers
    from pipeline.data.loading import require_data
    from pipeline.teacher.config import load_config

    teacher = rundir.require_run_dir(cfg.teacher)
    require_data(load_config(rundir.read_config(teacher)).data, "an evaluation (FD/KID against the test split)")
    results_dir = os.path.abspath(cfg.results_dir or teacher)
    if not os.path.isdir(results_dir):
        raise UserError(f"results directory not found: {cfg.results_dir}")
    rundir.check_writable(results_dir, "results directory" if cfg.results_dir else
                          "teacher run directory (give --results-dir D for the results)")
    rundir.read_results(results_dir)
    samplers.get(split_sampler(cfg.sampler)[0])  # one line naming the valid samplers
    check_artefact(cfg.sampler)  # ggdm without :PATH, a missing or corrupt artefact
    if cfg.inception_path is not None and not os.path.isdir(os.path.expanduser(cfg.inception_path)):
        raise UserError(f"Inception TF-Hub module directory not found: {cfg.inception_path} (download "
                        "tensorflow-gan's Inception module beforehand; nothing is fetched at run time)")
    return teacher, results_dir


def run_evaluations(cfgs, address: str | None = None, progress: bool = True, pool=None,
                    keep_samples: int = 0, return_errors: bool = False, heartbeat: str | None = None) -> list:
    """`ddss evaluate` / jobs/evaluate.py / `ddss demo`: evaluate each cfg (EvaluateConfig), all at once, on `pool` or on a pool started with the first cfg's workers and
    resources, and append each result row to results.json of its cfg.results_dir (default: the
    teacher's run). Returns the rows, each with "samples" (the first keep_samples samples, not
    written to results.json) if keep_samples > 0; with return_errors, a row's UserError or
    SamplerDiverged takes its place. heartbeat: a name; while the evaluations run, a line
    "  ... evaluating <name>: <done>/<total> samples, <s> s" every HEARTBEAT_S on stdout.

    Before any work: every check that needs no computation (`check`, the tensorflow-gan venv);
    then Ray is started (before anything here runs JAX: no process is forked from a driver
    running JAX's threads); then, without a `pool` of the caller's, each teacher and artefact is
    loaded and checked here (preflight), before any actor starts and any progress is shown."""
    from pipeline import samplers
    from pipeline.distributed.evaluation import evaluate_many
    from pipeline.distributed.ray_init import ensure_ray
    from pipeline.evaluation import preflight

    dirs = [check(cfg) for cfg in cfgs]
    if len({(c.metrics_backend, c.inception_path) for c in cfgs}) > 1:
        raise UserError("evaluations run together must share metrics_backend and inception_path")
    if cfgs[0].metrics_backend == "tfgan" or cfgs[0].inception_path is not None:
        from pipeline.distributed.tfgan.backend import check_venv

        check_venv()
    ensure_ray(address)
    specs = [eval_spec(cfg) for cfg in cfgs]
    if pool is None:
        for spec in specs:
            preflight(spec)  # a corrupt checkpoint, an artefact made for another model
    first = cfgs[0]
    pool_kw = {} if pool is not None else pool_options(first)
    with _heartbeat(heartbeat, sum(s.num_samples for s in specs)) as on_range_done:
        outs = evaluate_many(specs, workers=first.workers, progress=progress, backend=first.metrics_backend,
                             inception_path=first.inception_path, pool=pool, keep_samples=keep_samples,
                             return_errors=return_errors, on_range_done=on_range_done, **pool_kw)
    rows = []
    for cfg, spec, (teacher, results_dir), out in zip(cfgs, specs, dirs, outs):
        if isinstance(out, BaseException):
            rows.append(out)
            continue
        samples = out.pop("samples", None)
        name, artefact = split_sampler(cfg.sampler)
        method = name if artefact is None else f"{name}:{os.path.basename(artefact.rstrip('/'))}"
        row = {"method": method, "sampler": cfg.sampler, "steps": cfg.steps, "nfe": samplers.nfe(name, cfg.steps),
               "stride": cfg.stride, "t_max": cfg.t_max, "clip_x0": cfg.clip_x0, "w": cfg.w, "seed": cfg.seed,
               "features": spec.problem.label, "reference": cfg.reference, "teacher": teacher,
               "metrics_backend": cfg.metrics_backend, "time": time.time(), **out}
        rundir.update_results(results_dir, {"evaluations": {cfg.result_key(): row}})
        rows.append(row if samples is None else {**row, "samples": samples})
    return rows


def pool_options(cfg: EvaluateConfig) -> dict:
    """EvalPool's options for cfg's actors: resources (CPU, and GPU / TPU where asked), pinning, failures."""
    resources = {"CPU": cfg.worker_cpus}
    if cfg.worker_gpus:
        resources["GPU"] = cfg.worker_gpus
    if cfg.worker_tpus:
        resources["TPU"] = cfg.worker_tpus
    return dict(resources=resources, pin_cores=cfg.pin_cores, max_failures=cfg.max_failures)


@contextlib.contextmanager
def _heartbeat(name: str | None, total: int):
    """With a name: a thread printing the heartbeat line of run_evaluations every HEARTBEAT_S until
    the block ends; yields the on_range_done callback that counts the samples done (None without)."""
    if name is None:
        yield None
        return
    done, stop, t0 = [0], threading.Event(), time.time()

    def beat():
        while not stop.wait(HEARTBEAT_S):
            print(f"  ... evaluating {name}: {done[0]}/{total} samples, {time.time() - t0:.0f} s", flush=True)

    thread = threading.Thread(target=beat, daemon=True, name="heartbeat")
    thread.start()
    try:
        yield lambda info: done.__setitem__(0, info["done"])
    finally:
        stop.set()
        thread.join()


def run_evaluation(cfg, address: str | None = None, progress: bool = True, pool=None,
                   keep_samples: int = 0) -> dict:
    """One evaluation: run_evaluations([cfg], ...)[0] (errors raised); returns its row."""
    return run_evaluations([cfg], address, progress, pool, keep_samples)[0]
