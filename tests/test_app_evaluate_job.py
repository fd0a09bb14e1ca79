"""The evaluation job's config and spec: paths made absolute at the edge, and the EvalSpec of a
config (its teacher's feature space; a plan loader for a sampler with an artefact)."""
import os
import types

import numpy as np

from pipeline import config, rundir, schedules
from pipeline.app.evaluate_job import EvaluateConfig, eval_spec
from pipeline.ddss.artefact import save_artefact
from pipeline.samplers import ggdm
from pipeline.teacher import config as tconfig


def test_paths_are_made_absolute_at_the_edge(tmp_path, monkeypatch):
    """Ray workers and actors run in another cwd: the configs that name local paths resolve them
    against the caller's cwd when loaded; URLs and the sampler's name are left alone."""
    from pipeline import ddss
    from pipeline.distill import config as dconfig
    from pipeline.app.evaluate_job import EvaluateConfig

    monkeypatch.chdir(tmp_path)
    ev = config.load(EvaluateConfig, {"teacher": "runs/t", "sampler": "ggdm:arts/k5", "cache_dir": "gs://b/cache"})
    assert ev.teacher == str(tmp_path / "runs" / "t") and ev.sampler == f"ggdm:{tmp_path / 'arts' / 'k5'}"
    assert ev.cache_dir == "gs://b/cache" and ev.results_dir is None
    assert config.load(EvaluateConfig, {"teacher": "t"}).cache_dir == str(tmp_path / ".cache")  # defaults too
    assert config.load(EvaluateConfig, {"teacher": "t", "sampler": "ddim"}).sampler == "ddim"
    assert ddss.load_config(None, {"teacher": "t", "run_dir": "r"}).run_dir == str(tmp_path / "r")
    d = dconfig.load({"teacher": "../t", "dir": "~/d"})
    assert d.teacher == os.path.normpath(str(tmp_path / ".." / "t")) and d.dir == os.path.expanduser("~/d")


def test_eval_spec_of_a_config(tmp_path):
    """A teacher's run directory (config.yaml is all eval_spec reads; the model loads in each worker)."""
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    rundir.write_config(teacher, tconfig.load_config(None))
    given = {"teacher": str(teacher), "steps": 4, "num_samples": 8, "seed": 3, "w": 0.5, "batch_size": 4,
             "kid_samples": 6, "cache_dir": str(tmp_path / "cache")}
    spec = eval_spec(config.load(EvaluateConfig, given))
    assert (spec.sampler, spec.steps, spec.num_samples, spec.seed, spec.w, spec.batch_size, spec.kid_samples) == (
        "ddim", 4, 8, 3, 0.5, 4, 6)
    assert spec.plan is None and spec.problem.label == "digit-classifier"
    assert (spec.stride, spec.t_max, spec.clip_x0) == ("quadratic", 1.0, True)
    grid = eval_spec(config.load(EvaluateConfig, {**given, "stride": "karras", "t_max": 0.9, "clip_x0": False}))
    assert (grid.stride, grid.t_max, grid.clip_x0) == ("karras", 0.9, False)
    inception = eval_spec(config.load(EvaluateConfig, {**given, "inception_path": str(tmp_path)}))
    assert inception.problem.label == "inception"

    params = ggdm.init_params(4, "ggdm", "cosine")
    art = save_artefact(tmp_path / "k4", params, {"schedule": "cosine", "data_shape": [8, 8, 1]})
    spec = eval_spec(config.load(EvaluateConfig, {**given, "sampler": f"ggdm:{art}"}))
    teacher_like = types.SimpleNamespace(schedule=schedules.get("cosine"), data_shape=(8, 8, 1), num_classes=10)
    plan = spec.plan(teacher_like)  # what each actor runs: the artefact read for its model
    assert plan.steps == 4
    np.testing.assert_array_equal(plan.kwargs["params"]["sigma"], np.asarray(params["sigma"]))


def test_t_max_and_clipping_are_validated_and_keyed_only_off_their_defaults():
    """result_key: the keys of earlier results (default t_max and clipping) stay as they were."""
    import pytest

    from pipeline.errors import UserError

    base = {"teacher": "t", "steps": 4, "num_samples": 8, "w": 0.5}
    assert config.load(EvaluateConfig, base).result_key() == "ddim K=4 quadratic w=0.5 n=8 seed=0 jax"
    key = config.load(EvaluateConfig, {**base, "stride": "trailing", "t_max": 0.97, "clip_x0": False}).result_key()
    assert key == "ddim K=4 trailing t_max=0.97 unclipped w=0.5 n=8 seed=0 jax"
    assert "t_max" not in config.load(EvaluateConfig, {**base, "clip_x0": False}).result_key()
    assert config.load(EvaluateConfig, {**base, "t_max": 0.999999}).result_key() != config.load(EvaluateConfig, base).result_key()
    for bad, needle in (({"t_max": 0.0}, "'t_max': must be in (0, 1], got 0.0"), ({"t_max": 1.5}, "'t_max'"),
                        ({"t_max": float("nan")}, "'t_max'"), ({"t_max": "high"}, "t_max"),
                        ({"clip_x0": "maybe"}, "clip_x0"), ({"stride": "cubic"}, "karras, leading, trailing, linspace"),
                        ({"stride": "leading", "steps": 1001}, "'steps': stride 'leading' takes at most 1000 steps")):
        with pytest.raises(UserError) as e:
            config.load(EvaluateConfig, {**base, **bad})
        assert needle in str(e.value) and "\n" not in str(e.value)
    assert config.load(EvaluateConfig, {**base, "stride": "linspace", "steps": 1000}).steps == 1000


def test_heartbeat_names_the_evaluations_running(monkeypatch, capsys):
    """run_evaluations(heartbeat=NAME) (the demo's background evaluations): a line naming them and
    the samples done every HEARTBEAT_S while they run, nothing once they are over."""
    import time

    from pipeline.app import evaluate_job

    monkeypatch.setattr(evaluate_job, "HEARTBEAT_S", 0.05)
    with evaluate_job._heartbeat(None, 10) as on_range_done:
        assert on_range_done is None
    with evaluate_job._heartbeat("samplers in the background", 700) as on_range_done:
        on_range_done({"done": 300, "busy": []})
        time.sleep(0.5)
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.startswith("  ... evaluating samplers in the background: ") for line in lines)
    assert "300/700 samples" in lines[-1]
    time.sleep(0.2)
    assert capsys.readouterr().out == ""
