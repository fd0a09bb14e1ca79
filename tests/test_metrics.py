"""KID, Frechet distance and feature moments against independent float64 computations
(explicit loops, scipy's sqrtm) and against tensorflow-gan's own values (reference.json,
written by scripts/tfgan_reference.py under the tfgan venv); the JAX KID and its gradient."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

from pipeline import metrics
from pipeline.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "tfgan"
TFGAN_PYTHON = ROOT / ".venv-tfgan" / "bin" / "python"
REFERENCE = json.loads((DATA / "reference.json").read_text())


def loop_mmd2(x, y):
    """Unbiased MMD^2 with k(u, v) = (u.v / d + 1)^3, written as explicit double loops."""
    d = x.shape[1]
    k = lambda u, v: (float(np.dot(u, v)) / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def loop_kid(x, y, block_size):
    """tensorflow-gan's rule, restated: ceil(max(m, n) / block_size) blocks; block i of a set of
    N rows holds N // B rows, plus one for the last N mod B blocks; mean and std error."""
    nb = math.ceil(max(len(x), len(y)) / block_size)

    def starts(n):
        sizes = [n // nb + (1 if i >= nb - n % nb else 0) for i in range(nb)]
        return [sum(sizes[:i]) for i in range(nb + 1)]

    sx, sy = starts(len(x)), starts(len(y))
    ests = [loop_mmd2(x[sx[i]:sx[i + 1]], y[sy[i]:sy[i + 1]]) for i in range(nb)]
    mean = sum(ests) / nb
    std = math.sqrt(sum((e - mean) ** 2 for e in ests) / (nb - 1) / nb) if nb > 1 else float("nan")
    return mean, std


def scipy_fd(x, y):
    """|mu_x - mu_y|^2 + tr(S_x + S_y - 2 sqrtm(S_x S_y)) with unbiased covariances."""
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(sx @ sy).real
    return float(np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(sx + sy - 2 * covmean))


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(37, 6))
    y = 0.8 * rng.normal(size=(29, 6)) + 0.3
    return x, y


@pytest.mark.parametrize("block_size", [1024, 16, 12])
def test_kid_matches_loops(small, block_size):
    x, y = small
    want, want_std = loop_kid(x, y, block_size)
    got, got_std = metrics.kid_with_std(x, y, block_size=block_size)
    assert got == pytest.approx(want, rel=1e-10)
    assert metrics.kid(x, y, block_size=block_size) == got
    if block_size >= 37:  # one block: no standard error (tensorflow-gan: NaN)
        assert got_std is None and math.isnan(want_std)
    else:
        assert got_std == pytest.approx(want_std, rel=1e-10)


def test_kid_is_within_its_error_for_one_distribution_and_far_off_for_two():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    kid, std = metrics.kid_with_std(a, b, block_size=100)
    assert abs(kid) < 2 * std
    kid, std = metrics.kid_with_std(a, b + 0.5, block_size=100)
    assert kid > 10 * std


def test_evaluation_metrics_of_one_kid_block_are_valid_json():
    """400 samples are one KID block: its std is None, never NaN (results.json is strict JSON)."""
    from pipeline.evaluate import metrics as evaluation_metrics

    rng = np.random.default_rng(4)
    m = evaluation_metrics(rng.normal(size=(400, 5)), None, rng.normal(size=(400, 5)) + 0.2)
    assert m["kid_std"] is None and m["kid"] > 0
    assert json.loads(json.dumps(m, allow_nan=False)) == m


def test_frechet_matches_scipy(small):
    x, y = small
    assert metrics.frechet_distance(x, y) == pytest.approx(scipy_fd(x, y), rel=1e-8)
    assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def test_frechet_accepts_moments(small):
    x, y = small
    mx, my = metrics.FeatureMoments.from_features(x), metrics.FeatureMoments.from_features(y)
    want = metrics.frechet_distance(x, y)
    assert metrics.frechet_distance_from_moments(mx, my) == pytest.approx(want, rel=1e-12)
    assert metrics.frechet_distance(mx, y) == pytest.approx(want, rel=1e-12)


def test_moments_merge_equals_whole():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(101, 5)) * 10 + 1000  # offset: a raw-sum merge would lose digits
    whole = metrics.FeatureMoments.from_features(f)
    parts = [f[:7], f[7:60], f[60:60], f[60:]]
    merged = metrics.FeatureMoments.from_features(parts[0])
    for p in parts[1:]:
        merged = merged.merge(metrics.FeatureMoments.from_features(p))
    assert merged.count == 101
    np.testing.assert_allclose(merged.mean, f.mean(0), rtol=1e-13)
    np.testing.assert_allclose(merged.m2, whole.m2, rtol=1e-10)
    np.testing.assert_allclose(merged.cov, np.cov(f, rowvar=False), rtol=1e-10)


