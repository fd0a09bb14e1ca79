"""Importing a teacher trained elsewhere (pipeline/teacher/importer.py): the weights read from a Flax
msgpack file or any usual orbax layout, checked entry by entry against the module's init shapes
(one line naming the first misfit), cast to its dtypes, and written as a run directory that
load_teacher reads; a data set, when given, must fit the model."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import serialization

from cli_fixtures import snapshot
from pipeline import checkpoint, rundir
from pipeline.errors import UserError
from pipeline.teacher import importer
from pipeline.teacher import model as tmodel

EXPECTED = {"Dense_0": {"kernel": jax.ShapeDtypeStruct((3, 4), jnp.float32), "bias": jax.ShapeDtypeStruct((4,), jnp.float32)},
            "Embed_0": {"embedding": jax.ShapeDtypeStruct((11, 4), jnp.float32)}}


def _params(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(dtype), EXPECTED)


def _orbax(path, tree, standard=True):
    """Save tree as an orbax PyTree checkpoint at path, as a user would (and wait for it)."""
    ck = ocp.StandardCheckpointer() if standard else ocp.PyTreeCheckpointer()
    ck.save(str(path), tree)
    getattr(ck, "wait_until_finished", lambda: None)()  # StandardCheckpointer saves asynchronously
    ck.close()


def _same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert jax.tree.structure(a) == jax.tree.structure(b)


def test_data_shape_flag():
    assert importer.parse_shape("32,32,3") == (32, 32, 3)
    assert importer.parse_shape(" 8, 8 ,1") == (8, 8, 1)
    for bad in ("", "32x32x3", "0,4", "-1,4", "1,2,3,4,5", "a,b", "99999,1"):
        with pytest.raises(UserError, match="--data-shape must be"):
            importer.parse_shape(bad)


def test_params_from_every_layout_read_the_same(tmp_path):
    p = _params()
    _orbax(tmp_path / "std", p)  # the params themselves
    _orbax(tmp_path / "vars", {"params": p, "batch_stats": {"x": np.ones(2)}}, standard=False)
    with checkpoint.Checkpointer(tmp_path / "mgr", async_save=False) as ck:  # a CheckpointManager root: newest step
        ck.save(1, {"params": _params(1), "step": np.int32(1)})
        ck.save(2, {"params": p, "opt": {"mu": np.zeros(3)}, "step": np.int32(2)})
    (tmp_path / "p.msgpack").write_bytes(serialization.to_bytes(p))
    (tmp_path / "v.msgpack").write_bytes(serialization.to_bytes({"params": p}))
    for name in ("std", "vars", "mgr", "mgr/2", "p.msgpack", "v.msgpack"):
        got = importer.read_params(tmp_path / name, EXPECTED, "M")
        _same(got, p)
        assert all(a.dtype == np.float32 for a in jax.tree.leaves(got))


def test_other_float_dtypes_are_cast_to_the_module_dtypes(tmp_path):
    p = _params(dtype=jnp.bfloat16)
    (tmp_path / "bf16.msgpack").write_bytes(serialization.to_bytes(p))
    _orbax(tmp_path / "bf16", p)
    for name in ("bf16.msgpack", "bf16"):
        got = importer.read_params(tmp_path / name, EXPECTED, "M")
        _same(got, jax.tree.map(lambda a: np.asarray(a, np.float32), p))


@pytest.mark.parametrize("change, needle", [
    (lambda p: {**p, "Dense_0": {**p["Dense_0"], "kernel": np.zeros((3, 5), np.float32)}},
     "'Dense_0/kernel' has shape (3, 5), the module expects (3, 4)"),
    (lambda p: {"Dense_0": p["Dense_0"]}, "it lacks 'Embed_0/embedding' (shape (11, 4))"),
    (lambda p: {**p, "Extra": {"w": np.zeros(2, np.float32)}}, "it has 'Extra/w', which the module does not"),
    (lambda p: {**p, "Embed_0": {"embedding": np.zeros((11, 4), np.int32)}}, "'Embed_0/embedding' has dtype int32"),
])
def test_a_misfit_names_its_first_entry_in_one_line(tmp_path, change, needle):
    bad = change(_params())
    (tmp_path / "bad.msgpack").write_bytes(serialization.to_bytes(bad))
    _orbax(tmp_path / "bad", bad)
    for name in ("bad.msgpack", "bad"):
        with pytest.raises(UserError) as e:
            importer.read_params(tmp_path / name, EXPECTED, "pkg.mod:M")
        assert needle in str(e.value) and "does not fit pkg.mod:M" in str(e.value) and "\n" not in str(e.value)


def test_unreadable_or_non_finite_params_are_one_line(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"\x00not msgpack" * 10)
    (tmp_path / "empty").mkdir()
    p = _params()
    p["Dense_0"]["bias"][1] = np.nan
    (tmp_path / "nan.msgpack").write_bytes(serialization.to_bytes(p))
    (tmp_path / "list.msgpack").write_bytes(serialization.msgpack_serialize([1, 2]))
    for name, needle in (("junk.bin", "neither an orbax checkpoint directory nor a Flax msgpack file"),
                         ("empty", "is not an orbax checkpoint directory"), ("missing", "no such file or directory"),
                         ("nan.msgpack", "'Dense_0/bias' holds non-finite values"),
                         ("list.msgpack", "holds a list, not a tree of parameters")):
        with pytest.raises(UserError, match=needle) as e:
            importer.read_params(tmp_path / name, EXPECTED, "M")
        assert "\n" not in str(e.value)


TINY = {"ch": 8, "ch_mult": [1], "num_res_blocks": 1}


@pytest.fixture(scope="module")
def unet_params(tmp_path_factory):
    """A randomly initialised tiny U-Net's params (10 classes, 8x8x1) as a Flax msgpack file."""
    from helpers import perturb
    from pipeline.models.unet import UNet

    model = UNet(ch=8, ch_mult=(1,), num_res_blocks=1, num_classes=10)
    with jax.threefry_partitionable(False):  # jitted: XLA:CPU compiles one program, not one per op
        params = jax.jit(lambda: tmodel.init_params(model, (8, 8, 1), jax.random.key(3)))()
    params = perturb(jax.device_get(params), 0)
    path = tmp_path_factory.mktemp("unet") / "unet.msgpack"
    path.write_bytes(serialization.to_bytes(params))
    return path, params


