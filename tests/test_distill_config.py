"""The distillation config (pipeline/distill/config.py): the rounds' step counts and the
one-line errors of a bad config."""
import pytest

from pipeline.distill import config as dconfig
from pipeline.errors import UserError


def test_round_steps_and_config_errors(tmp_path):
    cfg = dconfig.load({"teacher": "t", "dir": str(tmp_path), "start_steps": 256})
    assert cfg.num_rounds == 9 and cfg.steps_of(0) == 256 and cfg.steps_of(8) == 1
    with pytest.raises(UserError, match="start_steps"):
        dconfig.load({"start_steps": 48})
    with pytest.raises(UserError, match="w_min"):
        dconfig.load({"w_min": 3.0, "w_max": 1.0})
    with pytest.raises(UserError, match="distill.teacher"):
        dconfig.load_job({})
