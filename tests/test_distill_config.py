"""The distillation config (pipeline/distill/config.py): the rounds' step counts and the
one-line errors of a bad config."""
import numpy as np
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


@pytest.mark.parametrize("stride", ["karras", "leading", "linspace", "trailing"])
def test_grids_that_do_not_nest_under_halving_are_refused(stride, tmp_path):
    """A round's grid must hold the next round's (steps halve): karras, leading and linspace do
    not nest; trailing would, but caps the steps at 1000."""
    from pipeline import schedules

    if stride != "trailing":  # the reason, checked: the K/2 grid is not every other time of the K grid
        k8, k4 = schedules.time_grid(8, stride), schedules.time_grid(4, stride)
        assert not np.allclose(k8[::2], k4)
    with pytest.raises(UserError, match="nest under halving"):
        dconfig.load({"teacher": "t", "dir": str(tmp_path), "stride": stride})
