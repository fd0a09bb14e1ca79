"""load_teacher: the EMA weights of the latest checkpoint and the recorded data shape and class
count, read without writing anything into the run directory."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pipeline import checkpoint, config, rundir
from pipeline.errors import UserError
from pipeline.models.build import build_model
from pipeline.teacher import model as tmodel
from pipeline.teacher import train
from pipeline.teacher.config import load_config

TINY = {"model": {"kwargs": {"ch": 8, "ch_mult": [1], "num_res_blocks": 1}}}


def _snapshot(path):
    return {os.path.relpath(os.path.join(d, f), path): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(path) for f in files} | {
            os.path.relpath(os.path.join(d, s), path): None for d, subs, _ in os.walk(path) for s in subs}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A teacher run written by hand: config, record, one checkpoint whose EMA differs from its params."""
    d = tmp_path_factory.mktemp("teacher")
    cfg = load_config(TINY)
    model = build_model(cfg.model, 10)
    state = jax.device_get(train.init_state(model, train.make_optimizer(cfg.train), (8, 8, 1), 0))
    state["ema"] = jax.tree.map(lambda p: p + 0.5, state["params"])
    state["step"] = np.int32(7)
    rundir.write_config(d, cfg)
    tmodel.write_record(d, (8, 8, 1), 10)
    with checkpoint.Checkpointer(rundir.checkpoint_dir(d)) as ck:
        ck.save(7, state)
    return str(d), state


def test_loads_the_ema_weights_and_the_record_and_writes_nothing(run_dir):
    d, state = run_dir
    before = _snapshot(d)
    t = tmodel.load_teacher(d)
    assert _snapshot(d) == before
    assert t.step == 7 and t.data_shape == (8, 8, 1) and t.num_classes == 10
    for a, b in zip(jax.tree.leaves(t.params), jax.tree.leaves(state["ema"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_run_without_the_record_learns_shape_and_classes_from_its_data(run_dir, tmp_path):
    d, state = run_dir
    old = tmp_path / "old"
    os.system(f"cp -r {d} {old}")
    os.remove(old / tmodel.RECORD)
    t = tmodel.load_teacher(str(old))
    assert t.data_shape == (8, 8, 1) and t.num_classes == 10  # the digits training split


def test_a_record_that_does_not_fit_the_checkpoint_is_one_line(run_dir, tmp_path):
    d, _ = run_dir
    other = tmp_path / "other"
    os.system(f"cp -r {d} {other}")
    tmodel.write_record(other, (8, 8, 1), 3)  # another class count: another embedding shape
    with pytest.raises(UserError, match="incompatible"):
        tmodel.load_teacher(str(other))
    with pytest.raises(UserError, match="not found"):
        tmodel.load_teacher(str(tmp_path / "missing"))


def test_eps_fn_at_w0_is_the_conditional_network_and_guidance_mixes_it(run_dir):
    t = tmodel.load_teacher(run_dir[0])
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    tt, y = jnp.full((4,), 0.6), jnp.array([0, 3, 5, 9])
    cond = t.model.apply({"params": t.params}, x, tt, y)
    null = t.model.apply({"params": t.params}, x, tt, jnp.full((4,), 10))
    np.testing.assert_allclose(t.eps_fn(y, 0.0, clip_x0=False)(x, tt), cond, atol=1e-5)
    np.testing.assert_allclose(t.eps_fn(y, 2.0, clip_x0=False)(x, tt), 3.0 * cond - 2.0 * null, atol=1e-4)
    assert config.to_dict(t.config)["model"]["kwargs"]["ch"] == 8
