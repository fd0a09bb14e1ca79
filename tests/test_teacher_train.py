"""`ddss train-teacher` end to end as a user runs it: SIGKILL mid-training then --resume gives exactly
the parameters of an uninterrupted run; --resume refuses a changed model with one line and exit 2
(bad configs and flags: tests/test_commands_train_teacher.py)."""
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from helpers import one_line_exit_2, read_metrics
from pipeline import rundir
from pipeline.app import cli
from pipeline.teacher import model as tmodel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
TINY = ["--set", "model.kwargs={ch: 8, ch_mult: [1], num_res_blocks: 1}", "--set", "train.steps=40",
        "--set", "train.batch_size=32", "--set", "train.checkpoint_every=4", "--set", "train.log_every=4",
        "--set", "sample.steps=4", "--set", "sample.per_class=1", "--set", "sample.fd_samples=0"]


def _cmd(run_dir, *extra):
    return [sys.executable, "-m", "pipeline.app.cli", "train-teacher", "--run-dir", str(run_dir), *extra]


def _checkpoint_steps(run_dir) -> list[int]:
    ck = os.path.join(str(run_dir), rundir.CHECKPOINTS)
    return sorted(int(n) for n in os.listdir(ck) if n.isdigit()) if os.path.isdir(ck) else []


