"""`ddss evaluate`: a distilled student of another teacher, and a sampler that diverges inside an
evaluation actor, end with one line and exit code 2, touching nothing (teachers:
tests/cli_fixtures.py)."""
import os
import shutil

import pytest

from cli_fixtures import fails, snapshot
from pipeline import checkpoint, rundir
from pipeline.teacher import model as tmodel


def test_student_of_another_teacher_is_one_line(teachers, tmp_path, capsys):
    """A finished round-0 student (written as ddss distill writes one) of a teacher on the linear
    schedule, used with the cosine teacher."""
    from pipeline.distill import config as dconfig
    from pipeline.distill import rounds

    linear = str(shutil.copytree(teachers["good"], tmp_path / "linear"))
    cfg = rundir.read_config(linear)
    cfg["schedule"] = "linear"
    rundir.write_config(linear, cfg)
    dcfg = dconfig.load({"teacher": linear, "dir": str(tmp_path / "distill"), "start_steps": 4})
    d = rounds.prepare_round(dcfg, str(tmp_path / "distill"), 0)
    with checkpoint.Checkpointer(rounds.student_dir(str(tmp_path / "distill"), 0), max_to_keep=1) as ck:
        ck.save(0, {"params": tmodel.load_teacher(linear).params})
    rundir.update_results(d, {"round": 0, "steps": 4, "finished": True})
    t = teachers["good"]
    before = snapshot(t, tmp_path)
    fails(["sample", "--teacher", t, "--sampler", f"student-ddim:{tmp_path / 'distill'}", "--steps", 4,
            "--out", tmp_path / "s.npz"], capsys, "student", "schedule linear", "cosine")
    fails(["evaluate", "--teacher", t, "--sampler", f"student-stochastic:{d}", "--steps", 4, "--workers", 1],
           capsys, "schedule linear")
    assert snapshot(t, tmp_path) == before


@pytest.mark.ray
def test_diverging_sampler_in_an_evaluation_actor_is_one_line(teachers, local_ray, capsys):
    t = teachers["inf"]
    before = snapshot(t)
    fails(["evaluate", "--teacher", t, "--steps", 2, "--num-samples", 8, "--batch-size", 8, "--workers", 1], capsys,
           "non-finite", "ddim")
    assert snapshot(t) == before, "a failed evaluation must not touch results.json"
    assert not os.path.exists(os.path.join(t, rundir.RESULTS))


def test_sizes_out_of_range_are_one_line(teachers, capsys):
    t = teachers["good"]
    before = snapshot(t)
    for flag, value, needle in (("--steps", 10**18, "must be in [1, 100000], got 1000000000000000000"),
                                ("--batch-size", 10**12, "must be in [1, 100000]"),
                                ("--num-samples", 10**12, "must be in [2, 1000000]"),
                                ("--seed", 2**32, "'seed'"), ("--workers", 10**6, "'workers'")):
        fails(["evaluate", "--teacher", t, flag, value], capsys, needle)
    fails(["evaluate", "--teacher", t, "--set", "worker_cpus=.inf"], capsys, "'worker_cpus'", "finite")
    assert snapshot(t) == before


def test_results_that_cannot_be_written_are_refused_before_any_sampling(teachers, tmp_path, capsys, monkeypatch):
    """A results directory that cannot be written (or whose results.json is no object) failed
    only after the whole evaluation: now before any actor starts or sample is drawn."""
    import subprocess

    from pipeline.distributed import evaluation

    monkeypatch.setattr(evaluation, "evaluate_many", lambda *a, **k: pytest.fail("sampling started"))
    t = teachers["good"]
    argv = ["evaluate", "--teacher", t, "--steps", 2, "--num-samples", 4, "--workers", 1]
    fails([*argv, "--results-dir", "/proc/self"], capsys, "cannot write in the results directory /proc/self")
    (tmp_path / "results.json").write_text("[]")
    fails([*argv, "--results-dir", tmp_path], capsys, "results.json holds a JSON list")
    assert (tmp_path / "results.json").read_text() == "[]"

    frozen = shutil.copytree(t, tmp_path / "frozen")  # a read-only teacher: its run directory is immutable
    if subprocess.run(["chattr", "+i", str(frozen)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not permitted here")
    try:
        fails([*argv[:2], frozen, *argv[3:]], capsys, "cannot write in the teacher run directory", "--results-dir")
    finally:
        subprocess.run(["chattr", "-i", str(frozen)], check=True)
