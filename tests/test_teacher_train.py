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

from helpers import one_line_exit_2
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
