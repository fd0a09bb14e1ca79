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


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_every_writer_follows_the_umask(tmp_path, umask):
    """Teammates on shared storage read what a run writes: config.yaml, results.json, report.md,
    an .npz (`ddss sample`), a sampler artefact, the lock files. Each file gets 0666 and each
    folder 0777 less the umask, as a plain open() and mkdir() would (mkstemp gave 0600 whatever
    the umask): 0644/0755 under 022, 0600/0700 under 077."""
    from pipeline import ddss, report, rundir

    rows = [{"method": "ddim", "steps": 2, "nfe": 2, "fd": 1.0, "kid": 0.5, "kid_std": None, "wall_s": 1.0}]
    seen = {}

    def modes(root):
        for base, dirs, files in os.walk(root):
            for name in dirs + files:
                p = os.path.join(base, name)
                seen[os.path.relpath(p, tmp_path)] = (os.path.isdir(p), os.stat(p).st_mode & 0o777)

    old = os.umask(umask)
    try:
        run = rundir.prepare(tmp_path / "shared" / "run")
        with rundir.lock(run, "test", new=True):
            rundir.write_config(run, {"a": 1})
            rundir.update_results(run, {"x": {"y": 1}})
            rundir.append_metrics(run, {"step": 1})
            report.write_report(run, rows, {}, "intro")
            io.atomic_write_npz(os.path.join(run, "samples.npz"), {"images": np.zeros((2, 3))})
            ddss.save_artefact(os.path.join(run, "sampler"), ddss.init_params(2, "ggdm", "cosine", "quadratic"),
                               {"schedule": "cosine"})
            modes(tmp_path)  # the lock file too, while it is held
        modes(tmp_path)
    finally:
        os.umask(old)
    for name in ("shared", "shared/run", "shared/run/.lock", "shared/run/config.yaml", "shared/run/results.json",
                 "shared/run/metrics.jsonl", "shared/run/report.md", "shared/run/frontier.png",
                 "shared/run/samples.npz", "shared/run/sampler", "shared/run/sampler/params.npz",
                 "shared/run/sampler/meta.json"):
        assert name in seen, sorted(seen)
    want = {True: 0o777 & ~umask, False: 0o666 & ~umask}
    wrong = {name: oct(mode) for name, (is_dir, mode) in seen.items() if mode != want[is_dir]}
    assert not wrong, f"umask {umask:03o}: {wrong}"
    if umask == 0o022:
        assert seen["shared/run/report.md"] == (False, 0o644) and seen["shared/run/sampler"] == (True, 0o755)
