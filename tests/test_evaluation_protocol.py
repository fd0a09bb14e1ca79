"""The fair-comparison protocol: summaries against NumPy, the 2-std rule, tuning on validation
seeds only (a coordinate search whose answer is known), seed checks."""
import math

import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.evaluation import protocol
from pipeline.evaluation.protocol import Setting, Stat


def test_summary_is_mean_and_sample_std():
    v = [3.0, 5.5, 4.25, 7.0]
    s = protocol.summary(v)
    assert s.n == 4 and s.mean == pytest.approx(np.mean(v), rel=1e-15)
    assert s.std == pytest.approx(math.sqrt(sum((x - np.mean(v)) ** 2 for x in v) / 3), rel=1e-12)
    assert protocol.summary([2.0]) == Stat(2.0, 0.0, 1)
    assert math.isinf(protocol.summary([1.0, float("nan")]).mean)  # a diverged run is never the best
    with pytest.raises(UserError):
        protocol.summary([])


def test_better_needs_a_gap_above_two_std_of_the_difference():
    a, b = Stat(10.0, 1.0, 3), Stat(13.0, 1.0, 3)  # gap 3 > 2 sqrt(1 + 1) = 2.83
    assert protocol.better(a, b) and not protocol.better(b, a)
    assert protocol.verdict(a, b) == "better" and protocol.verdict(b, a) == "worse"
    c = Stat(12.5, 1.0, 3)  # gap 2.5 < 2.83
    assert protocol.verdict(a, c) == "tie" and protocol.verdict(c, a) == "tie"
    assert protocol.better(a, Stat(math.inf, math.inf, 3)) and not protocol.better(Stat(math.inf, math.inf, 3), a)
    assert protocol.ratio(a, b) == pytest.approx(1.3)


def test_tune_is_a_coordinate_search_on_the_validation_seeds_only():
    """score = stride cost + t_max cost + clip cost (+ a seed-dependent offset that averages out):
    the search must find the per-coordinate minimum, and see only the validation seeds."""
    cost = {"linear": 3.0, "karras": 1.0, "logsnr": 2.0}
    seen = []

    def score(s: Setting, seed: int) -> float:
        seen.append(seed)
        return cost[s.stride] + abs(s.t_max - 0.99) * 10 + (0.0 if not s.clip_x0 else 0.5) + (seed - 10.5) * 0.1

    tuned = protocol.tune(score, ["linear", "karras", "logsnr"], seeds=[10, 11], t_maxes=[1.0, 0.99, 0.97])
    assert tuned.setting == Setting("karras", 0.99, False)
    assert set(seen) == {10, 11}
    # 3 strides + 2 new t_max + 1 new clip, each on 2 seeds
    assert len(tuned.tried) == 6 and len(seen) == 12
    assert tuned.score.mean == pytest.approx(1.0)


def test_tune_keeps_the_earlier_candidate_on_a_tie():
    tuned = protocol.tune(lambda s, seed: 1.0, ["quadratic", "linear"], seeds=[0], t_maxes=[1.0, 0.97])
    assert tuned.setting == Setting("quadratic", 1.0, True)


def test_seeds_must_be_distinct_and_enough():
    protocol.check_seeds([100, 101], [0, 1, 2])
    for val, test, needle in [([], [0, 1, 2], "validation seed"), ([5], [0, 1], "at least 3 test seeds"),
                              ([1], [0, 1, 2], "distinct")]:
        with pytest.raises(UserError, match=needle):
            protocol.check_seeds(val, test)


def test_tune_all_batches_each_stage_and_agrees_with_tune_item_by_item():
    costs = {"a": {"linear": 1.0, "karras": 2.0}, "b": {"linear": 2.0, "karras": 0.5}}

    def one(key, s, seed):
        return costs[key][s.stride] + (0.0 if s.t_max == 0.97 else 0.3) * (1 if key == "a" else -1) + 0.01 * seed

    batches = []

    def batch(todo):
        batches.append(len(todo))
        return [one(*item) for item in todo]

    both = protocol.tune_all(batch, {"a": Setting(), "b": Setting()}, ["linear", "karras"], seeds=[0, 1],
                             t_maxes=[1.0, 0.97], clips=(True,))
    assert batches == [8, 4]  # 2 items x 2 strides x 2 seeds, then 1 new t_max each; no new clip candidates
    for key in ("a", "b"):
        alone = protocol.tune(lambda s, seed: one(key, s, seed), ["linear", "karras"], [0, 1], [1.0, 0.97], (True,))
        assert both[key] == alone
    assert both["a"].setting == Setting("linear", 0.97) and both["b"].setting == Setting("karras", 1.0)
