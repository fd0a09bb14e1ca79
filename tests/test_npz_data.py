"""Bring your own data: a teacher trained on the user's .npz files (data.name npz) is evaluated
in flattened-pixel features against the held-out .npz and searched by DDSS, all through the
command line; bad data fails with one line, exit 2, before any run directory is written
(npz_files: tests/cli_fixtures.py)."""
import json
import math

import numpy as np
import pytest

from helpers import one_line_exit_2
from pipeline import ddss, rundir
from pipeline.app import cli
from pipeline.data import loading
from pipeline.teacher import config as tconfig
from pipeline.teacher import model as tmodel

TINY = {"model.kwargs": "{ch: 8, ch_mult: [1], num_res_blocks: 1}", "train.steps": 30, "train.batch_size": 32,
        "train.checkpoint_every": 30, "train.log_every": 10, "sample.steps": 4, "sample.per_class": 1,
        "sample.fd_samples": 0}


def _sets(d: dict) -> list:
    return [a for k, v in d.items() for a in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def teacher(npz_files, tmp_path_factory):
    """A tiny teacher trained by `ddss train-teacher` on the .npz data, in this process."""
    train_npz, test_npz = npz_files
    run = tmp_path_factory.mktemp("runs") / "teacher"
    argv = ["train-teacher", "--run-dir", str(run), "--set", "data.name=npz", "--set", f"data.path={train_npz}",
            "--set", f"data.test_path={test_npz}", *_sets({**TINY, "sample.fd_samples": 20})]
    assert cli.main(argv) == 0
    return run


def _frechet_float64(a, b) -> float:
    """The Frechet distance of Gaussians fitted to a and b, float64, tr sqrt(S_a S_b) from the
    eigenvalues of the (non-symmetric) product."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(sa @ sb)
    diff = a.mean(0) - b.mean(0)
    return float(diff @ diff + np.trace(sa) + np.trace(sb) - 2.0 * np.sqrt(np.clip(eig.real, 0.0, None)).sum())


@pytest.mark.ray
def test_npz_teacher_evaluates_in_pixels_and_searches(teacher, npz_files, tmp_path, capsys, local_ray):
    _, test_npz = npz_files
    capsys.readouterr()
    t = tmodel.load_teacher(teacher)
    assert t.step == 30 and t.data_shape == (8, 8, 1) and t.num_classes == 10
    assert tconfig.load_config(rundir.read_config(teacher)).data.test_path == str(test_npz)
    check = rundir.read_results(teacher)["teacher"]  # the end-of-training FD, in pixels against test.npz
    assert math.isfinite(check["fd_test"]) and check["fd_reference"] == "npz test split, 120 images, pixels features"

    flags = ["--teacher", str(teacher), "--sampler", "ddim", "--steps", "4", "--num-samples", "40", "--batch-size", "20"]
    assert cli.main(["evaluate", *flags, "--workers", "1"]) == 0, capsys.readouterr().err[-2000:]
    printed = json.loads(capsys.readouterr().out)
    (key, row), = rundir.read_results(teacher)["evaluations"].items()
    assert row["features"] == "pixels" and row["num_samples"] == 40 and row["nfe"] == 4
    assert math.isfinite(row["fd"]) and math.isfinite(row["kid"]) and row["fd"] > 0
    assert printed["fd"] == row["fd"]

    # The evaluation's own samples against the flattened test split, in float64 NumPy: the
    # Evaluator's raw samples (what the actor scored), and `ddss sample` with the same flags,
    # which writes them clipped to [-1, 1] (DDIM's last step can overshoot the data range a little).
    from pipeline import config
    from pipeline.app.evaluate_job import EvaluateConfig, eval_spec
    from pipeline.evaluation import Evaluator, teacher_problem

    for inception, label, shape in ((False, "pixels", (120, 64)), (True, "inception", (120, 8, 8, 1))):
        problem = teacher_problem(teacher, inception=inception)  # with Inception: the images, for the driver
        assert problem.label == label and problem.moments is not inception
        assert problem.reference(problem.features()).shape == shape

    spec = eval_spec(config.load(EvaluateConfig, {"teacher": str(teacher), "sampler": "ddim", "steps": 4,
                                                  "num_samples": 40, "batch_size": 20}))
    ev = Evaluator(spec)
    raw = np.concatenate([ev.samples(b)[0] for b in range(spec.num_blocks)])
    test_x, _ = loading.load_data(t.config.data, "test")
    assert raw.shape == (40, 8, 8, 1) and test_x.shape == (120, 8, 8, 1)
    assert row["fd"] == pytest.approx(_frechet_float64(raw.reshape(40, -1), test_x.reshape(120, -1)), rel=1e-6)

    out = tmp_path / "samples.npz"
    assert cli.main(["sample", *flags, "--out", str(out)]) == 0, capsys.readouterr().err[-2000:]
    capsys.readouterr()
    with np.load(out) as f:
        samples = f["images"]
    np.testing.assert_array_equal(samples, np.clip(raw, -1.0, 1.0))
    assert row["fd"] == pytest.approx(_frechet_float64(samples.reshape(40, -1), test_x.reshape(120, -1)), rel=1e-3)

    argv = ["search", "--teacher", str(teacher), "--steps", "3", "--workers", "0", "--batch-size", "16",
            "--run-dir", str(tmp_path / "search"), "--set", "train_steps=2", "--set", "eval_samples=32",
            "--set", "eval_every=2", "--set", "checkpoint_every=2"]
    assert cli.main(argv) == 0, capsys.readouterr().err[-2000:]
    found = json.loads(capsys.readouterr().out)
    art = ddss.load_artefact(found["artefact"])
    assert art["meta"]["features"] == "pixels" and art["meta"]["K"] == 3 and art["meta"]["data_shape"] == [8, 8, 1]
    assert all(np.all(np.isfinite(v)) for v in art["params"].values())


def test_bad_npz_data_fails_with_one_line_and_writes_nothing(npz_files, tmp_path, capsys):
    train_npz, _ = npz_files
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.full((4, 8, 8, 1), 1.5, np.float32), labels=np.zeros(4, np.int64))
    run = tmp_path / "run"
    base = ["train-teacher", "--run-dir", str(run), *_sets(TINY), "--set", "data.name=npz"]
    one_line_exit_2(base, capsys, "data.path")
    one_line_exit_2(base + ["--set", f"data.path={tmp_path / 'missing.npz'}"], capsys, "data.path", "missing.npz")
    one_line_exit_2(base + ["--set", f"data.path={bad}"], capsys, "bad.npz", "[-1, 1]")
    one_line_exit_2(base + ["--set", f"data.path={train_npz}", "--set", "data.labels_key=y"], capsys, "'y'")
    one_line_exit_2(base + ["--set", f"data.path={train_npz}", "--set", f"data.test_path={bad}"], capsys, "bad.npz")
    assert not run.exists(), "rejected data must not create the run directory"
