"""bench/fair.py --smoke end to end (one mixture, K = 3, two samplers, one search): each tuned
setting is the argmin of the validation scores the run recorded, reported rows cover the test
seeds only, and the goal line compares DDSS with the best tuned sampler by the 2-std rule."""
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    import fair

    out = tmp_path_factory.mktemp("fair")
    assert fair.main(["--smoke", "--out", str(out)]) == 0
    return out


def test_tuned_settings_are_the_validation_argmin_and_rows_the_test_seeds(smoke):
    import fair

    from pipeline import schedules
    from pipeline.evaluation import protocol

    res = json.loads((smoke / "fair.json").read_text())
    args = res["meta"]["args"]
    scores = json.loads((smoke / "scores.json").read_text())
    rows = res["ring2d"]["fd_exact"]["rows"]

    def recorded(method, setting, seeds, n):
        grid = schedules.time_grid(3, setting["stride"], schedules.get("cosine"), t_max=setting["t_max"])
        prefix = f"ring2d|{method}|K=3|grid={fair.grid_key(grid)}|clip=True|"
        return [scores[f"{prefix}seed={s}|n={n}"]["fd_exact"] for s in seeds]

    for row in (r for r in rows if not r["method"].startswith("DDSS")):
        for t in row["tried"]:  # each validation mean is that of the recorded validation-seed scores
            assert t["mean"] == pytest.approx(np.mean(recorded(row["method"], t["setting"], args["val_seeds"],
                                                               args["val_samples"])), rel=1e-12)
        assert row["setting"] == min(row["tried"], key=lambda t: t["mean"])["setting"]
        test = recorded(row["method"], row["setting"], args["test_seeds"], args["test_samples"])
        assert row["test"]["n"] == 3 and row["test"]["mean"] == pytest.approx(np.mean(test), rel=1e-12)
        assert row["test"]["std"] == pytest.approx(np.std(test, ddof=1), rel=1e-9)
    (goal,) = res["ring2d"]["fd_exact"]["goals"].values()
    ddss = next(r for r in rows if r["method"].startswith("DDSS"))
    best = min((r for r in rows if not r["method"].startswith("DDSS")), key=lambda r: r["test"]["mean"])
    a, b = protocol.Stat(**ddss["test"]), protocol.Stat(**best["test"])
    assert goal["verdict"] == protocol.verdict(a, b) and goal["ratio"] == pytest.approx(b.mean / a.mean)
    start = min((r for r in rows if not r["method"].startswith("DDSS")), key=lambda r: r["val"]["mean"])
    assert ddss["setting"] == start["setting"]  # DDSS starts from the sampler and grid chosen on validation
    (run,) = (smoke / "ddss").iterdir()
    meta = json.loads((run / "sampler" / "meta.json").read_text())
    assert meta["init"] == start["method"] and meta["stride"] == start["setting"]["stride"]
    assert meta["t_max"] == start["setting"]["t_max"]
    assert (smoke / "fair.png").read_bytes()[:4] == b"\x89PNG"
