"""Evaluation on the exact Gaussian-mixture denoiser (features = the samples): per-sample keys,
metrics against float64 NumPy, artefacts, one-line input errors; `ddss evaluate` and the
tensorflow-gan backend on a local Ray. The Ray actor pool itself: tests/test_pool.py."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import scipy.linalg

from pipeline import evaluation as E
from pipeline.app import artefacts
from pipeline.distributed.tfgan.backend import DEFAULT_VENV
from pipeline.errors import UserError

MEANS = [[-2.0, 0.0, 1.0], [2.0, 1.0, -1.0], [0.0, -2.0, 0.0]]
STDS = [0.5, 0.3, 0.4]
WEIGHTS = [0.3, 0.5, 0.2]
PROBLEM = E.analytic_problem(MEANS, STDS, WEIGHTS, reference_samples=400)


def spec(sampler="ddpm", n=240, batch=32, **kw):
    return E.EvalSpec(PROBLEM, sampler, steps=8, num_samples=n, batch_size=batch, seed=3, **kw)


def kid_numpy(a, b):
    """Unbiased MMD^2 with the cubic polynomial kernel (x.y/d + 1)^3, float64."""
    a, b = np.float64(a), np.float64(b)
    d = a.shape[1]
    k = lambda x, y: (x @ y.T / d + 1.0) ** 3  # noqa: E731
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    m, n = len(a), len(b)
    return ((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
            - 2 * kab.mean())


def fd_numpy(a, b):
    """Frechet distance of Gaussians fitted to a and b (covariances with ddof=1), float64."""
    a, b = np.float64(a), np.float64(b)
    ma, mb = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(ca @ cb).real
    return float(np.sum((ma - mb) ** 2) + np.trace(ca + cb - 2 * root))


@pytest.fixture(scope="module")
def local_result():
    """Samples, features and metrics of the reference spec, computed in this process."""
    s = spec()
    ev = E.Evaluator(s)
    features, moments = E.merge(s, [ev.run(0, s.num_blocks)])  # features = the samples here
    reference = ev.reference()
    return {"samples": features, "reference": reference, "metrics": E.metrics(features, moments, reference)}


def test_sample_i_comes_from_fold_in_seed_i():
    s = spec(n=40, batch=16)
    kx, kn = E.sample_keys(jax.random.key(s.seed), np.arange(40, dtype=np.int32))
    for i in (0, 17, 39):
        k_i = jax.random.fold_in(jax.random.key(s.seed), i)
        assert np.array_equal(jax.random.key_data(kx[i]), jax.random.key_data(jax.random.fold_in(k_i, 0)))
        assert np.array_equal(jax.random.key_data(kn[i]), jax.random.key_data(jax.random.fold_in(k_i, 1)))


def test_a_sample_does_not_depend_on_its_block(local_result):
    """Sample i is the same whatever the block size and the number of samples."""
    s = spec(n=50, batch=10)
    ev = E.Evaluator(s)
    x = np.concatenate([ev.samples(b)[0] for b in range(s.num_blocks)])
    np.testing.assert_allclose(x, local_result["samples"][:50], atol=1e-5)


def test_blocks_cover_the_indices_once():
    s = spec(n=70, batch=32)
    assert [s.block_range(b) for b in range(s.num_blocks)] == [(0, 32), (32, 64), (64, 70)]
    assert E.ranges(s, 2) == [(0, 2), (2, 3)]


def test_metrics_match_float64_numpy(local_result):
    """KID on the samples and FD from block-merged moments equal their direct float64 values."""
    m, x, ref = local_result["metrics"], local_result["samples"], local_result["reference"]
    assert m["kid"] == pytest.approx(kid_numpy(x, ref), rel=1e-4, abs=1e-7)
    assert m["fd"] == pytest.approx(fd_numpy(x, ref), rel=1e-4, abs=1e-6)


def test_fd_sees_a_wrong_sampler():
    """One DDIM step is a poor sampler: its FD is far above K=8 ancestral sampling's."""
    good = E.evaluate_local(spec(n=200))
    bad = E.evaluate_local(E.EvalSpec(PROBLEM, "ddim", steps=1, num_samples=200, batch_size=32, seed=3))
    assert bad["fd"] > 5 * good["fd"]


