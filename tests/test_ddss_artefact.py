"""The searched sampler as an artefact directory: written atomically and never overwritten, read
back exactly (also from its search's run directory), refused with one line when it is not an
artefact, torn, inconsistent or non-finite, and planned only for the model it was made for."""
import hashlib
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
    digest = hashlib.sha256(open(f"{path}/params.npz", "rb").read()).hexdigest()
    assert art["meta"] == {"format": "ddss-ggdm/1", "sampler": "ggdm", "variant": "ggdm+pred+time", "K": 3,
                           "gmm": "ring2d", "schedule": "cosine", "params_sha256": digest}
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


def test_a_flipped_byte_in_params_is_a_checksum_mismatch(tmp_path):
    """A flipped byte of params.npz, or a valid params.npz of other values put in its place, is
    refused by meta.json's params_sha256; an artefact written without one loads as before."""
    params = _params()
    path = save_artefact(tmp_path / "a", params, {})
    data = bytearray(open(f"{path}/params.npz", "rb").read())
    data[len(data) // 2] ^= 0x01
    with open(f"{path}/params.npz", "wb") as f:
        f.write(data)
    err = _refusal(path)
    assert "checksum mismatch" in err and "corrupt" in err and "params.npz" in err
    # a re-saved npz of other values, valid for np.load, is caught as well
    other = {k: v + np.float32(1.0) for k, v in params.items()}
    with open(f"{path}/params.npz", "wb") as f:
        np.savez(f, **other)
    assert "checksum mismatch" in _refusal(path)
    # an artefact written before params_sha256 existed loads as before
    meta = json.loads(open(f"{path}/meta.json").read())
    del meta["params_sha256"]
    with open(f"{path}/meta.json", "w") as f:
        json.dump(meta, f)
    np.testing.assert_array_equal(load_artefact(path)["params"]["sigma"], other["sigma"])
    assert load_artefact(save_artefact(tmp_path / "b", params, {}))["meta"]["params_sha256"]


def _rewrite(path, params_bytes=None, **meta_changes):
    """Replace an artefact's params.npz bytes (its checksum recomputed, as a writer would) and/or
    meta.json keys."""
    meta = json.loads(open(f"{path}/meta.json").read())
    if params_bytes is not None:
        with open(f"{path}/params.npz", "wb") as f:
            f.write(params_bytes)
        meta["params_sha256"] = hashlib.sha256(params_bytes).hexdigest()
    with open(f"{path}/meta.json", "w") as f:
        json.dump({**meta, **meta_changes}, f)


def test_params_that_are_no_npz_and_meta_of_wrong_types_are_one_line(tmp_path):
    import io

    buf = io.BytesIO()
    np.save(buf, _params()["sigma"])
    for name, data, expect in (("npy", buf.getvalue(), "not a readable params.npz (a .npy array"),
                               ("empty", b"", "not a readable params.npz (empty file")):
        path = save_artefact(tmp_path / name, _params(), {})
        _rewrite(path, data)
        err = _refusal(path)
        assert err.startswith(f"sampler artefact {path} is unreadable: ") and expect in err, err
    for key, value, expect in (("guidance", "high", "'guidance' must be a finite number, got 'high'"),
                               ("guidance", None, None), ("guidance", 2, None),
                               ("data_shape", "8x8", "'data_shape' must be a list of positive integers"),
                               ("data_shape", [8, 0, 1], "positive integers, got [8, 0, 1]"),
                               ("schedule", 3, "'schedule' must be a schedule name"),
                               ("K", "3", "'K' must be an integer >= 1, got '3'"),
                               ("variant", ["ggdm"], "'variant' must be a string")):
        path = save_artefact(tmp_path / f"{key}-{value!r}", _params(), {"schedule": "cosine", "guidance": 0.5})
        _rewrite(path, **{key: value})
        if expect is None:
            assert load_artefact(path)["meta"][key] == value
        else:
            assert expect in _refusal(path)
    deep = save_artefact(tmp_path / "deep", _params(), {})
    with open(f"{deep}/meta.json", "w") as f:
        f.write("[" * 100_000)
    assert "is unreadable" in _refusal(deep)


def test_t_max_travels_in_the_params_and_is_checked(tmp_path):
    """A +TIME artefact started below t = 1 keeps its t_max (a scalar) in params.npz, so that
    load_ggdm's params sample on the same times; meta.json records stride and t_max."""
    params = {k: np.asarray(v) for k, v in ggdm.init_params(3, "ggdm+pred+time", "cosine", "karras", t_max=0.9).items()}
    path = save_artefact(tmp_path / "k", params, {"schedule": "cosine", "stride": "karras", "t_max": 0.9})
    art = load_artefact(path)
    assert art["params"]["t_max"].shape == () and float(art["params"]["t_max"]) == np.float32(0.9)
    assert art["meta"]["stride"] == "karras" and art["meta"]["t_max"] == 0.9
    np.testing.assert_allclose(np.asarray(ggdm.model_times(art["params"])),
                               schedules.time_grid(3, "karras", schedules.get("cosine"), 0.9)[:-1], rtol=1e-6, atol=1e-7)
    for name, value, expect in (("far", np.float32(1.5), "t_max is 1.5, expected a time in (0, 1]"),
                                ("vector", np.full(3, 0.9, np.float32), "t_max has shape (3,), expected []"),
                                ("inf", np.float32(np.inf), "t_max holds non-finite")):
        assert expect in _refusal(save_artefact(tmp_path / name, {**params, "t_max": value}, {}))
    fixed = {k: np.asarray(v) for k, v in ggdm.init_params(3, "ggdm+pred", "cosine").items()}
    with pytest.raises(UserError, match="not GGDM parameters"):  # fixed times already say where they start
        save_artefact(tmp_path / "fixed", {**fixed, "t_max": np.float32(0.9)}, {})
    for key, value in (("t_max", 0.0), ("t_max", "0.9"), ("stride", 7)):
        bad = save_artefact(tmp_path / f"{key}-{value!r}", params, {})
        _rewrite(bad, **{key: value})
        assert f"meta.json {key!r} must be" in _refusal(bad)
