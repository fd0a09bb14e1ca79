"""The digit classifier (feature network of KID/FD on digits): accuracy on the held-out split,
differentiable features, msgpack+JSON save/load, the cache and its corrupt-file error."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pipeline.data import load_digits
from pipeline.errors import UserError
from pipeline.models import classifier


@pytest.fixture(scope="module")
def trained():
    """Trained once for this file (about 40 s on two cores)."""
    return classifier.train_digit_classifier(seed=0, progress=False)


def test_test_accuracy_at_least_97_percent(trained):
    params, acc = trained
    images, labels = load_digits("test")
    assert acc >= 0.97
    assert classifier.accuracy(params, images, labels) == pytest.approx(acc)


def test_features_shape_and_gradient_matches_finite_differences(trained):
    params, _ = trained
    images, _ = load_digits("test")
    feats = jax.jit(classifier.feature_fn(params))(images)
    assert feats.shape == (len(images), classifier.FEATURE_DIM) and np.all(np.isfinite(feats))
    assert np.linalg.matrix_rank(np.asarray(feats, np.float64)) > classifier.FEATURE_DIM // 2  # features are not degenerate
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        f = classifier.feature_fn(p64)
        x = jnp.asarray(images[:4], jnp.float64)
        v = jnp.asarray(np.random.default_rng(0).normal(size=x.shape))
        loss = lambda z: jnp.sum(f(z) ** 2)  # noqa: E731
        directional = jnp.vdot(jax.grad(loss)(x), v)
        h = 1e-5
        fd = (loss(x + h * v) - loss(x - h * v)) / (2 * h)
        assert abs(float(directional)) > 1e-3
        np.testing.assert_allclose(directional, fd, rtol=1e-6)


def test_save_load_roundtrip_and_cache_reuse(trained, tmp_path):
    params, acc = trained
    path = classifier.feature_net_path(tmp_path, seed=0)
    classifier.save_feature_net(path, params, {"seed": 0, "test_accuracy": acc})
    with open(path, "rb") as f:
        assert f.read(2) != b"\x80\x04"  # msgpack, not a pickle stream
    meta = json.loads(open(path[: -len(".msgpack")] + ".json").read())
    assert meta["test_accuracy"] == acc and meta["format"] == classifier.FORMAT
    loaded, meta2 = classifier.load_feature_net(path)
    assert meta2 == meta
    x = load_digits("test")[0][:8]
    np.testing.assert_array_equal(classifier.feature_fn(loaded)(x), classifier.feature_fn(params)(x))
    # present in the cache: reused, not retrained (retraining would take ~40 s and differ for seed 0's file
    # written with other params); we store a perturbed copy and must get exactly it back
    shifted = jax.tree.map(lambda a: a + 1.0, params)
    classifier.save_feature_net(path, shifted, {"seed": 0})
    cached = classifier.load_or_train_feature_net(tmp_path, seed=0)
    for a, b in zip(jax.tree_util.tree_leaves(cached), jax.tree_util.tree_leaves(shifted)):
        np.testing.assert_array_equal(a, b)
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".tmp") or ".tmp-" in n]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no_sidecar", "bad_sidecar"])
def test_corrupt_cache_is_one_line_user_error(trained, tmp_path, damage):
    params, _ = trained
    path = classifier.feature_net_path(tmp_path, seed=0)
    classifier.save_feature_net(path, params, {"seed": 0})
    sidecar = path[: -len(".msgpack")] + ".json"
    data = open(path, "rb").read()
    if damage == "truncate":
        open(path, "wb").write(data[: len(data) // 2])
    elif damage == "garbage":
        open(path, "wb").write(b"not msgpack at all" * 10)
    elif damage == "no_sidecar":
        os.unlink(sidecar)
    else:
        open(sidecar, "w").write("{ not json")
    with pytest.raises(UserError) as err:
        classifier.load_feature_net(path)
    msg = str(err.value)
    assert "\n" not in msg and ("corrupt" in msg or "missing" in msg)
    if damage != "no_sidecar":  # a cache entry without its sidecar is incomplete: it gets retrained
        with pytest.raises(UserError, match="corrupt"):
            classifier.load_or_train_feature_net(tmp_path, seed=0)
