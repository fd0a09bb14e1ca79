"""The .npz loader: uint8 and float images, and its validation (each bad input is one UserError
line naming the problem)."""
import numpy as np
import pytest

from pipeline.data.arrays import load_npz
from pipeline.errors import UserError


def test_npz_uint8_and_float(tmp_path):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "u8.npz", images=u8, labels=np.arange(5))
    x, y = load_npz(tmp_path / "u8.npz", labels_key="labels")
    assert x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_allclose(x, u8.astype(np.float64) / 127.5 - 1.0, atol=1e-6)
    f64 = rng.uniform(-1, 1, (3, 2, 2, 1))
    np.savez(tmp_path / "f.npz", x=f64)
    x, y = load_npz(tmp_path / "f.npz", key="x")
    assert y is None and x.dtype == np.float32
    np.testing.assert_allclose(x, f64, atol=1e-7)


@pytest.mark.parametrize("case,arrays,kwargs,expect", [
    ("missing file", None, {}, "does not exist"),
    ("missing key", {"pixels": np.zeros((1, 2, 2, 1), np.uint8)}, {}, "no array 'images'"),
    ("wrong rank", {"images": np.zeros((2, 8, 8), np.uint8)}, {}, "rank 4"),
    ("wrong dtype", {"images": np.zeros((1, 2, 2, 1), np.int64)}, {}, "dtype int64"),
    ("out of range", {"images": np.full((1, 2, 2, 1), 1.5, np.float32)}, {}, "[-1, 1]"),
    ("nan", {"images": np.full((1, 2, 2, 1), np.nan, np.float32)}, {}, "finite"),
    ("missing labels", {"images": np.zeros((1, 2, 2, 1), np.uint8)}, {"labels_key": "y"}, "no labels array 'y'"),
    ("bad labels", {"images": np.zeros((2, 2, 2, 1), np.uint8), "y": np.zeros(3)}, {"labels_key": "y"}, "labels must be"),
    ("not npz", b"hello", {}, "not a readable .npz"),
])
def test_npz_errors_are_one_line(tmp_path, case, arrays, kwargs, expect):
    path = tmp_path / "data.npz"
    if isinstance(arrays, bytes):
        path.write_bytes(arrays)
    elif arrays is not None:
        np.savez(path, **arrays)
    with pytest.raises(UserError) as err:
        load_npz(path, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg and expect in msg, msg
