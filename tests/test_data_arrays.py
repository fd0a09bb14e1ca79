"""The .npz loader: uint8 and float images, and its validation (each bad input is one UserError
line naming the problem)."""
import zipfile

import numpy as np
import pytest

from pipeline.data.arrays import load_npz, read_npz
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
    ("empty file", b"", {}, "not a readable .npz file (empty file"),
    ("huge label", {"images": np.zeros((2, 2, 2, 1), np.uint8), "y": np.array([0, 10**9])}, {"labels_key": "y"},
     "labels must be class indices below 100000, got 1000000000"),
    ("label 2**32", {"images": np.zeros((2, 2, 2, 1), np.uint8), "y": np.array([0, 2**32])}, {"labels_key": "y"},
     "below 100000, got 4294967296"),  # it wrapped to class 0
    ("negative label", {"images": np.zeros((2, 2, 2, 1), np.uint8), "y": np.array([0, -3])}, {"labels_key": "y"},
     "labels must be >= 0, got -3"),
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


def test_a_npy_named_npz_and_a_header_declaring_more_than_it_holds_are_one_line(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 2, 2, 1), np.uint8))
    (tmp_path / "a.npy").rename(tmp_path / "a.npz")
    with pytest.raises(UserError, match=r"a.npz: not a readable .npz file \(a .npy array"):
        load_npz(tmp_path / "a.npz")
    # a member whose .npy header claims 10^11 images but holds 16 bytes: refused before any allocation
    header = "{'descr': '|u1', 'fortran_order': False, 'shape': (100000000000, 2, 2, 1), }"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    with zipfile.ZipFile(tmp_path / "big.npz", "w") as z:
        z.writestr("images.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(16))
    with pytest.raises(UserError, match="declares shape .100000000000, 2, 2, 1. .400000000000 bytes. but holds 16 bytes"):
        load_npz(tmp_path / "big.npz")


def test_read_npz_reads_all_arrays_from_a_path_or_bytes(tmp_path):
    np.savez(tmp_path / "p.npz", a=np.arange(3.0), b=np.eye(2, dtype=np.float32))
    out = read_npz(tmp_path / "p.npz")
    assert sorted(out) == ["a", "b"] and out["b"].dtype == np.float32
    same = read_npz("named.npz", data=(tmp_path / "p.npz").read_bytes())
    np.testing.assert_array_equal(same["a"], out["a"])
    with pytest.raises(UserError, match="^x.npz: not a readable thing"):
        read_npz("x.npz", what="thing", data=b"")
