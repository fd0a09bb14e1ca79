"""Evaluation without Ray: generate and featurize any range of sample indices, deterministically.

Sample i of an evaluation depends only on (seed, i): its key k_i = fold_in(key(seed), i) gives
x_T (from fold_in(k_i, 0)), the sampler's per-sample noise key (fold_in(k_i, 1)) and, for a
class-conditional model, the label i % num_classes. Indices are processed in fixed blocks of
`batch_size` aligned at multiples of it (the last one padded), so a block is the same
computation whichever worker runs it; per-block feature moments are merged in block order.
Hence the features and metrics do not depend on how the index range is split (the Ray actor
pool in pipeline/distributed/evaluation.py splits it; this module knows nothing of Ray).

What is evaluated is a `Problem`: picklable factories for the model (a teacher-like object:
`schedule`, `data_shape`, `num_classes` (0: unconditional), `eps_fn(y, w=None)`), the feature
function and the reference features. A sampler name "NAME:ARTEFACT" loads an artefact with the
loader registered for NAME (see ARTEFACT_LOADERS: DDSS artefacts, distilled students), checked
against the model it is used with. `preflight(spec)` runs every check that can fail before
sampling in the driver; `Evaluator.generate` gives the samples themselves (`ddss sample`).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import os
from typing import Any, Callable

import numpy as np

from pipeline import config
from pipeline.errors import UserError

# ----------------------------------------------------------------------------------------
# Artefact loaders, by sampler prefix: "ggdm:PATH" -> ARTEFACT_LOADERS["ggdm"](PATH, model).
# A loader returns a Plan. Plug one in with one line here, "module:function", imported on first
# use in every worker (a loader registered at run time in one process would not reach them).


@dataclasses.dataclass(frozen=True)
class Plan:
    """What an artefact changes in the sampling of the teacher.

    kwargs: extra sampler keyword arguments (e.g. {"params": ggdm_params});
    grid: an explicit decreasing time grid of steps+1 times (default: time_grid(steps, stride));
    eps_fn: a denoiser factory (y, w) -> eps_fn(x, t) replacing model.eps_fn (a distilled student);
    steps: the step count the artefact was made for (None: any; else --steps must match);
    w: the guidance weight it was made for (used when the evaluation gives none).
    """

    kwargs: dict = dataclasses.field(default_factory=dict)
    grid: Any = None
    eps_fn: Callable | None = None
    steps: int | None = None
    w: float | None = None


ARTEFACT_LOADERS: dict[str, str] = {
    "ggdm": "pipeline.evaluate:load_ggdm_artefact",
    "student-ddim": "pipeline.evaluate:load_student_artefact",
    "student-stochastic": "pipeline.evaluate:load_student_artefact",
}


def artefact_loader(prefix: str) -> Callable[[str, Any], Plan]:
    """The loader registered for sampler prefix `prefix` (UserError listing the known ones)."""
    loader = ARTEFACT_LOADERS.get(prefix)
    if loader is None:
        known = ", ".join(sorted(ARTEFACT_LOADERS)) or "none"
        raise UserError(f"sampler {prefix!r} takes no artefact (samplers with artefacts: {known})")
    module, _, name = loader.partition(":")
    return getattr(importlib.import_module(module), name)


def split_sampler(sampler: str) -> tuple[str, str | None]:
    """"NAME:ARTEFACT" -> (NAME, ARTEFACT); "NAME" -> (NAME, None)."""
    name, sep, artefact = sampler.partition(":")
    if sep and not artefact:
        raise UserError(f"sampler {sampler!r}: nothing after ':' (expected NAME:ARTEFACT)")
    return name, (artefact if sep else None)


def check_made_for(what: str, model, *, schedule: str | None = None, data_shape=None, num_classes: int | None = None):
    """UserError unless the model has the schedule, data shape and class count an artefact was
    made for (None: not recorded, not checked)."""
    have = {"schedule": getattr(model.schedule, "name", None), "data shape": tuple(model.data_shape),
            "classes": int(getattr(model, "num_classes", 0) or 0)}
    made = {"schedule": schedule, "data shape": None if data_shape is None else tuple(data_shape), "classes": num_classes}
    for key, value in made.items():
        if value is not None and have[key] is not None and value != have[key]:
            raise UserError(f"{what} was made for a model with {key} {_show(value)}, but the teacher has {_show(have[key])}")


def _show(v) -> str:
    return "x".join(map(str, v)) if isinstance(v, tuple) else str(v)


def load_ggdm_artefact(path: str, model) -> Plan:
    """A DDSS artefact (GGDM parameters found by the search, pipeline.ddss) for "ggdm", checked
    against the model's schedule and data shape; its guidance weight is the default w."""
    from pipeline import ddss
    from pipeline.samplers import ggdm

    art = ddss.load_artefact(path)
    meta = art["meta"]
    check_made_for(f"DDSS sampler artefact {path}", model, schedule=meta.get("schedule"), data_shape=meta.get("data_shape"))
    return Plan(kwargs={"params": art["params"]}, steps=ggdm.num_steps(art["params"]), w=meta.get("guidance"))


