"""Data-parallel gradients (pipeline/distributed/grads.py): one key per example, and
ProcessGradients and GlobalMeshGradients (make_gradients' two paths) against jax.value_and_grad
of the same loss on the whole batch and against each other, on one device and on four (a
forced 4-device CPU in a subprocess)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from forced_devices import call_with_devices
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pipeline.distributed.grads import (PATHS, GlobalMeshGradients, ProcessGradients, example_keys,
                                        make_gradients)

B, D, KEY, STEP = 8, 3, 7, 3


def loss_fn(params, aux, batch):
    """Least squares of a linear model whose targets carry unit noise drawn from each row's key;
    aux is an offset the gradient does not flow into."""
    x, y, keys = batch
    noise = jax.vmap(lambda k: jax.random.normal(k, ()))(keys)
    return jnp.mean((x @ params["w"] + params["b"] + aux - y - noise) ** 2)


def problem():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, D)).astype(np.float32)
    y = rng.standard_normal(B).astype(np.float32)
    params = {"w": rng.standard_normal(D).astype(np.float32), "b": np.float32(0.3)}
    return params, np.float32(0.5), x, y


def reference(params, aux, x, y, step=STEP):
    """value_and_grad on the whole batch, row i drawing from example_keys(fold_in(key, step), B)[i]."""
    keys = example_keys(jax.random.fold_in(jax.random.key(KEY), step), B)
    return jax.value_and_grad(loss_fn)(params, aux, (jnp.asarray(x), jnp.asarray(y), keys))


def _mesh():
    return Mesh(np.array(jax.devices()), ("data",))


def _replicated(mesh, tree):
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def _pg_call(pg, mesh, params, aux, rows_data, rows):
    rep = _replicated(mesh, {"params": params, "aux": aux, "key": jax.random.key_data(jax.random.key(KEY)),
                             "step": np.int32(STEP)})
    flat = pg(rep["params"], rows_data, rep["key"], rep["step"], rows, B, aux=rep["aux"])
    loss, grads = ProcessGradients.unravel_like(rep["params"], flat)
    return float(loss), {k: np.asarray(v) for k, v in grads.items()}


def _assert_same(got, want):
    (loss, grads), (want_loss, want_grads) = got, want
    np.testing.assert_allclose(loss, float(want_loss), rtol=1e-5)
    for k in ("w", "b"):
        np.testing.assert_allclose(grads[k], np.asarray(want_grads[k]), rtol=1e-5, atol=1e-6)


def test_example_keys_are_one_distinct_key_per_row_fixed_by_the_key():
    keys = example_keys(jax.random.key(0), 16)
    data = np.asarray(jax.random.key_data(keys))
    assert keys.shape == (16,) and len({tuple(r) for r in data}) == 16
    np.testing.assert_array_equal(data, np.asarray(jax.random.key_data(example_keys(jax.random.key(0), 16))))
    assert not np.array_equal(data, np.asarray(jax.random.key_data(example_keys(jax.random.key(1), 16))))


@pytest.mark.parametrize("path", PATHS)
def test_one_process_gives_value_and_grad_of_the_whole_batch(path):
    params, aux, x, y = problem()
    mesh = _mesh()
    got = _pg_call(make_gradients(loss_fn, mesh, path), mesh, params, aux, (x, y), slice(0, B))
    _assert_same(got, reference(params, aux, x, y))


def test_row_keys_do_not_depend_on_the_split():
    """Each half of the batch, given as the rows it is, draws its rows' keys of the whole batch:
    the halves' mean is the whole batch's loss and gradient."""
    params, aux, x, y = problem()
    mesh = _mesh()
    pg = ProcessGradients(loss_fn, mesh)
    h = B // 2
    (l1, g1), (l2, g2) = (_pg_call(pg, mesh, params, aux, (x[r], y[r]), r) for r in (slice(0, h), slice(h, B)))
    _assert_same(((l1 + l2) / 2, {k: (g1[k] + g2[k]) / 2 for k in g1}), reference(params, aux, x, y))


def test_make_gradients_chooses_the_process_path_on_cpu_and_the_global_mesh_on_gpu_and_tpu(monkeypatch):
    import pipeline.distributed.grads as g

    assert type(make_gradients(loss_fn, _mesh())) is ProcessGradients  # this machine: CPU devices
    monkeypatch.setattr(g, "GlobalMeshGradients", lambda *a: "global")
    monkeypatch.setattr(g, "ProcessGradients", lambda *a: "process")
    for platform, want in (("gpu", "global"), ("tpu", "global"), ("cpu", "process")):
        device = type("Device", (), {"platform": platform})()
        assert g.make_gradients(loss_fn, type("Mesh", (), {"devices": np.array([device])})()) == want


def sgd(state, grads):
    new = jax.tree.map(lambda p, g: p - 0.1 * g, state["params"], grads)
    return {**state, "params": new, "step": state["step"] + 1}


def test_both_paths_give_the_same_parameters_after_a_few_steps():
    params, aux, x, y = problem()
    mesh = _mesh()
    out = {}
    for path in PATHS:
        step = make_gradients(loss_fn, mesh, path).train_step(sgd, B)
        state = _replicated(mesh, {"params": params, "key": jax.random.key_data(jax.random.key(KEY)), "step": np.int32(0)})
        for _ in range(5):
            state, loss, ok = step(state, (x, y), slice(0, B), aux=_replicated(mesh, aux))
            assert bool(ok)
        out[path] = {k: np.asarray(v) for k, v in state["params"].items()}
        assert not np.allclose(out[path]["w"], params["w"])
    for k in ("w", "b"):
        np.testing.assert_allclose(out["process"][k], out["global"][k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", PATHS)
def test_train_step_applies_the_whole_batch_gradient_and_returns_global_arrays(path):
    params, aux, x, y = problem()
    mesh = _mesh()
    pg = make_gradients(loss_fn, mesh, path)
    step = pg.train_step(sgd, B)
    state = _replicated(mesh, {"params": params, "key": jax.random.key_data(jax.random.key(KEY)), "step": np.int32(STEP)})
    want = params
    for s in (STEP, STEP + 1):  # the second step draws from fold_in(key, STEP + 1)
        want_loss, want_grads = reference(want, aux, x, y, step=s)
        state, loss, ok = step(state, (x, y), slice(0, B), aux=_replicated(mesh, aux))
        assert bool(ok)
        want = jax.tree.map(lambda p, g: np.asarray(p - 0.1 * g), want, want_grads)
        np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-5)
        for k in ("w", "b"):
            np.testing.assert_allclose(np.asarray(state["params"][k]), want[k], rtol=1e-5, atol=1e-6)
        assert int(state["step"]) == s + 1
    for a in jax.tree.leaves((state, loss)):
        assert a.sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec()), a.ndim), a.sharding


def on_four_devices(path="process"):
    """(devices, [the path's loss and gradient, value_and_grad's]) with the batch split
    over all devices of this process."""
    params, aux, x, y = problem()
    mesh = _mesh()
    loss, grads = _pg_call(make_gradients(loss_fn, mesh, path), mesh, params, aux, (x, y), slice(0, B))
    want_loss, want_grads = reference(params, aux, x, y)
    as_json = lambda l, g: [float(l), {k: np.asarray(v).tolist() for k, v in g.items()}]  # noqa: E731
    return jax.device_count(), as_json(loss, grads), as_json(want_loss, want_grads)


@pytest.mark.parametrize("path", PATHS)
def test_four_devices_give_value_and_grad_of_the_whole_batch(path):
    devices, got, want = call_with_devices(4, "test_grads", "on_four_devices", path)
    assert devices == 4
    _assert_same(got, want)
    _assert_same(got, reference(*problem()))  # and the 1-device numbers of this process


def teacher_steps(path=None, steps=2):
    """A tiny teacher's parameters after `steps` train steps (teacher/train.py's make_train_step,
    on all devices of this process, gradient path `path`), raveled."""
    from jax.flatten_util import ravel_pytree

    from pipeline import schedules
    from pipeline.teacher import train
    from pipeline.teacher.config import load_config

    cfg = load_config(None, {"model.kwargs": {"ch": 8, "ch_mult": [1], "num_res_blocks": 1}, "train.batch_size": 8})
    model, sched = train.build_model(cfg.model, 10), schedules.get(cfg.schedule)
    optimizer = train.make_optimizer(cfg.train)
    mesh = _mesh()
    state = _replicated(mesh, jax.device_get(train.init_state(model, optimizer, (8, 8, 1), 0)))
    step = train.make_train_step(model, sched, optimizer, cfg.train, 10, mesh, path)
    rng = np.random.default_rng(1)
    for _ in range(steps):
        x0 = rng.uniform(-1, 1, (8, 8, 8, 1)).astype(np.float32)
        y = rng.integers(0, 10, 8).astype(np.int32)
        state, loss, ok = step(state, x0, y, slice(0, 8))
        assert bool(ok)
    return jax.device_count(), np.asarray(ravel_pytree(state["params"])[0]).tolist()


@pytest.mark.parametrize("path", PATHS)
def test_teacher_steps_on_four_devices_equal_one_device(path):
    """teacher/train.py's step on 1 process x 4 devices (either path) = 1 process x 1 device."""
    devices, four = call_with_devices(4, "test_grads", "teacher_steps", path)
    assert devices == 4
    _, one = teacher_steps("process")
    np.testing.assert_allclose(np.asarray(four), np.asarray(one), rtol=1e-4, atol=1e-5)