def test_sigkill_then_resume_reaches_the_uninterrupted_parameters(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    ref = subprocess.Popen(_cmd(clean, *TINY), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc = subprocess.Popen(_cmd(killed, *TINY), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any(s >= 8 for s in _checkpoint_steps(killed)):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = _checkpoint_steps(killed)
    assert at_kill and max(at_kill) < 40, f"killed too late or too early: checkpoints {at_kill}"
    assert "teacher" not in rundir.read_results(str(killed))

    resumed = subprocess.run(_cmd(killed, "--resume"), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert ref.wait(timeout=400) == 0, ref.stderr.read()[-2000:]
    res = rundir.read_results(str(killed))["teacher"]
    assert res["resumed_from"] == max(at_kill) and res["trained_steps"] == 40
    assert os.path.exists(killed / "samples.png")

    a, b = tmodel.load_teacher(str(killed)), tmodel.load_teacher(str(clean))
    assert a.step == b.step == 40
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_refuses_to_change_the_model_and_keeps_the_run(tmp_path, capsys):
    """A finished tiny run; --resume with a different model key fails, and nothing in the run changes."""
    run_dir = tmp_path / "run"
    assert cli.main(["train-teacher", "--run-dir", str(run_dir), *TINY[:-2], "--set", "train.steps=4"]) == 0
    capsys.readouterr()
    before = {p: os.path.getmtime(os.path.join(run_dir, p)) for p in ("config.yaml", "results.json")}
    one_line_exit_2(["train-teacher", "--run-dir", str(run_dir), "--resume", "--set", "model.kwargs.ch=16"], capsys,
                     "model.kwargs.ch")
    assert {p: os.path.getmtime(os.path.join(run_dir, p)) for p in before} == before
    assert _checkpoint_steps(run_dir) == [4]
    # a non-empty run directory is never trained into without --resume
    one_line_exit_2(["train-teacher", "--run-dir", str(run_dir), *TINY], capsys, str(run_dir))
    assert _checkpoint_steps(run_dir) == [4]


def test_resume_refuses_fewer_steps_than_the_run_has_checkpointed(tmp_path, capsys):
    """train.steps below the latest committed step (a digits-only step directory; an orbax
    temporary one does not count) is refused before anything is opened or written."""
    from pipeline.teacher import config as tconfig
    from pipeline.teacher import train

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rundir.write_config(run_dir, tconfig.load_config({"train": {"steps": 200}}))
    for name in ("190", "200", "250.orbax-checkpoint-tmp-1234"):
        os.makedirs(run_dir / rundir.CHECKPOINTS / name)
    before = sorted(os.listdir(run_dir)), sorted(os.listdir(run_dir / rundir.CHECKPOINTS)), (run_dir / "config.yaml").read_bytes()
    one_line_exit_2(["train-teacher", "--run-dir", str(run_dir), "--resume", "--set", "train.steps=50"], capsys,
                    f"cannot resume {run_dir} with train.steps=50: its latest checkpoint is at step 200", ">= 200")
    assert (sorted(os.listdir(run_dir)), sorted(os.listdir(run_dir / rundir.CHECKPOINTS)),
            (run_dir / "config.yaml").read_bytes()) == before
    assert train.resume_config(str(run_dir), {"train.steps": 200}).train.steps == 200
    assert train.resume_config(str(run_dir), {"train.steps": 220}).train.steps == 220  # the tmp 250 is not committed


def _snapshot(d) -> dict:
    """{relative path: (size, mtime_ns)} of every file and folder under d."""
    out = {}
    for root, dirs, files in os.walk(d):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.stat(p)
            out[os.path.relpath(p, d)] = (st.st_size if name in files else 0, st.st_mtime_ns)
    return out


def test_sampling_a_teacher_while_it_trains_reads_without_writing(tmp_path):
    """Readers never create, clean or write anything in a run directory: `ddss sample` (and
    load_teacher, in a loop) during training read the latest committed step or say there is none
    yet, although the trainer commits a step and removes an old one at every step; the trainer is
    undisturbed."""
    from pipeline.errors import UserError

    run_dir = tmp_path / "run"
    log = open(tmp_path / "trainer.log", "w")
    trainer = subprocess.Popen(_cmd(run_dir, *TINY, "--set", "train.steps=100", "--set", "train.batch_size=8",
                                    "--set", "train.checkpoint_every=1", "--set", "train.log_every=20"),
                               cwd=ROOT, env=ENV, stdout=log, stderr=log)
    deadline = time.time() + 300
    while trainer.poll() is None and not (run_dir / "teacher.json").exists() and time.time() < deadline:
        time.sleep(0.05)

    def sample(i):
        """(the committed steps when it started, a `ddss sample` process started now)"""
        before = _checkpoint_steps(run_dir)  # orbax's tmp folders are not digits
        return before, subprocess.Popen([sys.executable, "-m", "pipeline.app.cli", "sample", "--teacher", str(run_dir),
                                         "--steps", "2", "--num-samples", "4", "--out", str(tmp_path / f"s{i}.npz")],
                                        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    started = [sample(0)]  # the first may find no checkpoint; the others read one, all while the trainer goes on
    while trainer.poll() is None and not _checkpoint_steps(run_dir):
        time.sleep(0.05)
    started += [sample(1), sample(2)]
    loads = []
    while trainer.poll() is None:
        before = _checkpoint_steps(run_dir)
        try:
            loads.append((before, tmodel.load_teacher(str(run_dir)).step))
        except UserError as e:
            loads.append((before, str(e)))
    samples = []
    for before, p in started:
        out, err = p.communicate(timeout=300)
        samples.append((before, subprocess.CompletedProcess(p.args, p.returncode, out, err)))
    assert trainer.wait(timeout=400) == 0, (tmp_path / "trainer.log").read_text()[-3000:]
    assert rundir.read_results(str(run_dir))["teacher"]["trained_steps"] == 100
    assert [r["step"] for r in read_metrics(run_dir)] == [20, 40, 60, 80, 100]
    for before, out in samples:
        assert "unreadable" not in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
        if out.returncode:
            err = out.stderr.strip()
            assert out.returncode == 2 and "\n" not in err and "no checkpoint" in err and not before, (before, err)
    assert [out.returncode for _, out in samples[1:]] == [0, 0], [o.stderr[-300:] for _, o in samples]
    failed = [(before, got) for before, got in loads if isinstance(got, str) and (before or "no checkpoint" not in got)]
    assert not failed and any(isinstance(got, int) for _, got in loads), (failed[:3], len(loads))

    # a reader leaves nothing behind: the run directory is unchanged by loading it
    snap = _snapshot(run_dir)
    teacher = tmodel.load_teacher(str(run_dir))
    assert teacher.step == 100
    assert _snapshot(run_dir) == snap


def test_two_jobs_on_one_run_directory_one_trains_the_other_is_refused(tmp_path):
    """Two `ddss train-teacher --resume --run-dir R` at once: one trains all the steps, the other
    exits 2 at once with one line naming the holder (host, pid, start time); the run's metrics
    come from one writer."""
    from pipeline.teacher import config as tconfig

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rundir.write_config(run_dir, tconfig.load_config(
        {"model": {"kwargs": {"ch": 8, "ch_mult": [1], "num_res_blocks": 1}},
         "train": {"steps": 60, "batch_size": 32, "checkpoint_every": 10, "log_every": 10},
         "sample": {"steps": 4, "per_class": 1, "fd_samples": 0}}))
    procs = [subprocess.Popen(_cmd(run_dir, "--resume"), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=400)[1] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], errs
    winner, loser = (0, 1) if procs[0].returncode == 0 else (1, 0)
    err = errs[loser].strip()
    assert "\n" not in err and "is in use by teacher training" in err, err
    assert f"pid {procs[winner].pid}," in err and "host " in err and "started " in err, err
    assert [r["step"] for r in read_metrics(run_dir)] == [10, 20, 30, 40, 50, 60]
    assert rundir.read_results(str(run_dir))["teacher"]["trained_steps"] == 60
    assert not (run_dir / rundir.LOCK).exists()  # released at the end


def test_a_new_run_refuses_a_directory_filled_while_it_waited(tmp_path, monkeypatch):
    """Two new runs racing for one --run-dir: the one that takes the lock second finds the
    directory no longer empty and is refused with one line, writing nothing."""
    from pipeline.errors import UserError
    from pipeline.teacher import train as ttrain

    run_dir = tmp_path / "run"
    assert rundir.prepare(run_dir) == str(run_dir)  # both passed prepare() on an empty directory ...
    (run_dir / "config.yaml").write_text("written by the other run\n")  # ... the other locked and wrote first
    monkeypatch.setattr(rundir, "prepare", lambda *a, **k: str(run_dir))
    tiny = {"model.kwargs.ch": 8, "model.kwargs.ch_mult": [1], "model.kwargs.num_res_blocks": 1, "train.steps": 1,
            "sample.fd_samples": 0, "sample.steps": 2, "sample.per_class": 1}
    with pytest.raises(UserError, match="is not empty"):
        ttrain.train_teacher(run_dir=run_dir, overrides=tiny)
    assert sorted(os.listdir(run_dir)) == ["config.yaml"]
    assert (run_dir / "config.yaml").read_text() == "written by the other run\n"
