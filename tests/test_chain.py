"""The chain driver and its helpers: scan_chain's steps and bad-step reporting, per-step noise
(one key or one key per sample), coefficient broadcasting, batch times, coeffs and eps_at."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pipeline import schedules
from pipeline.errors import UserError
from pipeline.samplers.chain import batch_times, bcast, coeffs, eps_at, noise_like, scan_chain, split_noise

GRID = jnp.array([1.0, 0.75, 0.5, 0.25, 0.0])


def blow_up_at(step_1based: int):
    """x <- x + t - s, except x = nan after step `step_1based` (and finite again after it)."""

    def step(state, i, t, s):
        x = state["x"] + t - s
        x = jnp.where(i + 1 == step_1based, jnp.nan, jnp.where(jnp.isfinite(x), x, 0.0))
        return {"x": x, "ts": state["ts"].at[i].set(jnp.stack([t, s]))}

    return step


@pytest.mark.parametrize("remat", [False, True])
def test_scan_chain_runs_the_grid_steps_and_reports_no_bad_step(remat):
    init = {"x": jnp.zeros((2, 3)), "ts": jnp.zeros((4, 2))}
    state, bad = scan_chain(blow_up_at(0), init, GRID, remat=remat)
    assert int(bad) == 0
    np.testing.assert_allclose(np.asarray(state["x"]), 1.0)
    np.testing.assert_array_equal(np.asarray(state["ts"]), np.stack([GRID[:-1], GRID[1:]], 1))


@pytest.mark.parametrize("k", [1, 3, 4])
def test_scan_chain_reports_the_first_non_finite_step(k):
    init = {"x": jnp.zeros((2, 3)), "ts": jnp.zeros((4, 2))}
    _, bad = scan_chain(blow_up_at(k), init, GRID)
    assert int(bad) == k  # the first one, even where x is finite again afterwards


def test_scan_chain_remat_gives_the_same_gradient():
    def loss(c, remat):
        state, _ = scan_chain(lambda st, i, t, s: {"x": jnp.sin(c * st["x"]) + s}, {"x": jnp.ones(3)}, GRID, remat=remat)
        return jnp.sum(state["x"])

    g0, g1 = jax.grad(loss)(1.3, False), jax.grad(loss)(1.3, True)
    np.testing.assert_allclose(float(g0), float(g1), rtol=1e-6)


def test_noise_like_per_sample_keys_are_fold_in_draws():
    keys = jax.random.split(jax.random.key(7), 4)
    x = jnp.zeros((4, 2, 3))
    for i in (0, 5):
        z = np.asarray(noise_like(keys, i, x))
        for b in range(4):
            ref = jax.random.normal(jax.random.fold_in(keys[b], i), (2, 3))
            np.testing.assert_array_equal(z[b], np.asarray(ref))
    # a sample's noise does not depend on the rest of the batch
    np.testing.assert_array_equal(np.asarray(noise_like(keys[1:3], 5, x[1:3])), np.asarray(noise_like(keys, 5, x))[1:3])


def test_noise_like_one_key_and_raw_keys():
    key = jax.random.key(3)
    x = jnp.zeros((4, 2))
    np.testing.assert_array_equal(np.asarray(noise_like(key, 2, x)), np.asarray(jax.random.normal(jax.random.fold_in(key, 2), (4, 2))))
    raw = jax.random.PRNGKey(3)  # uint32 key data, as from jax.random.key_data
    np.testing.assert_array_equal(np.asarray(noise_like(raw, 2, x)), np.asarray(noise_like(key, 2, x)))
    with pytest.raises(UserError, match="stochastic"):
        noise_like(None, 0, x)


def test_split_noise_draws_distinct_noises_from_folded_keys():
    keys = jax.random.split(jax.random.key(1), 3)
    x = jnp.zeros((3, 2))
    z1, z2 = split_noise(keys, 4, x, 2)
    for j, z in enumerate((z1, z2)):
        folded = jax.vmap(lambda k: jax.random.fold_in(k, 1_000_003 * (j + 1)))(keys)
        np.testing.assert_array_equal(np.asarray(z), np.asarray(noise_like(folded, 4, x)))
    assert not np.allclose(np.asarray(z1), np.asarray(z2))


def test_bcast_and_batch_times_shapes():
    x = jnp.zeros((5, 4, 3), jnp.float32)
    assert bcast(2.0, x).shape == (1, 1, 1)
    b = bcast(np.arange(5.0), x)
    assert b.shape == (5, 1, 1) and b.dtype == x.dtype
    assert (b * x).shape == x.shape
    assert bcast(np.ones((5, 4)), x).shape == (5, 4, 1)
    t = batch_times(0.25, x)
    assert t.shape == (5,) and t.dtype == x.dtype
    np.testing.assert_array_equal(np.asarray(t), 0.25)


def test_coeffs_and_eps_at():
    sched = schedules.get("cosine")
    got = coeffs(sched, 0.7, 0.2)
    want = (sched.alpha(0.7), sched.sigma(0.7), sched.alpha(0.2), sched.sigma(0.2))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want))
    x = jnp.ones((3, 2))
    eps = eps_at(lambda x, t: x * t[:, None], x, 0.5)  # eps_fn gets t: [B]
    np.testing.assert_allclose(np.asarray(eps), 0.5)
