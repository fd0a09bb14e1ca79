"""`ddss evaluate --seeds/--tune` (pipeline.app.protocol_job): settings chosen on validation seeds
only, the chosen one the argmin of what was recorded for them, numbers on the test seeds as mean
± std recomputed here from each seed's own row; bad protocol input is one line."""
import json
import os

import numpy as np
import pytest

from cli_fixtures import fails
from pipeline import config
from pipeline.app.evaluate_job import EvaluateConfig
from pipeline.app.protocol_job import check_protocol, run_protocol
from pipeline.errors import UserError


@pytest.mark.ray
def test_tuned_protocol_reports_test_seeds_with_the_setting_chosen_on_validation(teachers, local_ray, tmp_path):
    cfg = config.load(EvaluateConfig, {
        "teacher": teachers["good"], "sampler": "ddim", "steps": 2, "num_samples": 24, "batch_size": 12, "workers": 1,
        "results_dir": str(tmp_path), "tune": True, "val_seeds": [7], "val_samples": 12, "seeds": [0, 1, 2],
        "tune_strides": ["linear", "karras"], "tune_t_max": [1.0, 0.9]})
    summary = run_protocol(cfg, progress=False, log=lambda m: None)
    evals = json.loads((tmp_path / "results.json").read_text())["evaluations"].values()
    val = [r for r in evals if r["seed"] == 7]
    test = sorted((r for r in evals if r["seed"] in (0, 1, 2)), key=lambda r: r["seed"])
    assert {r["num_samples"] for r in val} == {12} and all(r["seed"] not in (0, 1, 2) for r in val)
    # linear and karras at t_max 1, then the better one at 0.9, then it unclipped: 4 settings
    assert len(val) == 4 and len(test) == 3
    label = lambda r: r["stride"] + ("" if r["t_max"] == 1.0 else f", t_max {r['t_max']:g}") + ("" if r["clip_x0"] else ", unclipped")
    best = min(val, key=lambda r: r["fd"])
    assert summary["label"] == label(best) and {label(r) for r in test} == {label(best)}
    fds = [r["fd"] for r in test]
    assert summary["fd_per_seed"] == fds
    assert summary["fd"]["mean"] == pytest.approx(np.mean(fds)) and summary["fd"]["std"] == pytest.approx(np.std(fds, ddof=1))
    assert summary["kid"]["mean"] == pytest.approx(np.mean([r["kid"] for r in test]))
    stored = json.loads((tmp_path / "results.json").read_text())["protocol"]
    assert list(stored.values()) == [json.loads(json.dumps(summary))]


def test_protocol_input_is_checked(teachers, tmp_path, capsys):
    base = {"teacher": teachers["good"], "steps": 2}
    with pytest.raises(UserError, match="at least 3"):
        check_protocol(config.load(EvaluateConfig, {**base, "seeds": [0, 1]}))
    with pytest.raises(UserError, match="distinct"):
        check_protocol(config.load(EvaluateConfig, {**base, "tune": True, "val_seeds": [1], "seeds": [0, 1, 2]}))
    with pytest.raises(UserError, match="brings its own times"):
        check_protocol(config.load(EvaluateConfig, {**base, "sampler": "ggdm:/x", "tune": True}))
    assert check_protocol(config.load(EvaluateConfig, {**base, "tune": True})) == (0, 1, 2)
    before = sorted(os.listdir(teachers["good"]))
    fails(["evaluate", "--teacher", teachers["good"], "--steps", 2, "--seeds", 0, 0, 1], capsys, "distinct")
    fails(["evaluate", "--teacher", teachers["good"], "--steps", 2, "--reference", "teacher", "--reference-steps", 0],
          capsys, "reference_steps")
    fails(["evaluate", "--teacher", teachers["good"], "--steps", 2, "--set", "tune_strides=[karras, bogus]"], capsys,
          "tune_strides")
    assert sorted(os.listdir(teachers["good"])) == before
