"""Data-parallel gradients (pipeline/distributed/grads.py): one key per example, and
ProcessGradients against jax.value_and_grad of the same loss on the whole batch, on one
device and on four (a forced 4-device CPU in a subprocess)."""
import jax
import jax.numpy as jnp
import numpy as np
from forced_devices import call_with_devices
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pipeline.distributed.grads import ProcessGradients, example_keys

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


def test_one_process_gives_value_and_grad_of_the_whole_batch():
    params, aux, x, y = problem()
    mesh = _mesh()
    got = _pg_call(ProcessGradients(loss_fn, mesh), mesh, params, aux, (x, y), slice(0, B))
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


def test_train_step_applies_the_whole_batch_gradient_and_returns_global_arrays():
    params, aux, x, y = problem()
    mesh = _mesh()
    pg = ProcessGradients(loss_fn, mesh)

    def sgd(state, grads):
        new = jax.tree.map(lambda p, g: p - 0.1 * g, state["params"], grads)
        return {**state, "params": new, "step": state["step"] + 1}

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


def on_four_devices():
    """(devices, [ProcessGradients' loss and gradient, value_and_grad's]) with the batch split
    over all devices of this process."""
    params, aux, x, y = problem()
    mesh = _mesh()
    loss, grads = _pg_call(ProcessGradients(loss_fn, mesh), mesh, params, aux, (x, y), slice(0, B))
    want_loss, want_grads = reference(params, aux, x, y)
    as_json = lambda l, g: [float(l), {k: np.asarray(v).tolist() for k, v in g.items()}]  # noqa: E731
    return jax.device_count(), as_json(loss, grads), as_json(want_loss, want_grads)


def test_four_devices_give_value_and_grad_of_the_whole_batch():
    devices, got, want = call_with_devices(4, "test_grads", "on_four_devices")
    assert devices == 4
    _assert_same(got, want)
    _assert_same(got, reference(*problem()))  # and the 1-device numbers of this process