def load_student_artefact(path: str, model) -> Plan:
    """A distilled student (pipeline.distill; a round directory or a distillation root) for
    "student-ddim" / "student-stochastic": its eps_fn, grid and step count, checked against the
    model's schedule, data shape and classes."""
    from pipeline.distill.student import load_student

    st = load_student(path)
    check_made_for(f"student {path}", model, schedule=st.schedule.name, data_shape=st.data_shape,
                   num_classes=st.num_classes)
    return Plan(eps_fn=st.eps_fn, grid=st.grid, steps=st.steps)


# ----------------------------------------------------------------------------------------
# The user's config (`ddss evaluate` flags, jobs/evaluate.py YAML).

METRICS_BACKENDS = ("jax", "tfgan")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """An evaluation of a teacher's samples (or an artefact's: sampler NAME:ARTEFACT)."""

    teacher: str = dataclasses.field(default="", metadata=config.PATH)  # the teacher's run directory
    sampler: str = dataclasses.field(default="ddim", metadata=config.ARTEFACT)  # NAME or NAME:ARTEFACT (ggdm:PATH, student-ddim:RUN_DIR)
    steps: int = 10
    num_samples: int = 1000
    workers: int = 2
    seed: int = 0
    stride: str = "quadratic"
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

    def validate(self):
        from pipeline import schedules

        config.check(bool(self.teacher), "teacher", "give the teacher's run directory (--teacher RUN_DIR)")
        name, sep, artefact = self.sampler.partition(":")
        config.check(bool(name) and (not sep or bool(artefact)), "sampler", f"expected NAME or NAME:ARTEFACT, got {self.sampler!r}")
        config.check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        config.check(self.num_samples >= 2, "num_samples", f"must be >= 2 (KID needs two), got {self.num_samples}")
        config.check(self.workers >= 1, "workers", f"must be >= 1, got {self.workers}")
        config.check(self.w is None or math.isfinite(self.w), "w", f"must be a finite guidance weight, got {self.w}")
        config.check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        config.check(self.kid_samples is None or self.kid_samples >= 2, "kid_samples", "must be >= 2")
        config.check(self.stride in schedules.STRIDES, "stride", f"must be one of {', '.join(schedules.STRIDES)}")
        config.check(self.metrics_backend in METRICS_BACKENDS, "metrics_backend",
                     f"must be one of {', '.join(METRICS_BACKENDS)}, got {self.metrics_backend!r}")
        for key in ("worker_cpus", "worker_gpus", "worker_tpus"):
            config.check(getattr(self, key) >= 0, key, "must be >= 0")
        config.check(self.max_failures >= 0, "max_failures", "must be >= 0")

    def result_key(self) -> str:
        """The key of this evaluation in results.json["evaluations"]."""
        w = "default" if self.w is None else f"{self.w:g}"
        return f"{self.sampler} K={self.steps} {self.stride} w={w} n={self.num_samples} seed={self.seed} {self.metrics_backend}"


# ----------------------------------------------------------------------------------------
# What is evaluated.