def test_ggdm_artefact_of_ddim_evaluates_like_ddim(tmp_path):
    """ggdm:PATH loads a DDSS artefact (pipeline.ddss); GGDM initialised at DDIM is DDIM."""
    from pipeline import ddss

    path = ddss.save_artefact(tmp_path / "sampler", ddss.init_params(6, "ggdm+pred", "cosine", "quadratic"), {})
    ddim = E.evaluate_local(E.EvalSpec(PROBLEM, "ddim", steps=6, num_samples=96, batch_size=32))
    ggdm = E.evaluate_local(artefacts.eval_spec(PROBLEM, f"ggdm:{path}", steps=6, num_samples=96, batch_size=32))
    assert ggdm["fd"] == pytest.approx(ddim["fd"], rel=1e-3) and ggdm["kid"] == pytest.approx(ddim["kid"], rel=1e-2)
    with pytest.raises(UserError, match="made for 6 steps"):
        E.Evaluator(artefacts.eval_spec(PROBLEM, f"ggdm:{path}", steps=5, num_samples=8))


def test_stride_and_t_max_make_the_grid_an_artefact_grid_overrides():
    """The spec's grid is time_grid(steps, stride, t_max=t_max), written out here; the samples are
    the public samplers.sample on that grid; a Plan's own grid ignores stride and t_max."""
    from pipeline import samplers
    from pipeline.evaluation.evaluator import resolve

    model = PROBLEM.model()
    s = spec("ddim", n=16, batch=16, stride="linear", t_max=0.5)
    grid = resolve(s, model).grid
    np.testing.assert_allclose(grid, 0.5 * (1 - np.arange(9) / 8), rtol=1e-15, atol=1e-17)
    trailing = resolve(spec("ddim", stride="trailing", t_max=0.8), model).grid  # 999, 874, .., 124 of 0..999
    np.testing.assert_allclose(trailing, np.append(0.8 * (np.arange(999, 0, -125) + 1) / 1000, 0.0), rtol=1e-15)
    x_T, _, _ = E.sample_inputs(jax.random.key(s.seed), np.arange(16, dtype=np.int32), (3,), 0)
    ref = samplers.sample("ddim", model.eps_fn(), model.schedule, x_T, 8, grid=grid)
    x = E.Evaluator(s).samples(0)[0]
    np.testing.assert_allclose(x, np.asarray(ref), atol=1e-5)
    assert np.abs(x - E.Evaluator(spec("ddim", n=16, batch=16, stride="linear")).samples(0)[0]).max() > 0.1

    own = np.array([1.0, 0.6, 0.3, 0.1, 0.0])
    planned = E.EvalSpec(PROBLEM, "ddim:own-grid", steps=4, num_samples=8, t_max=0.5, stride="karras",
                         plan=lambda m: E.Plan(grid=own))
    np.testing.assert_array_equal(resolve(planned, model).grid, own)


class ClippableMixture:
    """The mixture's exact denoiser behind a teacher-like eps_fn(y, w, clip_x0) (denoiser.clip_x0_eps_fn)."""

    def __init__(self, analytic):
        self.analytic, self.schedule, self.data_shape, self.num_classes = analytic, analytic.schedule, analytic.data_shape, 0

    def eps_fn(self, y=None, w=None, clip_x0: bool = True):
        from pipeline.models.denoiser import clip_x0_eps_fn

        fn = self.analytic.eps_fn(y, w)
        return clip_x0_eps_fn(fn, self.schedule) if clip_x0 else fn


