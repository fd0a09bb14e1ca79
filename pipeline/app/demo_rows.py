"""The demo's rows: what to evaluate (Todo) and the rows recorded from evaluations over seeds
(mean ± std), with their sample grids and notes."""
from __future__ import annotations

import dataclasses
import os
import re

from pipeline import report, rundir
from pipeline.evaluation import protocol

GRID_SAMPLES = 30  # three samples of each digit per grid (sample i has label i % 10)


@dataclasses.dataclass(frozen=True)
class Todo:
    """One row to evaluate: a method's sampler at `steps`, with its setting (grid, t_max, clip)."""

    method: str
    sampler: str
    steps: int
    stage: str
    setting: protocol.Setting = protocol.Setting("linear")
    train_s: float | None = None
    label: str | None = None  # the setting as the report shows it (None: no setting column entry)


class Rows:
    """The demo's result rows, their sample grids and notes, recorded as they come in."""

    def __init__(self, run_dir: str):
        self.run_dir, self.rows, self.grids, self.notes = run_dir, [], {}, []

    def note(self, text: str):
        self.notes.append(text)
        print(f"  note: {text}")

    def add(self, todo: Todo, seeds: list[dict]):
        """The row of `todo` from its evaluations over seeds: FD and KID as mean ± std over them."""
        fd, kid = protocol.summary(r["fd"] for r in seeds), protocol.summary(r["kid"] for r in seeds)
        one = seeds[0]
        r = {"stage": todo.stage, "method": todo.method, "sampler": one["sampler"], "steps": one["steps"],
             "nfe": one["nfe"], "setting": todo.label, "fd": fd.mean, "fd_std": fd.std if fd.n > 1 else None,
             "kid": kid.mean, "kid_std": kid.std if kid.n > 1 else one["kid_std"], "seeds": fd.n,
             "wall_s": sum(r["wall_s"] for r in seeds), "train_s": todo.train_s}
        self.rows.append(r)
        rundir.append_metrics(self.run_dir, {"event": "row", **r})
        if one.get("samples") is not None:
            slug = re.sub(r"[^a-z0-9]+", "-", todo.method.lower()).strip("-")
            rel = f"grids/{slug}-K{r['steps']}.png"
            report.save_grid(one["samples"], os.path.join(self.run_dir, rel), ncol=10)
            self.grids[f"{todo.method}, {r['steps']} steps"] = rel
        print(f"  {todo.method:28s} K={r['steps']:<3d} NFE={r['nfe']:<3d} FD={fd} KID={kid} ({r['wall_s']:.1f} s)")
