"""KID against an independent float64 computation (explicit double loops over the kernel and
tensorflow-gan's block rule, restated); its standard error; one block in a strict-JSON row
(`small`: tests/conftest.py)."""
import json
import math

import numpy as np
import pytest

from pipeline import metrics


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
    """400 samples are one KID block: its std is the jackknife's, never NaN (results.json is strict JSON)."""
    from pipeline.evaluation import metrics as evaluation_metrics
    from pipeline.metrics.kid import jackknife_std

    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(400, 5)), rng.normal(size=(400, 5)) + 0.2
    m = evaluation_metrics(a, None, b)
    assert m["kid_std"] == pytest.approx(jackknife_std(a, b)) and m["kid"] > 0
    assert json.loads(json.dumps(m, allow_nan=False)) == m


def test_jackknife_std_against_leaving_each_sample_out_by_hand():
    """The closed-form leave-one-out estimates against MMD^2 recomputed without each row, float64."""
    from pipeline.metrics.kid import jackknife_std, mmd2_unbiased

    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(23, 3)), rng.normal(0.3, 1.2, size=(17, 3))
    loo_a = np.array([mmd2_unbiased(np.delete(a, i, 0), b) for i in range(len(a))])
    loo_b = np.array([mmd2_unbiased(a, np.delete(b, j, 0)) for j in range(len(b))])
    var = (22 / 23) * np.sum((loo_a - loo_a.mean()) ** 2) + (16 / 17) * np.sum((loo_b - loo_b.mean()) ** 2)
    assert jackknife_std(a, b) == pytest.approx(np.sqrt(var), rel=1e-10)
    # the error shrinks like 1/sqrt(n) for larger samples of the same distributions
    big = jackknife_std(rng.normal(size=(400, 3)), rng.normal(0.3, 1.2, size=(400, 3)))
    small = jackknife_std(rng.normal(size=(100, 3)), rng.normal(0.3, 1.2, size=(100, 3)))
    assert 1.3 < small / big < 3.2
