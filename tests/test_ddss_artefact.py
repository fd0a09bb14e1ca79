"""The searched sampler as an artefact directory: written atomically and never overwritten, read
back exactly (also from its search's run directory), refused with one line when it is not an
artefact, torn, inconsistent or non-finite, and planned only for the model it was made for."""
import json

import numpy as np
import pytest

from pipeline import schedules
from pipeline.data.gmm import gmm_preset
from pipeline.ddss.artefact import load_artefact, load_ggdm, plan, save_artefact
from pipeline.errors import UserError
from pipeline.evaluation import AnalyticModel
from pipeline.samplers import ggdm


def _params(K=3, variant="ggdm+pred+time"):
    """GGDM parameters away from their DDIM init, as a search leaves them."""
    params = ggdm.init_params(K, variant, "cosine")
    return {k: np.asarray(v) + np.float32(0.01) for k, v in params.items()}


def test_round_trip_and_never_overwritten(tmp_path):
    params = _params()
    path = save_artefact(tmp_path / "run" / "sampler", params, {"gmm": "ring2d", "schedule": "cosine"})
    art = load_artefact(path)
    assert art["meta"] == {"format": "ddss-ggdm/1", "sampler": "ggdm", "variant": "ggdm+pred+time", "K": 3,
                           "gmm": "ring2d", "schedule": "cosine"}
    assert sorted(art["params"]) == sorted(params)
    for k, v in params.items():
        np.testing.assert_array_equal(art["params"][k], v)
        assert art["params"][k].dtype == np.float32
    run_dir = load_ggdm(tmp_path / "run")  # a search's run directory finds RUN_DIR/sampler
    assert all(np.array_equal(run_dir[k], v) for k, v in params.items())
    with pytest.raises(UserError, match="already exists"):
        save_artefact(path, _params(2), {})
    assert load_artefact(path)["meta"]["K"] == 3
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["sampler"]  # no temporary left behind


def _refusal(path) -> str:
    with pytest.raises(UserError) as e:
        load_artefact(path)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_artefacts_are_one_line(tmp_path):
    (tmp_path / "junk").mkdir()
    assert "not a DDSS sampler artefact" in _refusal(tmp_path / "junk")

    torn = save_artefact(tmp_path / "torn", _params(), {})
    with open(f"{torn}/params.npz", "r+b") as f:
        f.truncate(40)
    assert "is unreadable" in _refusal(torn)

    other = save_artefact(tmp_path / "other", _params(), {})
    meta = json.loads(open(f"{other}/meta.json").read())
    with open(f"{other}/meta.json", "w") as f:
        json.dump({**meta, "K": 4}, f)
    assert "disagrees with meta.json (ggdm+pred+time, K=4)" in _refusal(other)
    with open(f"{other}/meta.json", "w") as f:
        json.dump({**meta, "format": "something/2"}, f)
    assert "has format 'something/2'" in _refusal(other)

    params = _params()
    params["sigma"][1] = np.nan
    assert "sigma holds non-finite" in _refusal(save_artefact(tmp_path / "nan", params, {}))


def test_plan_checks_the_model_and_carries_the_guidance(tmp_path):
    params = _params(4)
    path = save_artefact(tmp_path / "a", params, {"schedule": "cosine", "data_shape": [2], "guidance": 0.5})
    p = plan(path, AnalyticModel(gmm_preset("ring2d"), schedules.get("cosine")))
    assert p.steps == 4 and p.w == 0.5
    np.testing.assert_array_equal(p.kwargs["params"]["mu_x"], params["mu_x"])
    with pytest.raises(UserError, match="made for a model with data shape 2, but the teacher has 16"):
        plan(path, AnalyticModel(gmm_preset("mix16d"), schedules.get("cosine")))
    with pytest.raises(UserError, match="made for a model with schedule cosine, but the teacher has linear"):
        plan(path, AnalyticModel(gmm_preset("ring2d"), schedules.get("linear")))
