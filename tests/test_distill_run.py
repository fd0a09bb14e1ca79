"""Running the rounds (pipeline/distill/run.py): run_until starts at the first unfinished round."""
from pipeline.distill.run import run_until


def test_until_resumes_at_the_first_unfinished_round(until_2):
    cfg, _, done = until_2  # run_until(cfg, 2) on a root where round 0 had finished
    assert [r["round"] for r in done] == [1]  # round 0 was finished: not run again
    assert run_until(cfg, 2, log=lambda m: None) == []


def test_two_jobs_on_one_round_one_runs_it_the_other_is_refused(tiny_teacher_dir, tmp_path):
    """Two `ddss distill --round 0 --dir D` at once: one runs the round, the other exits 2 at once
    with one line naming the holder (host, pid, start time); the round's metrics come from one writer."""
    import os
    import subprocess
    import sys

    from helpers import read_metrics
    from pipeline.distill import rounds

    root = str(tmp_path / "distill")
    cmd = [sys.executable, "-m", "pipeline.app.cli", "distill", "--teacher", tiny_teacher_dir, "--round", "0",
           "--dir", root, "--set", "distill.start_steps=4", "--set", "distill.stage1.train_steps=30",
           "--set", "distill.stage1.batch=16", "--set", "distill.checkpoint_every=5", "--set", "distill.log_every=5"]
    cwd = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errs = [p.communicate(timeout=400)[1] for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 2], errs
    winner, loser = (0, 1) if procs[0].returncode == 0 else (1, 0)
    err = errs[loser].strip()
    assert "\n" not in err and "is in use by distillation round 0" in err, err
    assert f"pid {procs[winner].pid}," in err and "host " in err and "started " in err, err
    d = rounds.round_dir(root, 0)
    assert [r["step"] for r in read_metrics(d)] == [5, 10, 15, 20, 25, 30]
    assert rounds.is_finished(root, 0)
    assert sorted(n for n in os.listdir(root) if n.startswith(".")) == []  # the lock was released
