"""The one progress-bar factory of the package (SPMD loops, the evaluation pool, `ddss sample`,
the digit classifier).

On a terminal a bar redraws in place (at most once a second). Off a terminal (a log file, a
pipe, a Ray worker's log, `ray job logs`) carriage-return redraws would pile up on one line:
the bar then prints a whole plain line at most every OFF_TERMINAL_INTERVAL_S seconds (and
one at its start and end) instead.
"""
from __future__ import annotations

import sys

OFF_TERMINAL_INTERVAL_S = 10.0


def bar(iterable=None, *, total: int | None = None, desc: str = "", initial: int = 0, unit: str = "it",
        disable: bool = False, leave: bool = True, file=None):
    """A tqdm bar on `file` (default: sys.stderr at call time), as described above.

    Use as tqdm: `with bar(total=n, desc="x") as b: b.update(k)` or `for i in bar(range(n)): ...`.
    """
    from tqdm.auto import tqdm

    f = sys.stderr if file is None else file
    live = _is_terminal(f)
    return tqdm(
        iterable, total=total, initial=initial, desc=desc, unit=unit, disable=disable, leave=leave,
        file=f if live else Lines(f), dynamic_ncols=live,
        mininterval=1.0 if live else OFF_TERMINAL_INTERVAL_S, ascii=not live,
    )


def _is_terminal(f) -> bool:
    try:
        return bool(f.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


class Lines:
    """A file for tqdm that turns its carriage-return redraws into whole lines (an erased
    bar, `leave=False`, writes nothing)."""

    def __init__(self, f):
        self._f = f

    def write(self, s):
        s = s.replace("\r", "").strip()
        if s:
            self._f.write(s + "\n")

    def flush(self):
        self._f.flush()
