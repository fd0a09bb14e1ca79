"""`ddss evaluate`: a distilled student of another teacher, and a sampler that diverges inside an
evaluation actor, end with one line and exit code 2, touching nothing (teachers:
tests/cli_fixtures.py)."""
import os
import shutil
import subprocess
import sys
import time

import pytest

from cli_fixtures import fails, snapshot
from pipeline import checkpoint, rundir
from pipeline.teacher import model as tmodel


def test_student_of_another_teacher_is_one_line(teachers, tmp_path, capsys, monkeypatch):
    """A finished round-0 student (written as ddss distill writes one) of a teacher on the linear
    schedule, used with the cosine teacher."""
    from pipeline.distill import config as dconfig
    from pipeline.distill import rounds
    from pipeline.distributed import ray_init

    # ddss evaluate starts Ray before it loads the models (no fork of a process running JAX); the
    # student is refused before any actor starts, so no Ray is needed here
    monkeypatch.setattr(ray_init, "ensure_ray", lambda *a, **k: None)

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


def test_grid_flags_reach_the_spec_and_a_bad_t_max_is_one_line(teachers, tmp_path, capsys, monkeypatch):
    """--stride (any of schedules.STRIDES), --t-max and --no-clip-x0 reach the EvalSpec the workers
    run (caught here at the preflight, before any actor); defaults: t_max 1, clipped."""
    from pipeline import evaluation
    from pipeline.app import cli
    from pipeline.distributed import ray_init

    class Caught(Exception):
        pass

    def catch(spec):
        raise Caught(spec)

    monkeypatch.setattr(ray_init, "ensure_ray", lambda *a, **k: None)
    monkeypatch.setattr(evaluation, "preflight", catch)
    t = teachers["good"]
    argv = ["evaluate", "--teacher", t, "--steps", "3", "--num-samples", "8", "--workers", "1", "--results-dir", str(tmp_path)]
    with pytest.raises(Caught) as e:
        cli.main([*argv, "--stride", "karras", "--t-max", "0.97", "--no-clip-x0"])
    spec = e.value.args[0]
    assert (spec.stride, spec.t_max, spec.clip_x0, spec.steps) == ("karras", 0.97, False, 3)
    with pytest.raises(Caught) as e:
        cli.main([*argv, "--stride", "trailing"])
    assert (e.value.args[0].stride, e.value.args[0].t_max, e.value.args[0].clip_x0) == ("trailing", 1.0, True)
    before = snapshot(t, tmp_path)
    fails([*argv, "--t-max", "0"], capsys, "'t_max'", "must be in (0, 1], got 0.0")
    fails([*argv, "--t-max", "nan"], capsys, "'t_max'")
    fails([*argv, "--stride", "leading", "--steps", "1001"], capsys, "at most 1000 steps")
    assert snapshot(t, tmp_path) == before


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


def test_checks_that_need_no_computation_come_before_any(teachers, tmp_path, capsys, monkeypatch):
    """A missing tensorflow-gan venv, Inception module or artefact, an unknown sampler and ggdm
    without its artefact were found after the sampling (or after the progress bar started): now
    one line within a few seconds, before Ray starts or any model is loaded, nothing written."""
    from pipeline import ddss, evaluation
    from pipeline.distributed import ray_init

    class Started(Exception):
        pass

    def started(what):
        def fail(*a, **k):
            raise Started(what)
        return fail

    monkeypatch.setattr(ray_init, "ensure_ray", started("Ray started"))
    monkeypatch.setattr(evaluation, "preflight", started("a model was loaded"))
    monkeypatch.setenv("DDSS_TFGAN_VENV", str(tmp_path / "no-venv"))
    t, results = teachers["good"], tmp_path / "results"
    results.mkdir()
    art = ddss.save_artefact(tmp_path / "k2", ddss.init_params(2, "ggdm", "cosine", "quadratic"), {"schedule": "cosine"})
    with open(os.path.join(art, "params.npz"), "r+b") as f:  # one byte changed: its checksum no longer matches
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    before = snapshot(t, tmp_path)
    argv = ["evaluate", "--teacher", t, "--steps", 2, "--num-samples", 1000, "--workers", 1, "--results-dir", results]
    for extra, needles in (
        (["--sampler", "ggdm"], ["sampler 'ggdm' needs an artefact: ggdm:PATH"]),
        (["--sampler", "student-ddim"], ["sampler 'student-ddim' needs an artefact: student-ddim:PATH"]),
        (["--metrics-backend", "tfgan"], ["tensorflow-gan venv not found", "no-venv", "make tfgan-venv"]),
        (["--inception-path", tmp_path / "inception"], ["Inception TF-Hub module directory not found"]),
        (["--sampler", f"ggdm:{tmp_path / 'none'}"], ["is not a DDSS sampler artefact"]),
        (["--sampler", f"ggdm:{art}"], ["checksum mismatch"]),
        (["--sampler", f"student-ddim:{tmp_path / 'none'}"], ["holds no finished distillation round"]),
        (["--sampler", "nosuch"], ["unknown sampler 'nosuch'"]),
    ):
        t0 = time.perf_counter()
        fails([*argv, *extra], capsys, *needles)
        assert time.perf_counter() - t0 < 5, extra
    assert snapshot(t, tmp_path) == before and not (results / "results.json").exists()
    with pytest.raises(Started, match="Ray started"):  # a good config gets past every check to Ray
        from pipeline.app import cli

        cli.main([str(a) for a in argv])


@pytest.mark.ray
def test_evaluate_forks_no_process_running_jax(teachers, tmp_path):
    """`os.fork() was called ... JAX is multithreaded ... deadlock` was printed by every Ray-using
    command: the local Ray's processes were started (fork, then Python code, then exec) after the
    teacher was loaded. Ray now starts before anything runs JAX."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.app.cli", "evaluate", "--teacher", teachers["good"], "--sampler", "ddim",
         "--steps", "2", "--num-samples", "20", "--workers", "1", "--results-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env=dict(os.environ, JAX_PLATFORMS="cpu", RAY_ADDRESS=""),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "os.fork() was called" not in proc.stderr, proc.stderr[-3000:]
    assert (tmp_path / "results.json").exists()