def test_moments_round_trip_through_json():
    m = metrics.FeatureMoments.from_features(np.random.default_rng(1).normal(size=(9, 3)))
    back = metrics.FeatureMoments.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back.count == m.count
    np.testing.assert_array_equal(back.mean, m.mean)
    np.testing.assert_array_equal(back.m2, m.m2)
    with pytest.raises(UserError, match="m2 shape"):
        metrics.FeatureMoments.from_dict({"count": 9, "mean": [0.0, 0.0], "m2": [[1.0]]})


@pytest.mark.parametrize("call,match", [
    (lambda: metrics.kid(np.zeros((10, 3)), np.zeros((10, 4))), "feature dimensions differ"),
    (lambda: metrics.kid(np.zeros(10), np.zeros((10, 1))), r"\[N, F\]"),
    (lambda: metrics.kid(np.zeros((3, 2)), np.zeros((2050, 2))), "at least 2 samples"),
    (lambda: metrics.frechet_distance(np.zeros((1, 2)), np.zeros((5, 2))), "at least 2 samples"),
    (lambda: metrics.frechet_distance(np.full((4, 2), np.nan), np.zeros((5, 2))), "non-finite"),
])
def test_bad_input_is_one_line(call, match):
    with pytest.raises(UserError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=lambda c: f"{c['a'][:5]}-bs{c['block_size']}")
def test_agrees_with_tensorflow_gan(case):
    a, b = np.load(DATA / case["a"]), np.load(DATA / case["b"])
    kid, std = metrics.kid_with_std(a, b, block_size=case["block_size"])
    assert kid == pytest.approx(case["kid"], rel=1e-4)
    if case["kid_std"] is None:  # one block: tensorflow-gan gives NaN
        assert std is None
    else:
        assert std == pytest.approx(case["kid_std"], rel=1e-4)
    assert metrics.frechet_distance(a, b) == pytest.approx(case["fid"], rel=1e-4)


def test_reference_data_is_small_and_splits_blocks():
    assert sum(p.stat().st_size for p in DATA.iterdir()) < 2_000_000
    assert any(c["kid_std"] is not None for c in REFERENCE["cases"])  # some case has several blocks


@pytest.mark.tfgan
def test_reference_json_is_reproduced_by_tensorflow_gan(tmp_path):
    """Regenerate the activations from their seed and re-run tensorflow-gan: same files, same numbers."""
    if not TFGAN_PYTHON.exists():
        pytest.skip(f"tensorflow-gan venv missing ({TFGAN_PYTHON}): run `make tfgan-venv`")
    out = tmp_path / "reference.json"
    subprocess.run([str(TFGAN_PYTHON), str(ROOT / "scripts" / "tfgan_reference.py"), "--generate",
                    "--data", str(tmp_path), "--out", str(out)], check=True, capture_output=True, timeout=300)
    for p in DATA.glob("*.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / p.name), np.load(p))
    fresh = json.loads(out.read_text())
    assert len(fresh["cases"]) == len(REFERENCE["cases"])
    for new, old in zip(fresh["cases"], REFERENCE["cases"]):
        assert (new["a"], new["b"], new["block_size"]) == (old["a"], old["b"], old["block_size"])
        for key in ("kid", "kid_std", "fid"):
            assert (new[key] is None) == (old[key] is None)
            assert new[key] == (None if old[key] is None else pytest.approx(old[key], rel=1e-9))


def test_import_is_light():
    code = "import sys, pipeline.metrics; print(sorted(m for m in ('jax', 'ray', 'tensorflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------------------------
# The differentiable JAX KID (DDSS's loss).


def test_kid_jax_equals_numpy_on_one_block(small):
    import jax

    x, y = small
    got = float(jax.jit(metrics.kid_jax)(x.astype(np.float32), y.astype(np.float32)))
    assert got == pytest.approx(metrics.kid(x, y), rel=1e-4, abs=1e-6)


def test_kid_jax_gradient_matches_finite_differences():
    import jax

    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(12, 4)), rng.normal(size=(10, 4)) + 0.4
    grad = np.asarray(jax.grad(metrics.kid_jax)(x.astype(np.float32), y.astype(np.float32)), np.float64)
    assert np.all(np.isfinite(grad))
    h, fd = 1e-6, np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        fd[idx] = (metrics.kid(xp, y) - metrics.kid(xm, y)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=2e-3, atol=1e-5 * np.abs(fd).max())
    assert np.abs(fd).max() > 1e-3  # the check is not vacuous
