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
    assert "| ddim | 5 | 5 | 12.500 | 0.0100 | 1.0 |" in text
    assert "| ggdm | 5 | 5 | - | - | 3.0 |" in text
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
