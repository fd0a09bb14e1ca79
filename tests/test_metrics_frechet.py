"""The Frechet distance against scipy's sqrtm in float64, from features or from mergeable feature
moments; the moments' merge and their JSON form (`small`: tests/conftest.py)."""
import json

import numpy as np
import pytest
import scipy.linalg

from pipeline import metrics
from pipeline.errors import UserError


def scipy_fd(x, y):
    """|mu_x - mu_y|^2 + tr(S_x + S_y - 2 sqrtm(S_x S_y)) with unbiased covariances."""
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(sx @ sy).real
    return float(np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(sx + sy - 2 * covmean))


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
