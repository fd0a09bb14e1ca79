"""Run directories: unique new ids, the never-overwrite rule, resume, merged results, the
run-directory check."""
import json
import os
import threading

import numpy as np
import pytest

from helpers import read_metrics
from pipeline import rundir
from pipeline.errors import UserError


def test_rundir_new_ids_are_unique_and_never_reuse_a_dir(tmp_path):
    made = []
    threads = [threading.Thread(target=lambda: made.append(rundir.prepare(root=tmp_path, prefix="t"))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 16 and all(os.path.isdir(p) for p in made)
    assert all(os.path.dirname(p) == str(tmp_path) and os.path.basename(p).startswith("t-") for p in made)

    d = tmp_path / "named"
    assert rundir.prepare(d) == str(d)  # new, empty: fine
    rundir.write_config(d, {"a": 1})
    with pytest.raises(UserError, match="not empty; pass --resume"):
        rundir.prepare(d)
    assert rundir.read_config(d) == {"a": 1}  # untouched
    assert rundir.prepare(d, resume=True) == str(d)
    with pytest.raises(UserError, match="no config.yaml"):
        rundir.prepare(tmp_path / "missing", resume=True)
    with pytest.raises(UserError, match="--resume needs --run-dir"):
        rundir.prepare(None, resume=True, root=tmp_path)


def test_a_file_in_place_of_the_run_dir_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="not empty"):
        rundir.prepare(f)
    assert f.read_text() == "x"


def test_results_merge_and_metrics_append(tmp_path):
    rundir.update_results(tmp_path, {"teacher": {"fd": 1.5}, "steps": 3})
    merged = rundir.update_results(tmp_path, {"teacher": {"time_s": np.float32(2.0)}, "bad": float("nan")})
    assert merged == {"teacher": {"fd": 1.5, "time_s": 2.0}, "steps": 3, "bad": None}
    assert json.loads((tmp_path / "results.json").read_text()) == merged
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]
    assert rundir.read_results(tmp_path) == merged

    rundir.append_metrics(tmp_path, {"step": 1, "loss": np.float32(0.5)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # a writer killed mid-line
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 0.5}]


def test_nested_results_merge_key_by_key_and_a_value_replaces_a_section(tmp_path):
    rundir.update_results(tmp_path, {"a": {"b": {"c": 1, "d": 2}, "e": 3}})
    assert rundir.update_results(tmp_path, {"a": {"b": {"d": 4}}}) == {"a": {"b": {"c": 1, "d": 4}, "e": 3}}
    assert rundir.update_results(tmp_path, {"a": {"b": 5}}) == {"a": {"b": 5, "e": 3}}
    text = (tmp_path / "results.json").read_text()
    assert text == json.dumps({"a": {"b": 5, "e": 3}}, indent=2, sort_keys=True) + "\n"


def test_unreadable_results_are_one_line(tmp_path):
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(UserError, match="is not valid JSON") as e:
        rundir.update_results(tmp_path, {"a": 1})
    assert "\n" not in str(e.value)


def test_require_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="^teacher run directory not found: nowhere$"):
        rundir.require_run_dir("nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"^empty is not a teacher run directory \(no config.yaml\)$"):
        rundir.require_run_dir("empty")
    with pytest.raises(UserError, match="^empty is not a student run directory"):
        rundir.require_run_dir("empty", what="student")
    rundir.write_config(tmp_path / "run", {"a": 1})
    assert rundir.require_run_dir("run") == str(tmp_path / "run")


def test_lock_is_one_writer_per_run_directory(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    with rundir.lock(d, "job one", new=True):
        assert os.listdir(d) == [rundir.LOCK]
        with pytest.raises(UserError, match=rf"^{d} is in use by job one \(host .*, pid {os.getpid()}, started "):
            with rundir.lock(d, "job two"):
                pass
        (d / "config.yaml").write_text("a: 1\n")
    assert os.listdir(d) == ["config.yaml"]  # released
    # a new run that finds the directory filled once it holds the lock is refused, and leaves it as it was
    with pytest.raises(UserError, match="is not empty"):
        with rundir.lock(d, "a new run", new=True):
            pass
    assert os.listdir(d) == ["config.yaml"]
    with rundir.lock(d, "a resumed run"):  # resuming (new=False) is fine
        pass


def _chattr(flag, path) -> bool:
    """chattr +i / -i (an immutable folder: read-only even for root); False where not permitted."""
    import subprocess

    try:
        return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0
    except OSError:
        return False


def test_a_run_dir_that_cannot_be_made_or_written_is_one_line_and_leaves_nothing(tmp_path):
    (tmp_path / "file").write_text("x")
    for path, reason in ((tmp_path / "file" / "sub" / "run", "Not a directory"), ("/proc/x", "/proc/x")):
        with pytest.raises(UserError, match=f"^cannot create the run directory .*{reason}") as e:
            rundir.prepare(path)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="^cannot create the run directory /proc/self/runs/t-"):
        rundir.prepare(None, root="/proc/self/runs", prefix="t")
    with pytest.raises(UserError, match="^cannot write in the run directory /proc/self"):
        rundir.check_writable("/proc/self")
    assert sorted(os.listdir(tmp_path)) == ["file"] and (tmp_path / "file").read_text() == "x"

    frozen = tmp_path / "frozen"  # an empty immutable folder: exists, but nothing can be written in it
    frozen.mkdir()
    if not _chattr("+i", frozen):
        pytest.skip("chattr +i is not permitted here")
    try:
        with pytest.raises(UserError, match=f"^cannot write in the run directory {frozen}: Operation not permitted$"):
            rundir.prepare(frozen)
        with pytest.raises(UserError, match="^cannot create the run directory"):
            rundir.prepare(frozen / "a" / "b")
        assert os.listdir(frozen) == []
    finally:
        _chattr("-i", frozen)


def test_results_json_that_is_not_an_object_is_refused_and_never_replaced(tmp_path):
    for text, kind in (("[]", "list"), ("3", "int"), ('"x"', "str"), ("null", "NoneType")):
        (tmp_path / "results.json").write_text(text)
        with pytest.raises(UserError, match=f"results.json holds a JSON {kind}, not an object of results"):
            rundir.read_results(tmp_path)
        with pytest.raises(UserError, match="move it away"):
            rundir.update_results(tmp_path, {"a": 1})
        assert (tmp_path / "results.json").read_text() == text
    assert sorted(os.listdir(tmp_path)) == ["results.json"]  # not even the lock file
    (tmp_path / "results.json").write_bytes(b"\xff\xfe{")  # not UTF-8
    with pytest.raises(UserError, match="is not valid JSON"):
        rundir.read_results(tmp_path)
    (tmp_path / "results.json").write_text("[" * 100_000)  # nested past Python's recursion limit
    with pytest.raises(UserError, match="is not valid JSON"):
        rundir.read_results(tmp_path)
