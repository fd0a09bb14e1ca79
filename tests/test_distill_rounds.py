"""Round ordering (pipeline/distill/rounds.py): which rounds make an N-step student, and a
round refused, in one line, before its predecessor has finished."""
import os

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
    rc = cli.main(["distill", "--teacher", tiny_teacher_dir, "--dir", str(stage1_root), "--round", "2",
                   "--set", "distill.start_steps=4"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0 and "round 2 needs round 1 finished first" in err
    assert not os.path.exists(rounds.round_dir(str(stage1_root), 2))
