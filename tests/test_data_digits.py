"""The digits split: range, shapes, stratified, disjoint, fixed."""
import hashlib
from collections import Counter

import numpy as np
import pytest
from sklearn.datasets import load_digits as sk_load_digits

from pipeline.data.digits import load_digits
from pipeline.errors import UserError

TEST_SPLIT_SHA1 = "72637cfd58c5"


def test_digits_split_shapes_range_and_scaling():
    raw = sk_load_digits()
    x_all, y_all = load_digits("all")
    assert x_all.shape == (1797, 8, 8, 1) and x_all.dtype == np.float32 and y_all.dtype == np.int32
    np.testing.assert_array_equal(x_all[..., 0], raw.images / 8.0 - 1.0)  # [0, 16] -> [-1, 1]
    np.testing.assert_array_equal(y_all, raw.target)
    assert x_all.min() == -1.0 and x_all.max() == 1.0
    x_tr, y_tr = load_digits("train")
    x_te, y_te = load_digits("test")
    assert len(x_tr) + len(x_te) == 1797 and abs(len(x_te) / 1797 - 0.2) < 0.01
    # stratified: every class is ~20% test
    for c in range(10):
        assert abs(np.mean(y_te == c) - np.mean(y_all == c)) < 0.01


def _multiset(images, labels):
    return Counter((im.tobytes(), int(y)) for im, y in zip(images, labels))


def test_digits_split_disjoint_and_fixed():
    x_tr, y_tr = load_digits("train")
    x_te, y_te = load_digits("test")
    # a partition: train + test is exactly "all" as a multiset (the data holds a few duplicate images)
    assert _multiset(x_tr, y_tr) + _multiset(x_te, y_te) == _multiset(*load_digits("all"))
    # pinned: a changed split would silently change every digits metric
    assert hashlib.sha1(x_te.tobytes()).hexdigest()[:12] == TEST_SPLIT_SHA1
    # fixed: the same on every call, and immune to callers mutating the returned arrays
    x_tr[:] = 0
    np.testing.assert_array_equal(load_digits("train")[1], y_tr)
    assert load_digits("train")[0].min() == -1.0


def test_digits_bad_split():
    with pytest.raises(UserError, match="valid"):
        load_digits("validation")
