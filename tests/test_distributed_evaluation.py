"""score(): the jax backend's KID and FD against float64 NumPy, from merged moments or features."""
import numpy as np
import pytest
import scipy.linalg

from pipeline.distributed.evaluation import score
from pipeline.metrics import FeatureMoments


def _fd(a, b):
    ma, mb, ca, cb = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(np.sum((ma - mb) ** 2) + np.trace(ca + cb - 2 * scipy.linalg.sqrtm(ca @ cb).real))


def _kid(a, b):
    d = a.shape[1]
    k = lambda x, y: (x @ y.T / d + 1.0) ** 3  # noqa: E731
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    m, n = len(a), len(b)
    return (kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1)) - 2 * kab.mean()


def test_jax_backend_scores_like_float64_numpy_from_moments_or_features():
    rng = np.random.default_rng(0)
    gen = rng.normal(0.3, 1.1, size=(300, 5)).astype(np.float32)
    ref = rng.normal(0.0, 1.0, size=(400, 5)).astype(np.float32)
    blocks = [FeatureMoments.from_features(gen[i:i + 64]) for i in range(0, 300, 64)]
    merged = blocks[0]
    for b in blocks[1:]:
        merged = merged.merge(b)
    a, b = np.float64(gen), np.float64(ref)
    for moments in (merged, None):
        out = score(gen, moments, ref)
        assert out["fd"] == pytest.approx(_fd(a, b), rel=1e-4)
        assert out["kid"] == pytest.approx(_kid(a, b), rel=1e-4, abs=1e-6)
        assert set(out) == {"kid", "kid_std", "fd"}