def test_import_writes_a_run_directory_load_teacher_reads(unet_params, tmp_path):
    path, params = unet_params
    run_dir, out = importer.import_teacher("pipeline.models.unet:UNet", path, schedule="linear", data_shape=(8, 8, 1),
                                           kwargs=TINY, overrides={"sample.guidance": 1.5}, run_dir=tmp_path / "t")
    assert out["num_classes"] == 10 and out["data_shape"] == [8, 8, 1] and out["data"] == "none"  # UNet's default classes
    assert sorted(os.listdir(run_dir)) == ["checkpoints", "config.yaml", "teacher.json"]
    t = tmodel.load_teacher(run_dir)
    assert (t.schedule.name, t.data_shape, t.num_classes, t.step, t.default_w) == ("linear", (8, 8, 1), 10, 0, 1.5)
    _same(t.params, params)
    steps = os.listdir(rundir.checkpoint_dir(run_dir))
    assert steps == ["0"] and os.path.isfile(os.path.join(rundir.checkpoint_dir(run_dir), "0", checkpoint.CHECKSUM))


def test_a_data_set_gives_the_shape_and_must_fit(unet_params, npz_files, tmp_path):
    path, _ = unet_params
    train, test = npz_files  # 8x8x1 digits, labels 0..9
    data = {"data.name": "npz", "data.path": str(train), "data.test_path": str(test)}
    run_dir, out = importer.import_teacher("pipeline.models.unet:UNet", path, schedule="cosine", kwargs=TINY,
                                           overrides=data, run_dir=tmp_path / "t")
    assert out["data_shape"] == [8, 8, 1] and out["data"] == "npz"
    before = snapshot(tmp_path)
    for kw, needle in ((dict(data_shape=(16, 16, 1)), "is not the data set's image shape 8,8,1"),
                       (dict(num_classes=5), "labels up to 9, but the model has 5 classes"),
                       (dict(overrides={"model.kwargs": {}}), "--set model.kwargs: give the model with --module")):
        kw = {"overrides": data, **kw}
        with pytest.raises(UserError, match=needle):
            importer.import_teacher("pipeline.models.unet:UNet", path, schedule="cosine", kwargs=TINY,
                                    run_dir=tmp_path / "u", **kw)
    with pytest.raises(UserError, match="--data-shape H,W,C is needed"):
        importer.import_teacher("pipeline.models.unet:UNet", path, schedule="cosine", kwargs=TINY, run_dir=tmp_path / "u")
    assert snapshot(tmp_path) == before and not (tmp_path / "u").exists()
