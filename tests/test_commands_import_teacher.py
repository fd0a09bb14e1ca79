"""`ddss import-teacher`: a randomly initialised U-Net saved by orbax (or as a Flax msgpack file) becomes
a teacher run directory that `ddss sample` samples from exactly as samplers.sample does with the
same params; weights that do not fit the module, and a run directory that is not empty, are one line
and exit 2 with nothing written; a teacher imported without data samples, but evaluate, search and
distill refuse it with one line before any work."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import serialization

from cli_fixtures import fails, snapshot
from pipeline import samplers, schedules
from pipeline.app import cli
from pipeline.evaluation.spec import sample_inputs
from pipeline.models import denoiser
from pipeline.models.unet import UNet
from pipeline.teacher import model as tmodel

KWARGS = "{ch: 8, ch_mult: [1], num_res_blocks: 1}"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(the params, an orbax directory and a msgpack file of them): a tiny U-Net of 10 classes on
    8x8x1 images, randomly initialised and perturbed (its zero-initialised output layer would
    make every sample the same)."""
    from helpers import perturb

    model = UNet(ch=8, ch_mult=(1,), num_res_blocks=1, num_classes=10)
    with jax.threefry_partitionable(False):  # jitted: one XLA program, not one per op
        params = jax.jit(lambda: tmodel.init_params(model, (8, 8, 1), jax.random.key(5)))()
    params = perturb(jax.device_get(params), 1)
    where = tmp_path_factory.mktemp("weights")
    ck = ocp.StandardCheckpointer()
    ck.save(str(where / "orbax"), params)
    ck.wait_until_finished()
    (where / "unet.msgpack").write_bytes(serialization.to_bytes(params))
    return params, where / "orbax", where / "unet.msgpack"


def _import(params_path, run_dir, *extra):
    argv = ["import-teacher", "--module", "pipeline.models.unet:UNet", "--params", params_path, "--schedule", "cosine",
            "--data-shape", "8,8,1", "--kwargs", KWARGS, "--run-dir", run_dir, *extra]
    return cli.main([str(a) for a in argv])


def _direct_ddim(params, n=4, steps=2):
    """`ddss sample`'s samples (seed 0, quadratic stride, the teacher's w = 0) computed here with
    samplers.sample from the params themselves."""
    model = UNet(ch=8, ch_mult=(1,), num_res_blocks=1, num_classes=10)
    sched = schedules.get("cosine")
    x_T, keys, y = sample_inputs(jax.random.key(0), jnp.arange(n, dtype=jnp.int32), (8, 8, 1), 10)
    apply = lambda v, x, t, y, w=None: model.apply(v, x, t, y, w)
    eps_fn = denoiser.clip_x0_eps_fn(denoiser.conditional_eps_fn(apply, {"params": params}, y), sched)
    x0 = samplers.sample("ddim", eps_fn, sched, x_T, steps, key=keys, stride="quadratic")
    return np.clip(np.asarray(x0), -1.0, 1.0)


def test_an_orbax_or_msgpack_unet_imports_and_samples_as_samplers_do(saved, tmp_path, capsys):
    params, orbax_dir, msgpack = saved
    for name, path in (("orbax", orbax_dir), ("msgpack", msgpack)):
        run = tmp_path / f"teacher-{name}"
        assert _import(path, run) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["run_dir"] == str(run) and out["num_classes"] == 10 and out["data_shape"] == [8, 8, 1]
        with open(run / "teacher.json") as f:
            assert json.load(f) == {"data_shape": [8, 8, 1], "num_classes": 10}
        teacher = tmodel.load_teacher(run)  # the same weights either way: the same samples
        for a, b in zip(jax.tree.leaves(teacher.params), jax.tree.leaves(params)):
            np.testing.assert_array_equal(np.asarray(a), b)
        assert jax.tree.structure(teacher.params) == jax.tree.structure(params)

    npz = tmp_path / "x.npz"
    argv = ["sample", "--teacher", str(tmp_path / "teacher-orbax"), "--steps", "2", "--num-samples", "4", "--out", str(npz)]
    assert cli.main(argv) == 0
    capsys.readouterr()
    with np.load(npz, allow_pickle=False) as z:
        images, labels = z["images"], z["labels"]
    assert images.shape == (4, 8, 8, 1) and np.all(np.isfinite(images)) and np.std(images) > 0.01
    np.testing.assert_array_equal(labels, np.arange(4))
    np.testing.assert_allclose(images, _direct_ddim(params), atol=1e-5)


def test_weights_that_do_not_fit_and_a_used_run_dir_are_one_line(saved, tmp_path, capsys):
    _, orbax_dir, msgpack = saved
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    before = snapshot(tmp_path, orbax_dir)
    fails(["import-teacher", "--module", "pipeline.models.unet:UNet", "--params", orbax_dir, "--schedule", "cosine",
           "--data-shape", "8,8,3", "--kwargs", KWARGS, "--run-dir", tmp_path / "new"], capsys,
          "does not fit pipeline.models.unet:UNet", "'Conv_0/kernel' has shape (3, 3, 1, 8), the module expects (3, 3, 3, 8)")
    fails(["import-teacher", "--module", "pipeline.models.unet:UNet", "--params", msgpack, "--schedule", "cosine",
           "--data-shape", "8,8,1", "--kwargs", "{ch: 16, ch_mult: [1], num_res_blocks: 1}", "--run-dir", tmp_path / "new"],
          capsys, "'Conv_0/bias' has shape (8,), the module expects (16,)")
    fails(["import-teacher", "--module", "pipeline.models.unet:UNet", "--params", msgpack, "--schedule", "cosine",
           "--data-shape", "8,8,1", "--kwargs", KWARGS, "--run-dir", used], capsys, "is not empty", str(used))
    fails(["import-teacher", "--module", "os:system", "--params", msgpack, "--schedule", "cosine",
           "--data-shape", "8,8,1", "--run-dir", tmp_path / "new"], capsys, "'os:system' is not allowed")
    fails(["import-teacher", "--module", "pipeline.models.unet:UNet", "--params", msgpack, "--schedule", "cosine",
           "--data-shape", "8x8", "--run-dir", tmp_path / "new"], capsys, "--data-shape must be")
    fails(["import-teacher", "--module", "pipeline.models.unet:UNet", "--params", msgpack, "--schedule", "cosine",
           "--data-shape", "8,8,1", "--kwargs", "[1, 2]", "--run-dir", tmp_path / "new"], capsys, "--kwargs must be a YAML mapping")
    assert snapshot(tmp_path, orbax_dir) == before and not (tmp_path / "new").exists()


def test_a_teacher_without_data_samples_but_needs_data_for_the_rest(saved, tmp_path, capsys):
    _, _, msgpack = saved
    run = tmp_path / "t"
    assert _import(msgpack, run) == 0
    capsys.readouterr()
    before = snapshot(tmp_path)
    fails(["evaluate", "--teacher", run, "--steps", 2, "--num-samples", 4, "--workers", 1], capsys,
          "needs the teacher's data set, but it has none")
    fails(["search", "--teacher", run, "--steps", 2, "--run-dir", tmp_path / "s"], capsys, "ddss search", "data.name: none")
    fails(["distill", "--teacher", run, "--until", 4], capsys, "distillation", "data.name: none")
    assert snapshot(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["t"]
