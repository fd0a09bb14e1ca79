"""The one progress-bar factory (pipeline/progress.py): whole lines every few seconds off a
terminal, redraws on one; no other module of the package makes a tqdm bar of its own."""
import ast
import io
import sys
import time
from pathlib import Path

import pytest

from pipeline import progress

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _run(stream, n=5, pause=0.0, **kw):
    with progress.bar(total=n, desc="work", unit="sample", file=stream, **kw) as b:
        for _ in range(n):
            time.sleep(pause)
            b.update(1)
    return stream.getvalue()


def _whole_lines(out):
    assert out and "\r" not in out and out.endswith("\n"), repr(out)
    lines = out.splitlines()
    assert all(line.strip() and "\x1b" not in line for line in lines), lines
    return lines


def test_off_a_terminal_whole_lines_at_start_and_end():
    lines = _whole_lines(_run(io.StringIO()))
    assert "work" in lines[0] and "0/5" in lines[0]
    assert "work" in lines[-1] and "5/5" in lines[-1] and "sample" in lines[-1]
    assert len(lines) <= 3  # 5 quick updates: no line each (one every 10 s)


def test_off_a_terminal_a_line_every_interval(monkeypatch):
    monkeypatch.setattr(progress, "OFF_TERMINAL_INTERVAL_S", 0.05)
    lines = _whole_lines(_run(io.StringIO(), n=6, pause=0.1))
    assert len(lines) >= 5 and "6/6" in lines[-1], lines
    counts = [int(line.split("/")[0].split()[-1]) for line in lines]
    assert counts == sorted(counts)


def test_on_a_terminal_the_bar_redraws_in_place():
    assert "\r" in _run(_Terminal())


def test_stderr_at_call_time_by_default(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with progress.bar(total=2, desc="default") as b:
        b.update(2)
    assert "default" in _whole_lines(stream.getvalue())[-1]


@pytest.mark.parametrize("stream", [io.StringIO, _Terminal])
def test_disabled_writes_nothing(stream):
    assert _run(stream(), disable=True) == ""


def test_an_iterable_bar_not_left_erases_to_nothing_off_a_terminal():
    stream = io.StringIO()
    assert list(progress.bar(range(3), desc="temp", leave=False, file=stream)) == [0, 1, 2]
    assert "\r" not in stream.getvalue()
    assert all(line.strip() for line in stream.getvalue().splitlines())


def test_a_closed_or_odd_stream_counts_as_no_terminal():
    class NoTty:
        def __init__(self):
            self.parts = []

        def write(self, s):
            self.parts.append(s)

        def flush(self):
            pass

    f = NoTty()
    with progress.bar(total=1, file=f) as b:
        b.update(1)
    assert "\r" not in "".join(f.parts) and "1/1" in "".join(f.parts)


def test_no_module_but_progress_makes_a_tqdm_bar():
    """SPMD loops (context.progress), the evaluation pool, `ddss sample` and the digit
    classifier all go through pipeline.progress.bar."""
    users = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "tqdm" for n in names):
                users.append(str(path.relative_to(PACKAGE)))
    assert users == ["progress.py"]
