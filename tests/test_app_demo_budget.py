"""The demo's budgets follow the fair protocol: every sampler and grid they name exists, settings
are chosen on seeds never reported, every row covers at least 3 test seeds, a DDSS row of the
full demo at least 2 searches, and the quick budget tries a subset of what the full one does."""
import numpy as np
import pytest

from pipeline import samplers, schedules
from pipeline.app.demo_budget import ACCELERATED, FULL, QUICK
from pipeline.evaluation import protocol


@pytest.mark.parametrize("budget", [QUICK, FULL], ids=["quick", "full"])
def test_budget_is_a_fair_protocol(budget):
    assert set(budget.samplers) <= set(samplers.names())
    assert set(budget.strides) <= set(schedules.STRIDES)
    assert all(0.0 < t <= 1.0 for t in budget.t_maxes) and 1.0 in budget.t_maxes and True in budget.clips
    protocol.check_seeds(budget.val_seeds, budget.test_seeds)  # distinct, >= 3 test seeds
    assert set(budget.samplers) & set(ACCELERATED) and set(budget.samplers) - set(ACCELERATED)
    assert set(budget.search_ks) <= set(budget.ks)  # a DDSS row starts from a grid tuned at its K


def test_quick_budget_tries_a_subset_of_the_full_one():
    for field in ("samplers", "strides", "t_maxes", "clips", "ks"):
        assert set(getattr(QUICK, field)) <= set(getattr(FULL, field)), field
    assert len(FULL.search_seeds) >= 2  # a learned sampler's number covers at least 2 search seeds
    # the full demo tries every grid users know except trailing, which is linear when K divides 1000
    assert set(schedules.STRIDES) - set(FULL.strides) == {"trailing"}
    for k in FULL.ks:
        assert 1000 % k == 0
        np.testing.assert_allclose(schedules.time_grid(k, "trailing"), schedules.time_grid(k, "linear"), rtol=1e-12)