@dataclasses.dataclass(frozen=True)
class Problem:
    """Picklable recipe of a model and its feature space (built again in every worker).

    model(): a teacher-like object; features(): feature_fn(x [B, ...]) -> [B, F] (jittable), or
    None for the flattened samples themselves; reference(feature_fn): reference features [M, F]
    (NumPy; None: sampling only). label: how results name the feature space ("digit-classifier",
    ...). prepare(): run once by the driver before the workers start (e.g. train and cache a feature network).
    moments=False: the "features" are images for the driver to featurize (Inception), so the
    workers return them whole and compute no moments.
    """

    model: Callable[[], Any]
    reference: Callable[[Callable], np.ndarray] | None = None  # None: sampling only, nothing to score
    features: Callable[[], Callable] | None = None
    label: str = "samples"
    prepare: Callable[[], Any] | None = None
    moments: bool = True


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """One evaluation: `num_samples` samples of `sampler` (NAME or NAME:ARTEFACT) at `steps`."""

    problem: Problem
    sampler: str
    steps: int
    num_samples: int
    seed: int = 0
    stride: str = "quadratic"
    w: float | None = None
    batch_size: int = 100
    kid_samples: int | None = None  # KID on the first kid_samples samples (None: all)

    def validate(self):
        split_sampler(self.sampler)
        if self.steps < 1:
            raise UserError(f"--steps must be >= 1, got {self.steps}")
        if self.num_samples < 2:
            raise UserError(f"--num-samples must be >= 2 (KID needs two samples), got {self.num_samples}")
        if self.batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {self.batch_size}")
        if self.kid_samples is not None and self.kid_samples < 2:
            raise UserError(f"kid_samples must be >= 2, got {self.kid_samples}")
        return self

    @property
    def num_blocks(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    @property
    def num_kid(self) -> int:
        return self.num_samples if self.kid_samples is None else min(self.kid_samples, self.num_samples)

    def block_range(self, b: int) -> tuple[int, int]:
        """Sample indices [start, stop) of block b."""
        return b * self.batch_size, min((b + 1) * self.batch_size, self.num_samples)


@dataclasses.dataclass
class RangeResult:
    """What a worker returns for blocks [block_start, block_stop): features of the samples
    with index < spec.num_kid (in index order) and the FeatureMoments of each block."""

    block_start: int
    block_stop: int
    features: np.ndarray
    moments: list
    cpu_s: float = 0.0  # CPU time the worker process spent on it


def ranges(spec: EvalSpec, blocks_per_range: int = 1) -> list[tuple[int, int]]:
    """The work units: consecutive block ranges [b0, b1) covering all blocks."""
    n = spec.num_blocks
    return [(b, min(b + blocks_per_range, n)) for b in range(0, n, blocks_per_range)]


# ----------------------------------------------------------------------------------------
# The worker side.


def sample_keys(seed: int, idx):
    """(x_T key, sampler noise key) of each sample index in idx [B]: fold_in(key(seed), i)."""
    import jax

    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(idx)
    split = jax.vmap(lambda k: (jax.random.fold_in(k, 0), jax.random.fold_in(k, 1)))
    return split(keys)


def pixel_features(x):
    """The flattened samples [B, prod(shape)]: the feature space of .npz data without Inception
    and of Gaussian mixtures."""
    return x.reshape(x.shape[0], -1)


def data_features(data_name: str, cache_dir) -> tuple:
    """(feature_fn, label) of a teacher's data set: the digit classifier's penultimate layer for
    digits (trained once into cache_dir), the flattened pixels otherwise."""
    if data_name != "digits":
        return pixel_features, "pixels"
    from pipeline.models import classifier

    return classifier.feature_fn(classifier.load_or_train_feature_net(cache_dir)), "digit-classifier"


def features_in_batches(feature_fn, images, batch_size: int = 500) -> np.ndarray:
    """jit(feature_fn) of images [N, ...] in batches of batch_size, concatenated as NumPy."""
    import jax

    embed = jax.jit(feature_fn)
    return np.concatenate([np.asarray(embed(images[i:i + batch_size])) for i in range(0, len(images), batch_size)])


@dataclasses.dataclass(frozen=True)
class Resolved:
    """What a spec samples with, checked against its model: the sampler name, the artefact's
    Plan, the time grid (steps + 1 times) and the guidance weight."""

    name: str
    plan: Plan
    grid: np.ndarray
    w: float | None


def _check_sampler(spec: EvalSpec) -> tuple[str, str | None]:
    """(sampler name, artefact path or None) of a valid spec whose sampler exists and, if it
    names an artefact, has an artefact loader."""
    from pipeline import samplers

    name, artefact = split_sampler(spec.validate().sampler)
    samplers.get(name)  # validates the name
    if artefact is not None:
        artefact_loader(name)
    return name, artefact


def resolve(spec: EvalSpec, model) -> Resolved:
    """Load the spec's artefact (if any) for `model` and check it: sampler name, step count,
    grid, the model it was made for (UserError, one line)."""
    from pipeline import schedules

    name, artefact = _check_sampler(spec)
    plan = artefact_loader(name)(artefact, model) if artefact is not None else Plan()
    steps = spec.steps
    if plan.steps is not None and plan.steps != steps:
        raise UserError(f"{spec.sampler} was made for {plan.steps} steps, not --steps {steps}")
    grid = plan.grid if plan.grid is not None else schedules.time_grid(steps, spec.stride, model.schedule)
    grid = np.asarray(grid, np.float64)
    if grid.shape != (steps + 1,):
        raise UserError(f"{spec.sampler}: its time grid has {grid.shape[0] - 1} steps, not {steps}")
    return Resolved(name, plan, grid, spec.w if spec.w is not None else plan.w)


def preflight(spec: EvalSpec) -> None:
    """Build the spec's model and resolve its sampler here, so that a missing or corrupt
    checkpoint, a model that does not match its checkpoint or an artefact made for another
    model fails (one line) before any worker starts."""
    _check_sampler(spec)  # before the model is loaded
    resolve(spec, spec.problem.model())


class Evaluator:
    """Builds the model, sampler plan and feature function of `spec` once; `run(b0, b1)`
    generates and featurizes blocks [b0, b1)."""

    def __init__(self, spec: EvalSpec):
        import jax
        import jax.numpy as jnp

        from pipeline import samplers

        _check_sampler(spec)  # a bad name fails before the model is loaded
        self.spec = spec
        model = spec.problem.model()
        r = resolve(spec, model)
        self.model = model
        self.feature_fn = spec.problem.features() if spec.problem.features is not None else pixel_features
        make_eps = r.plan.eps_fn or model.eps_fn
        self.num_classes = num_classes = int(getattr(model, "num_classes", 0) or 0)
        shape = tuple(model.data_shape)
        name, grid, w, sched, seed, kw = r.name, r.grid, r.w, model.schedule, spec.seed, dict(r.plan.kwargs)
        feature_fn = self.feature_fn

        def block(idx):
            kx, kn = sample_keys(seed, idx)
            x_T = jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(kx)
            y = (idx % num_classes).astype(jnp.int32) if num_classes else None
            x0, bad = samplers.run(name, make_eps(y, w), sched, x_T, jnp.asarray(grid, jnp.float32), key=kn, **kw)
            return x0, feature_fn(x0), bad

        self._block = jax.jit(block)

    def samples(self, b: int):
        """(samples, features) of block b, valid rows only, as NumPy."""
        from pipeline.samplers.core import SamplerDiverged

        start, stop = self.spec.block_range(b)
        bs = self.spec.batch_size
        idx = np.arange(b * bs, (b + 1) * bs, dtype=np.int32)  # padded to the fixed block shape
        x0, feats, bad = self._block(idx)
        if int(bad):
            raise SamplerDiverged(
                f"sampler {self.spec.sampler!r} produced non-finite values at step {int(bad)} of "
                f"{self.spec.steps} (samples {start}..{stop - 1}); check the model's parameters, the "
                f"guidance weight and the step count"
            )
        n = stop - start
        feats = np.asarray(feats, np.float32)[:n]
        return np.asarray(x0)[:n], (feats.reshape(n, -1) if self.spec.problem.moments else feats)

    def generate(self, progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """All the spec's samples, clipped to the data range [-1, 1], and their labels (index %
        num_classes; None for an unconditional model): the samples an evaluation scores."""
        images = []
        for b in range(self.spec.num_blocks):
            x, _ = self.samples(b)
            images.append(np.clip(x, -1.0, 1.0))
            if progress is not None:
                progress(len(x))
        n = self.spec.num_samples
        return np.concatenate(images), (np.arange(n, dtype=np.int32) % self.num_classes if self.num_classes else None)

    def run(self, block_start: int, block_stop: int, progress: Callable[[int], None] | None = None) -> RangeResult:
        """Features and per-block moments of blocks [block_start, block_stop)."""
        import time

        from pipeline.metrics import FeatureMoments

        cpu0 = time.process_time()
        feats, moments = [], []
        for b in range(block_start, block_stop):
            start, stop = self.spec.block_range(b)
            _, f = self.samples(b)
            if self.spec.problem.moments:
                moments.append(FeatureMoments.from_features(f))
            keep = max(0, min(stop, self.spec.num_kid) - start)
            feats.append(f[:keep])
            if progress is not None:
                progress(stop - start)
        return RangeResult(block_start, block_stop, np.concatenate(feats), moments, time.process_time() - cpu0)

    def reference(self) -> np.ndarray:
        """The reference features [M, F] of the problem, in this evaluator's feature space."""
        return np.asarray(self.spec.problem.reference(self.feature_fn), np.float32)


# ----------------------------------------------------------------------------------------
# The driver side: merge results (in block order) and compute the metrics.


def merge(spec: EvalSpec, results: list[RangeResult]) -> tuple[np.ndarray, Any]:
    """(KID features in index order, merged FeatureMoments or None) from range results in any
    order. Moments are merged block by block in index order: the sums do not depend on the split."""
    results = sorted(results, key=lambda r: r.block_start)
    covered = [b for r in results for b in range(r.block_start, r.block_stop)]
    if covered != list(range(spec.num_blocks)):
        raise RuntimeError(f"evaluation results cover blocks {covered[:5]}..., not 0..{spec.num_blocks - 1}")
    blocks = [m for r in results for m in r.moments]
    moments = functools.reduce(lambda a, b: a.merge(b), blocks) if blocks else None
    return np.concatenate([r.features for r in results]), moments


def metrics(features: np.ndarray, moments, reference: np.ndarray) -> dict:
    """KID (generated features vs reference) and FD (merged moments, or the features' own if
    None, vs the reference's), by pipeline.metrics (float64 NumPy)."""
    from pipeline import metrics as m

    moments = moments if moments is not None else m.FeatureMoments.from_features(features)
    kid, kid_std = m.kid_with_std(features, reference)
    return {"kid": kid, "kid_std": kid_std, "fd": m.frechet_distance(moments, m.FeatureMoments.from_features(reference))}


def evaluate_local(spec: EvalSpec, progress: Callable[[int], None] | None = None) -> dict:
    """The whole evaluation in this process (no Ray): {"kid", "fd"}."""
    ev = Evaluator(spec)
    result = ev.run(0, spec.num_blocks, progress)
    features, moments = merge(spec, [result])
    return metrics(features, moments, ev.reference())


# ----------------------------------------------------------------------------------------
# Problems.


@dataclasses.dataclass(frozen=True)
class AnalyticModel:
    """A Gaussian mixture's exact denoiser as an unconditional teacher."""

    mixture: Any
    schedule: Any
    num_classes: int = 0

    @property
    def data_shape(self) -> tuple:
        return (self.mixture.dim,)

    def eps_fn(self, y=None, w=None):
        """The exact eps_fn (labels and guidance do not apply)."""
        return self.mixture.eps_fn(self.schedule)


def _analytic_model(means, stds, weights, schedule):
    from pipeline import schedules
    from pipeline.models.analytic import GaussianMixture

    return AnalyticModel(GaussianMixture(np.asarray(means), np.asarray(stds), np.asarray(weights)), schedules.get(schedule))


def _analytic_reference(means, stds, weights, num, seed, feature_fn):
    import jax

    from pipeline.models.analytic import GaussianMixture

    x = GaussianMixture(np.asarray(means), np.asarray(stds), np.asarray(weights)).sample(jax.random.key(seed), num)
    return np.asarray(feature_fn(x))


def analytic_problem(means, stds, weights, schedule: str = "cosine", reference_samples: int = 1000,
                     reference_seed: int = 12345, features: Callable[[], Callable] | None = None) -> Problem:
    """A Gaussian mixture as the model, its exact samples as the reference; features default
    to the samples themselves."""
    args = (np.asarray(means, np.float64).tolist(), np.asarray(stds, np.float64).tolist(),
            np.asarray(weights, np.float64).tolist())
    return Problem(
        model=functools.partial(_analytic_model, *args, schedule),
        reference=functools.partial(_analytic_reference, *args, reference_samples, reference_seed),
        features=features,
        label="samples" if features is None else "features",
    )


def _identity():
    return lambda x: x


def _load_teacher(run_dir):
    from pipeline.train import load_teacher

    return load_teacher(run_dir)


def _digit_features(cache_dir):
    from pipeline.models.classifier import feature_fn, load_or_train_feature_net

    return feature_fn(load_or_train_feature_net(cache_dir))


def _digits_reference(feature_fn):
    """Features of the digits test split (the reference of FD/KID on digits)."""
    from pipeline.data.digits import load_digits

    images, _ = load_digits("test")
    return np.asarray(feature_fn(images))


def _pixels():
    return pixel_features


def _data_reference(data, split, feature_fn):
    """Features of a split of a teacher's data set (pipeline.train.DataConfig `data`)."""
    from pipeline.train import load_data

    images, _ = load_data(data, split)
    return features_in_batches(feature_fn, images)


def teacher_dir(run_dir) -> str:
    """The absolute path of a teacher's run directory (UserError if it is none)."""
    from pipeline import rundir

    path = os.path.abspath(os.fspath(run_dir))
    if not os.path.isdir(path):
        raise UserError(f"teacher run directory not found: {run_dir}")
    if not os.path.isfile(os.path.join(path, rundir.CONFIG)):
        raise UserError(f"{run_dir} is not a teacher run directory (no {rundir.CONFIG})")
    return path


def sampling_problem(run_dir) -> Problem:
    """A trained teacher to sample from (no features, no reference)."""
    return Problem(functools.partial(_load_teacher, teacher_dir(run_dir)))


def teacher_problem(run_dir, cache_dir=".cache", inception: bool = False) -> Problem:
    """A trained teacher (pipeline.train.load_teacher) in its data set's feature space, against
    its test split: the digit classifier's penultimate layer for digits (label
    "digit-classifier"), the flattened pixels for npz (label "pixels"), or with inception=True
    the images themselves, for the driver to put through Inception."""
    from pipeline import rundir, train

    run_dir, cache_dir = teacher_dir(run_dir), os.path.abspath(cache_dir)
    data = train.load_config(rundir.read_config(run_dir)).data
    model = functools.partial(_load_teacher, run_dir)
    if data.name != "digits":
        reference = functools.partial(_data_reference, data, "test")
        if inception:
            return Problem(model, reference=reference, features=_identity, label="inception", moments=False)
        return Problem(model, reference=reference, features=_pixels, label="pixels")
    if inception:
        return Problem(model, reference=_digits_reference, features=_identity, label="inception", moments=False)
    return Problem(model, reference=_digits_reference, features=functools.partial(_digit_features, cache_dir),
                   label="digit-classifier", prepare=functools.partial(_digit_features, cache_dir))


def eval_spec(cfg: EvaluateConfig) -> EvalSpec:
    """The EvalSpec of an EvaluateConfig (its teacher in digit-classifier, pixel or Inception features)."""
    problem = teacher_problem(cfg.teacher, cfg.cache_dir, inception=cfg.inception_path is not None)
    return EvalSpec(problem, cfg.sampler, cfg.steps, cfg.num_samples, seed=cfg.seed, stride=cfg.stride, w=cfg.w,
                    batch_size=cfg.batch_size, kid_samples=cfg.kid_samples)
