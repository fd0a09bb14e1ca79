"""Atomic writes: whole contents or the old file, never part of one, and no temporary left."""
import json
import os

import numpy as np
import pytest

from pipeline import io
from pipeline.errors import UserError


def _names(d):
    return sorted(os.listdir(d))


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "sub" / "f.txt"
    io.atomic_write_text(p, "one")
    io.atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert os.listdir(p.parent) == ["f.txt"]


def test_bytes_json_and_npz(tmp_path):
    io.atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    io.atomic_write_json(tmp_path / "r.json", {"b": [1, 2], "a": None})
    assert (tmp_path / "r.json").read_text() == '{\n  "a": null,\n  "b": [\n    1,\n    2\n  ]\n}\n'
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    io.atomic_write_npz(tmp_path / "a.npz", {"x": x, "y": np.array([1, 2])})
    with np.load(tmp_path / "a.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["x", "y"]
        np.testing.assert_array_equal(z["x"], x)
    assert _names(tmp_path) == ["a.npz", "b.bin", "r.json"]


def test_failure_mid_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "f.json"
    io.atomic_write_text(p, "old")
    with pytest.raises(RuntimeError, match="killed"):
        with io.atomic_open(p, "w") as f:
            f.write("half of the new")
            raise RuntimeError("killed")
    assert p.read_text() == "old"
    assert _names(tmp_path) == ["f.json"]
    with pytest.raises(TypeError):  # not JSON: nothing written
        io.atomic_write_json(p, {"a": object()})
    assert p.read_text() == "old" and _names(tmp_path) == ["f.json"]


def test_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "f.txt"
    io.atomic_write_text(p, "old")

    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError, match="No space"):
        io.atomic_write_bytes(p, b"new")
    assert p.read_text() == "old" and _names(tmp_path) == ["f.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_leaves_the_old_file(tmp_path):
    d = tmp_path / "ro"
    io.atomic_write_text(d / "f.txt", "old")
    os.chmod(d, 0o555)
    try:
        with pytest.raises(PermissionError):
            io.atomic_write_text(d / "f.txt", "new")
    finally:
        os.chmod(d, 0o755)
    assert (d / "f.txt").read_text() == "old" and _names(d) == ["f.txt"]


def test_permissions_are_those_of_a_plain_open(tmp_path):
    io.atomic_write_text(tmp_path / "atomic", "x")
    (tmp_path / "plain").write_text("x")
    assert os.stat(tmp_path / "atomic").st_mode == os.stat(tmp_path / "plain").st_mode


def test_atomic_open_writes_whole_files_only(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with io.atomic_open(tmp_path / "f", "a"):
            pass
    assert _names(tmp_path) == []


def test_atomic_dir(tmp_path):
    path = tmp_path / "parent" / "art"
    with io.atomic_dir(path, "sampler artefact") as tmp:
        assert os.path.dirname(tmp) == str(path.parent) and not path.exists()
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump({"k": 1}, f)
    assert json.loads((path / "meta.json").read_text()) == {"k": 1}
    assert _names(path.parent) == ["art"]

    with pytest.raises(UserError, match=f"^sampler artefact {path} already exists; choose another path$"):
        with io.atomic_dir(path, "sampler artefact"):
            raise AssertionError("not reached")
    assert json.loads((path / "meta.json").read_text()) == {"k": 1}

    other = tmp_path / "parent" / "failed"
    with pytest.raises(RuntimeError):
        with io.atomic_dir(other) as tmp:
            open(os.path.join(tmp, "half"), "w").close()
            raise RuntimeError("killed")
    assert _names(path.parent) == ["art"]