def distill_steps(path=None, steps=2, r=0):
    """A tiny distillation round r's student parameters after `steps` steps (distill/loop.py's
    make_train_step on all devices of this process, gradient path `path`), raveled; the teacher
    is an untrained tiny U-Net."""
    import optax
    from jax.flatten_util import ravel_pytree

    from pipeline import schedules
    from pipeline.distill import config as dconfig
    from pipeline.distill import loop
    from pipeline.teacher import train
    from pipeline.teacher.config import load_config
    from pipeline.teacher.model import Teacher

    tcfg = load_config(None, {"model.kwargs": {"ch": 8, "ch_mult": [1], "num_res_blocks": 1}})
    model = train.build_model(tcfg.model, 10)
    params = jax.device_get(train.init_state(model, train.make_optimizer(tcfg.train), (8, 8, 1), 0)["params"])
    # zero-initialised output layers make eps = 0: the loss would be exactly 0 and the parameters never move
    noise = np.random.default_rng(5)
    params = jax.tree.map(lambda a: (a + 0.05 * noise.standard_normal(a.shape)).astype(np.float32), params)
    teacher = Teacher(model, params, schedules.get(tcfg.schedule), tcfg, (8, 8, 1), 10, 0)
    cfg = dconfig.load({"teacher": "t", "start_steps": 4, "rounds": {"train_steps": 10, "lr": 1e-3, "batch": 8}})
    optimizer = optax.sgd(0.1)  # not Adam: it turns float noise in near-zero gradients into +-lr steps
    mesh = _mesh()
    state = _replicated(mesh, {"params": params, "opt": optimizer.init(params), "step": np.int32(0),
                               "key": jax.random.key_data(jax.random.key(3))})
    step = loop.make_train_step(loop.make_loss(cfg, r, teacher), optimizer, mesh, 8, path)
    teacher_rep, rng = _replicated(mesh, params), np.random.default_rng(2)
    for _ in range(steps):
        x0 = rng.uniform(-1, 1, (8, 8, 8, 1)).astype(np.float32)
        y = rng.integers(0, 10, 8).astype(np.int32)
        state, loss, ok = step(state, teacher_rep, x0, y, slice(0, 8))
        assert bool(ok)
    return jax.device_count(), np.asarray(ravel_pytree(state["params"])[0]).tolist()


@pytest.mark.parametrize("path", PATHS)
def test_distillation_steps_on_four_devices_equal_one_device(path):
    """distill/loop.py's step on 1 process x 4 devices (either path) = 1 process x 1 device."""
    devices, four = call_with_devices(4, "test_grads", "distill_steps", path)
    assert devices == 4
    _, one = distill_steps("process")
    np.testing.assert_allclose(np.asarray(four), np.asarray(one), rtol=1e-4, atol=1e-5)
    _, start = distill_steps("process", steps=0)
    assert np.abs(np.asarray(one) - np.asarray(start)).max() > 1e-3  # the steps moved the parameters
