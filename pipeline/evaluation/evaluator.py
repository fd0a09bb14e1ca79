"""Generate and featurize any range of sample indices of an EvalSpec, deterministically, and
score them; per-block feature moments are merged in block order, so the metrics do not depend
on how the index range is split over workers (pipeline.distributed.pool splits it).

The evaluator knows no method: an artefact (NAME:ARTEFACT) reaches it as the spec's `plan`
loader. `preflight(spec)` runs every check that can fail before sampling; `Evaluator.generate`
gives the samples themselves (`ddss sample`).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import inspect
import time
from typing import Any, Callable

import numpy as np

from pipeline.errors import UserError
from pipeline.evaluation.features import pixel_features
from pipeline.evaluation.spec import EvalSpec, Plan, RangeResult, sample_inputs, split_sampler


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


@dataclasses.dataclass(frozen=True)
class Resolved:
    """What a spec samples with, checked against its model: the sampler name, the artefact's
    Plan, the time grid (steps + 1 times) and the guidance weight."""

    name: str
    plan: Plan
    grid: np.ndarray
    w: float | None


def check_sampler(spec: EvalSpec) -> tuple[str, str | None]:
    """(sampler name, artefact or None) of a valid spec whose sampler exists and, if it names an
    artefact, comes with a loader for it."""
    from pipeline import samplers

    name, artefact = split_sampler(spec.validate().sampler)
    samplers.get(name)  # validates the name
    if artefact is not None and spec.plan is None:
        raise UserError(f"sampler {name!r} takes no artefact here (its EvalSpec has no artefact loader; "
                        "pipeline.app.artefacts.eval_spec gives one to the samplers that take one)")
    return name, artefact


def resolve(spec: EvalSpec, model) -> Resolved:
    """Load the spec's artefact (if any) for `model` and check it: sampler name, step count,
    grid, the model it was made for (UserError, one line). The grid is the artefact's own if its
    Plan has one (the spec's stride and t_max ignored), else time_grid(steps, stride, t_max=t_max)."""
    from pipeline import schedules

    name, artefact = check_sampler(spec)
    plan = spec.plan(model) if artefact is not None else Plan()
    steps = spec.steps
    if plan.steps is not None and plan.steps != steps:
        raise UserError(f"{spec.sampler} was made for {plan.steps} steps, not --steps {steps}")
    grid = plan.grid if plan.grid is not None else schedules.time_grid(steps, spec.stride, model.schedule, t_max=spec.t_max)
    grid = np.asarray(grid, np.float64)
    if grid.shape != (steps + 1,):
        raise UserError(f"{spec.sampler}: its time grid has {grid.shape[0] - 1} steps, not {steps}")
    return Resolved(name, plan, grid, spec.w if spec.w is not None else plan.w)


def with_clip(make_eps: Callable, clip_x0: bool) -> Callable:
    """The factory (y, w) -> eps_fn with x0 clipping `clip_x0`, for a factory that takes clip_x0
    (the teacher's, a student's: denoiser.clip_x0_eps_fn). A factory without it (AnalyticModel's
    exact mixture denoiser, whose data is not confined to [-1, 1]) never clips and is returned as
    it is: clip_x0 has nothing to act on there."""
    try:
        takes = "clip_x0" in inspect.signature(make_eps).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): assume the plain (y, w)
        takes = False
    return (lambda y, w: make_eps(y, w, clip_x0=clip_x0)) if takes else make_eps


def preflight(spec: EvalSpec) -> None:
    """Build the spec's model and resolve its sampler here, so that a missing or corrupt
    checkpoint, a model that does not match its checkpoint or an artefact made for another
    model fails (one line) before any worker starts."""
    check_sampler(spec)  # before the model is loaded
    resolve(spec, spec.problem.model())


_BLOCKS: collections.OrderedDict = collections.OrderedDict()  # compiled block functions, newest last
KEEP_BLOCKS = 16


def _block_fn(model, feature_fn, name: str, make_eps: Callable, w, what: tuple) -> Callable:
    """The jitted block(idx, grid, key, kwargs) -> (x0, features, bad) of sampler `name` on `model`:
    the grid, the seed's key and the artefact's array arguments are its inputs, so specs that
    differ only in them (other strides, t_max, seeds: a tuning's evaluations) share one
    compilation. Kept for the same model and feature objects (an actor keeps both per problem) and
    the same `what` (sampler with its artefact, clipping), the KEEP_BLOCKS latest."""
    import jax

    from pipeline import samplers

    key = (id(model), id(feature_fn), name, w, what)
    hit = _BLOCKS.get(key)
    if hit is not None and hit[0] is model and hit[1] is feature_fn:
        _BLOCKS.move_to_end(key)
        return hit[2]
    shape, classes, sched = tuple(model.data_shape), int(getattr(model, "num_classes", 0) or 0), model.schedule

    def block(idx, grid, key, kw):
        x_T, kn, y = sample_inputs(key, idx, shape, classes)
        x0, bad = samplers.run(name, make_eps(y, w), sched, x_T, grid, key=kn, **kw)
        return x0, feature_fn(x0), bad

    fn = jax.jit(block)
    _BLOCKS[key] = (model, feature_fn, fn)
    while len(_BLOCKS) > KEEP_BLOCKS:
        _BLOCKS.popitem(last=False)
    return fn


class Evaluator:
    """Builds the model, sampler plan and feature function of `spec` once; `run(b0, b1)`
    generates and featurizes blocks [b0, b1)."""

    def __init__(self, spec: EvalSpec):
        import jax
        import jax.numpy as jnp

        check_sampler(spec)  # a bad name fails before the model is loaded
        self.spec = spec
        model = spec.problem.model()
        r = resolve(spec, model)
        self.model = model
        self.feature_fn = spec.problem.features() if spec.problem.features is not None else pixel_features
        self.num_classes = int(getattr(model, "num_classes", 0) or 0)
        clip = spec.clip_x0 if r.plan.clip_x0 is None else r.plan.clip_x0
        self._fn = _block_fn(model, self.feature_fn, r.name, with_clip(r.plan.eps_fn or model.eps_fn, clip),
                             r.w, (spec.sampler, clip))
        self._args = (jnp.asarray(r.grid, jnp.float32), jax.random.key(spec.seed), dict(r.plan.kwargs))

    def _block(self, idx):
        return self._fn(idx, *self._args)

    def samples(self, b: int):
        """(samples, features) of block b, valid rows only, as NumPy."""
        from pipeline.samplers import SamplerDiverged

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
    """KID with its standard error (between blocks, or the jackknife's for one block) and FD
    (merged moments, or the features' own if None, vs the reference's), by pipeline.metrics
    (float64 NumPy)."""
    from pipeline import metrics as m

    moments = moments if moments is not None else m.FeatureMoments.from_features(features)
    kid, kid_std = m.kid_with_std(features, reference)
    if kid_std is None:  # one block (<= 1024 samples): its jackknife error instead
        kid_std = m.kid_jackknife_std(features, reference)
    return {"kid": kid, "kid_std": kid_std, "fd": m.frechet_distance(moments, m.FeatureMoments.from_features(reference))}


def evaluate_local(spec: EvalSpec, progress: Callable[[int], None] | None = None) -> dict:
    """The whole evaluation in this process (no Ray): {"kid", "kid_std", "fd"}."""
    ev = Evaluator(spec)
    result = ev.run(0, spec.num_blocks, progress)
    features, moments = merge(spec, [result])
    return metrics(features, moments, ev.reference())
