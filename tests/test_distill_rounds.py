"""Round ordering (pipeline/distill/rounds.py): which rounds make an N-step student, and a
round refused, in one line, before its predecessor has finished."""
import os
import shutil

import pytest

from pipeline.app import cli
from pipeline.distill import config as dconfig
from pipeline.distill import rounds
from pipeline.errors import UserError


def test_rounds_until_and_check_round_errors(tmp_path):
    cfg = dconfig.load({"teacher": "t", "dir": str(tmp_path), "start_steps": 256})
    assert list(rounds.rounds_until(cfg, 4)) == list(range(7))
    assert list(rounds.rounds_until(cfg, 256)) == [0]
    for bad in (3, 0, 512):
        with pytest.raises(UserError, match="--until"):
            rounds.rounds_until(cfg, bad)
    with pytest.raises(UserError, match="round 9 does not exist"):
        rounds.check_round(cfg, str(tmp_path), 9)


def test_round_before_its_predecessor_fails_with_one_line(tiny_teacher_dir, stage1_root, capsys):
    rc = cli.main(["distill", "--teacher", tiny_teacher_dir, "--dir", str(stage1_root), "--round", "2", *SAME])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0 and "round 2 needs round 1 finished first" in err
    assert not os.path.exists(rounds.round_dir(str(stage1_root), 2))


# distill_fixtures.distill_cfg as --set items (the rest: configs/distill.yaml, its defaults)
SAME = ["--set", "distill.start_steps=4", "--set", "distill.stage1={train_steps: 80, lr: 0.001, batch: 32}",
        "--set", "distill.rounds={train_steps: 10, lr: 0.001, batch: 16}", "--set", "distill.checkpoint_every=5",
        "--set", "distill.log_every=5"]


def _tree(root) -> dict:
    return {os.path.join(b, f): os.path.getmtime(os.path.join(b, f)) for b, _, fs in os.walk(root) for f in fs}


def test_a_chain_refuses_a_config_other_than_its_rounds(tiny_teacher_dir, stage1_root, tmp_path, capsys):
    root = str(shutil.copytree(stage1_root, tmp_path / "moved"))  # round 0 finished; `dir` may differ
    before = _tree(root)
    base = ["distill", "--teacher", tiny_teacher_dir, "--dir", root]
    for argv, key in [
        ([*base, "--until", "1", *SAME, "--set", "distill.seed=1"], "'seed' (0 in the run, 1 given)"),
        ([*base, "--until", "1", *SAME, "--set", "distill.rounds.lr=0.01"], "'rounds.lr'"),
        ([*base, "--round", "1", *SAME, "--set", "distill.w_max=2.0"], "'w_max'"),
        ([*base, "--round", "0", *SAME, "--set", "distill.seed=1"], "'seed'"),  # finished: not reported as done
        ([*base, "--until", "4", "--set", "distill.seed=1"], "'checkpoint_every'"),  # the issue's: start_steps 256
    ]:
        rc = cli.main(argv)
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "\n" not in err, err
        assert f"cannot resume the rounds in {root} with a different {key}" in err, err
        assert "share one config" in err and "--dir for a new distillation" in err, err
        assert _tree(root) == before and not os.path.exists(rounds.round_dir(root, 1))
