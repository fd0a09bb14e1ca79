"""A demo row from evaluations over seeds: FD and KID as mean ± sample std (NumPy, ddof = 1),
the setting shown, a sample grid from the first seed, the row in metrics.jsonl."""
import json

import numpy as np
import pytest

from pipeline.app.demo_rows import Rows, Todo
from pipeline.evaluation.protocol import Setting


def _eval(fd, kid, seed, samples=None):
    return {"sampler": "ddim", "steps": 5, "nfe": 5, "fd": fd, "kid": kid, "kid_std": 0.5, "wall_s": 2.0,
            "seed": seed, "samples": samples}


def test_a_row_is_the_mean_and_std_over_its_seeds(tmp_path):
    out = Rows(str(tmp_path))
    fds, kids = [7.0, 8.5, 7.75], [0.01, 0.03, 0.02]
    imgs = np.linspace(-1, 1, 10 * 64).reshape(10, 8, 8, 1)
    out.add(Todo("ddim", "ddim", 5, "baseline", Setting("karras", 0.99), label="karras, t_max 0.99"),
            [_eval(f, k, s, imgs if s == 0 else None) for s, (f, k) in enumerate(zip(fds, kids))])
    (row,) = out.rows
    assert row["fd"] == pytest.approx(np.mean(fds)) and row["fd_std"] == pytest.approx(np.std(fds, ddof=1))
    assert row["kid"] == pytest.approx(np.mean(kids)) and row["kid_std"] == pytest.approx(np.std(kids, ddof=1))
    assert row["seeds"] == 3 and row["setting"] == "karras, t_max 0.99" and row["wall_s"] == 6.0
    assert (tmp_path / "grids" / "ddim-K5.png").read_bytes()[:4] == b"\x89PNG"
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["event"] == "row" and logged[-1]["fd"] == pytest.approx(np.mean(fds))


def test_a_row_of_one_seed_keeps_kids_own_error(tmp_path):
    out = Rows(str(tmp_path))
    out.add(Todo("ddim", "ddim", 5, "baseline"), [_eval(9.0, 0.02, 0)])
    assert out.rows[0]["fd_std"] is None and out.rows[0]["kid_std"] == 0.5 and out.rows[0]["seeds"] == 1