def test_clip_x0_reaches_the_models_eps_fn():
    """clip_x0=True: DDIM's last data prediction is clipped, so the samples stay within [-1, 1] (up
    to sigma(0) ~ 5e-5 times eps); False: the mixture's own samples, whose means lie at +-2. A model
    whose eps_fn takes no clip_x0 (the analytic mixture: exact, never clipped) ignores it."""
    from pipeline.evaluation.evaluator import with_clip

    clippable = E.Problem(model=lambda: ClippableMixture(PROBLEM.model()))
    kw = dict(steps=8, num_samples=64, batch_size=64, seed=3)
    clipped = E.Evaluator(E.EvalSpec(clippable, "ddim", **kw)).samples(0)[0]
    unclipped = E.Evaluator(E.EvalSpec(clippable, "ddim", clip_x0=False, **kw)).samples(0)[0]
    exact = E.Evaluator(E.EvalSpec(PROBLEM, "ddim", **kw)).samples(0)[0]
    exact_unclipped = E.Evaluator(E.EvalSpec(PROBLEM, "ddim", clip_x0=False, **kw)).samples(0)[0]
    assert np.abs(clipped).max() <= 1.001 and np.abs(unclipped).max() > 1.5
    np.testing.assert_allclose(unclipped, exact, atol=1e-5)
    np.testing.assert_array_equal(exact_unclipped, exact)
    factory = PROBLEM.model().eps_fn
    assert with_clip(factory, False) is factory and with_clip(factory, True) is factory


def test_a_ggdm_artefact_runs_with_the_clipping_it_was_searched_with(tmp_path):
    """A DDSS artefact records clip_x0; the evaluation runs it so whatever the spec says (an older
    artefact, without the key, follows the spec), and the search's chain clips as it is told."""
    import jax.numpy as jnp

    from pipeline import ddss
    from pipeline.ddss.chain import Chain
    from pipeline.evaluation import pixel_features

    clippable = E.Problem(model=lambda: ClippableMixture(PROBLEM.model()))
    kw = dict(steps=6, num_samples=64, batch_size=64, seed=3, stride="linear")
    ddim = {c: E.Evaluator(E.EvalSpec(clippable, "ddim", clip_x0=c, **kw)).samples(0)[0] for c in (True, False)}
    assert np.abs(ddim[False] - ddim[True]).max() > 0.5  # the premise: clipping matters on this mixture
    params = ddss.init_params(6, "ggdm+pred+time", "cosine", "linear")
    for clip, meta in ((False, {"clip_x0": False}), (True, {"clip_x0": True}), (True, {})):
        path = ddss.save_artefact(tmp_path / f"{clip}-{len(meta)}", params, meta)
        for asked in (True, False):
            got = E.Evaluator(artefacts.eval_spec(clippable, f"ggdm:{path}", clip_x0=asked, **kw)).samples(0)[0]
            want = ddim[clip if meta else asked]
            np.testing.assert_allclose(got, want, atol=1e-4, err_msg=f"{meta}, asked {asked}")
    model = clippable.model()
    for clip in (True, False):
        x0 = Chain(model, pixel_features, clip_x0=clip).samples(params, jax.random.key(0), jnp.arange(64))
        ref = Chain(model, pixel_features, clip_x0=not clip).samples(params, jax.random.key(0), jnp.arange(64))
        assert (np.abs(np.asarray(x0)).max() <= 1.001) == clip and np.abs(np.asarray(x0 - ref)).max() > 0.5


