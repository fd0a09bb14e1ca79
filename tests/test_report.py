"""The report writer: table rows, plots and grids are real PNGs with the content asked for."""
import numpy as np

from pipeline import report


def test_report_files(tmp_path):
    rows = [
        {"method": "ddim", "steps": 5, "nfe": 5, "fd": 12.5, "kid": 0.01, "wall_s": 1.0},
        {"method": "ddim", "steps": 10, "nfe": 10, "fd": 6.25, "kid": 0.005, "wall_s": 2.0},
        {"method": "ggdm", "steps": 5, "nfe": 5, "fd": None, "kid": None, "wall_s": 3.0},
    ]
    imgs = np.linspace(-1, 1, 4 * 8 * 8).reshape(4, 8, 8, 1)
    report.save_grid(imgs, str(tmp_path / "grids" / "ddim.png"))
    path = report.write_report(str(tmp_path), rows, {"ddim K=5": "grids/ddim.png"}, "intro text")
    text = open(path).read()
    assert "| ddim | 5 | 5 | 12.500 | 10.00 | 1 | 1.0 |" in text
    assert "| ggdm | 5 | 5 | - | - | 1 | 3.0 |" in text
    assert "![ddim K=5](grids/ddim.png)" in text and "frontier.png" in text
    import matplotlib.image as mpimg

    grid = mpimg.imread(str(tmp_path / "grids" / "ddim.png"))
    assert grid.ndim == 3 and grid.std() > 0.05  # an image with content, not blank
    assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_front_keeps_what_no_cheaper_point_beats():
    pts = [(5, 10.0), (5, 8.0), (10, 9.0), (10, 4.0), (20, 6.0), (4, 12.0)]
    assert report.pareto_front(pts) == [(4, 12.0), (5, 8.0), (10, 4.0)]
    # brute force: p is on the front iff no other point has NFE <= p's and a lower metric
    brute = sorted(p for p in set(pts) if not any(q[0] <= p[0] and q[1] < p[1] for q in pts))
    assert report.pareto_front(pts) == brute


def test_table_is_ordered_by_nfe_with_kid_scaled_and_its_std():
    rows = [
        {"method": "ddim", "steps": 20, "nfe": 20, "fd": 1.0, "kid": 0.00125, "kid_std": 0.0005, "wall_s": 4.0},
        {"method": "dpm-solver++2m", "steps": 5, "nfe": 5, "fd": 3.0, "kid": 0.02, "kid_std": None, "wall_s": 1.0},
        {"method": "ddim", "steps": 5, "nfe": 5, "fd": 2.5, "kid": 0.0321, "kid_std": 0.00456, "wall_s": 1.0},
        {"method": "accel-ddim", "steps": 10, "nfe": 10, "fd": None, "kid": None, "kid_std": None, "wall_s": 2.0,
         "train_s": 7.0},
        {"method": "ggdm", "steps": 4, "nfe": 4, "fd": 9.0, "kid": 0.5, "wall_s": 1.0},  # no kid_std key
    ]
    lines = report.results_table(rows).splitlines()
    assert lines[0] == "| method | steps | NFE | FD | KID x 1e3 (± std) | seeds | wall time (s) | training (s) |"
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [(r[0], int(r[2])) for r in body] == [("ggdm", 4), ("ddim", 5), ("dpm-solver++2m", 5), ("accel-ddim", 10),
                                                 ("ddim", 20)]  # by NFE, then method
    kid = {(r[0], int(r[1])): r[4] for r in body}
    assert kid[("ddim", 5)] == "32.10 ± 4.56" and kid[("ddim", 20)] == "1.25 ± 0.50"
    assert kid[("dpm-solver++2m", 5)] == "20.00" and kid[("ggdm", 4)] == "500.00" and kid[("accel-ddim", 10)] == "-"


def test_kid_scale_follows_the_values():
    """KID x 1e3 for the usual KIDs (~0.01); in unnormalised features (the digit classifier's, KIDs
    in the hundreds) as is, never 690247.24."""
    assert [report.kid_scale([{"kid": v}]) for v in (0.0321, 0.5, 0.001, 0.00099, 1.0, 936.0, 1000.0, 12345.0)] == [
        3, 3, 3, 6, 0, 0, -3, -3]
    assert report.kid_scale([]) == report.kid_scale([{"kid": None}]) == 3
    rows = [{"method": "ddpm", "steps": 5, "nfe": 5, "fd": 231.9, "kid": 853.24, "kid_std": 12.5, "wall_s": 23.8},
            {"method": "ddim", "steps": 5, "nfe": 5, "fd": 190.1, "kid": 643.08, "kid_std": None, "wall_s": 17.0}]
    lines = report.results_table(rows).splitlines()
    assert lines[0] == "| method | steps | NFE | FD | KID (± std) | seeds | wall time (s) |"
    assert lines[2:] == ["| ddim | 5 | 5 | 190.100 | 643.08 | 1 | 17.0 |", "| ddpm | 5 | 5 | 231.900 | 853.24 ± 12.50 | 1 | 23.8 |"]


def test_rows_over_seeds_show_their_setting_and_spread_with_error_bars(tmp_path, monkeypatch):
    rows = [{"method": "ddim", "setting": "karras, t_max 0.99", "steps": 5, "nfe": 5, "fd": 7.25, "fd_std": 0.5,
             "kid": 0.01, "kid_std": 0.002, "seeds": 3, "wall_s": 1.0},
            {"method": "ggdm", "steps": 5, "nfe": 5, "fd": 6.0, "kid": 0.01, "wall_s": 1.0}]
    lines = report.results_table(rows).splitlines()
    assert lines[0].startswith("| method | setting | steps |")
    assert "| ddim | karras, t_max 0.99 | 5 | 5 | 7.250 ± 0.500 | 10.00 ± 2.00 | 3 | 1.0 |" in lines
    assert "| ggdm | - | 5 | 5 | 6.000 | 10.00 | 1 | 1.0 |" in lines
    import matplotlib.axes

    seen = []
    orig = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", lambda self, x, y, yerr=None, **kw: (seen.append(
        (kw.get("label"), list(yerr))), orig(self, x, y, yerr=yerr, **kw))[1])
    report.frontier_plot(rows, tmp_path / "f.png")
    assert sorted(seen) == [("ddim", [0.5]), ("ggdm", [0.0])]