def test_bad_input_is_one_line():
    with pytest.raises(UserError, match="no-such-sampler"):
        E.Evaluator(E.EvalSpec(PROBLEM, "no-such-sampler", steps=4, num_samples=8))
    with pytest.raises(UserError, match="takes no artefact"):
        E.Evaluator(E.EvalSpec(PROBLEM, "ddim:some/path", steps=4, num_samples=8))
    with pytest.raises(UserError, match="num-samples"):
        E.EvalSpec(PROBLEM, "ddim", steps=4, num_samples=1).validate()


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A two-step digits teacher with a very small U-Net (its samples are noise: only the
    plumbing is under test here)."""
    from pipeline import config, rundir
    from pipeline.teacher import config as tconfig
    from pipeline.teacher import train
    from pipeline.distributed.spmd import run_spmd

    run_dir = str(tmp_path_factory.mktemp("teacher"))
    cfg = tconfig.load_config({"model": {"kwargs": {"ch": 8, "ch_mult": [1]}},
                             "train": {"steps": 2, "batch_size": 16, "checkpoint_every": 2}})
    rundir.write_config(run_dir, cfg)
    run_spmd(train.teacher_loop, {"config": config.to_dict(cfg)}, num_workers=0, run_dir=run_dir)
    return run_dir


@pytest.mark.ray
def test_ddss_evaluate_cli_appends_to_results_json(tiny_teacher, local_ray, capsys):
    """`ddss evaluate` on a digits teacher: digit-classifier features against the test split,
    one row in the teacher's results.json."""
    from pipeline import rundir
    from pipeline.app import cli

    argv = ["evaluate", "--teacher", tiny_teacher, "--sampler", "ddim", "--steps", "2", "--num-samples", "24",
            "--batch-size", "12", "--workers", "1", "--w", "0.5"]
    assert cli.main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    (key, row), = rundir.read_results(tiny_teacher)["evaluations"].items()
    assert key == "ddim K=2 quadratic w=0.5 n=24 seed=0 jax"
    assert row["features"] == "digit-classifier" and row["reference_samples"] == 359 and row["nfe"] == 2
    assert row["kid"] == first["kid"] and row["fd"] == first["fd"] > 0
    assert cli.main(["evaluate", "--teacher", tiny_teacher + "-missing"]) == 2
    assert "teacher run directory not found" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.tfgan
@pytest.mark.skipif(not (DEFAULT_VENV / "bin" / "python").exists(), reason="tensorflow-gan venv missing: make tfgan-venv")
def test_tfgan_backend_scores_as_pipeline_metrics(local_ray, local_result):
    """--metrics-backend tfgan: tensorflow-gan's KID and FID (its own venv) on the same features."""
    from pipeline.distributed.evaluation import score

    x, ref = local_result["samples"], local_result["reference"]
    ours, theirs = score(x, None, ref, "jax"), score(x, None, ref, "tfgan")
    assert theirs["kid"] == pytest.approx(ours["kid"], rel=1e-4)
    assert theirs["fd"] == pytest.approx(ours["fd"], rel=1e-4)


def test_specs_differing_in_grid_and_seed_share_one_compilation_and_stay_exact():
    """A tuning's evaluations (other strides, t_max, seeds) reuse one jitted block on the same
    model and feature objects, and each still gives the samplers.sample result on its own grid
    and from its own seed."""
    from pipeline import samplers
    from pipeline.evaluation.evaluator import resolve

    model = PROBLEM.model()
    fixed = E.Problem(model=lambda: model, reference=PROBLEM.reference)  # one model object, as an actor keeps it
    specs = [E.EvalSpec(fixed, "ddim", steps=6, num_samples=16, batch_size=16, seed=seed, stride=stride, t_max=t)
             for seed, stride, t in [(3, "linear", 1.0), (4, "karras", 0.99), (5, "leading", 1.0)]]
    evs = [E.Evaluator(s) for s in specs]
    assert evs[0]._fn is evs[1]._fn is evs[2]._fn
    other = E.Evaluator(E.EvalSpec(fixed, "ddim", steps=6, num_samples=16, batch_size=16, clip_x0=False))
    assert other._fn is not evs[0]._fn  # another clipping setting is another program
    for s, ev in zip(specs, evs):
        x_T, _, _ = E.sample_inputs(jax.random.key(s.seed), np.arange(16, dtype=np.int32), (3,), 0)
        ref = samplers.sample("ddim", model.eps_fn(), model.schedule, x_T, 6, grid=resolve(s, model).grid)
        np.testing.assert_allclose(ev.samples(0)[0], np.asarray(ref), atol=1e-5)
