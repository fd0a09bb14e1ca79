"""`ddss demo --quick` end to end, once (a subprocess with its own local Ray, a fresh run directory
and a fresh cache: the teacher and the feature net are trained in it), and its refusal of a
non-empty run directory."""
import json
import math
import os
import re
import subprocess
import sys

import pytest

from pipeline.app import cli

PNG = b"\x89PNG\r\n\x1a\n"
# The stages of the demo and a method of each that its table must hold.
STAGES = {
    "baseline": ["ddim", "dpm-solver++2m"],
    "accelerated": ["accel-ddim"],
    "ddss": ["ggdm+pred+time (DDSS)"],
    "distilled": ["student-ddim (distilled)", "student-stochastic (distilled)"],
}


pytestmark = pytest.mark.timeout(1200)  # the first test builds the quick demo (minutes on a loaded 2-core machine)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("demo") / "run"
    cache = tmp_path_factory.mktemp("cache")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.app.cli", "demo", "--quick", "--run-dir", str(run_dir), "--cache-dir", str(cache)],
        capture_output=True, text=True, timeout=1100, env=dict(os.environ, RAY_ADDRESS=""),
    )
    return {"proc": proc, "run_dir": run_dir}


HEADER = r"^\| method \| setting \| steps \| NFE \| FD \| KID( x 1e-?\d+)? \(± std\) \| seeds \| wall time \(s\) \|"


def _table(report: str) -> dict:
    """{(method, steps): [setting, NFE, FD, KID, seeds, wall]} from report.md's results table (FD
    and KID without their "± std")."""
    rows = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 8 and re.fullmatch(r"\d+", cells[2]):
            setting, nfe, fd, kid, seeds, wall = cells[1], *cells[3:8]
            rows[(cells[0], int(cells[2]))] = [setting, nfe, fd.split(" ± ")[0], kid.split(" ± ")[0], seeds, wall]
    return rows


@pytest.mark.ray
def test_quick_demo_exits_0_with_a_summary(demo):
    proc = demo["proc"]
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = str(demo["run_dir"] / "report.md")
    assert f"report: {report}" in proc.stdout
    assert re.search(HEADER, proc.stdout, re.M)


@pytest.mark.ray
def test_background_evaluations_are_watched(demo):
    """The demo printed nothing for about a minute while its background evaluations ran: each
    batch submitted to the pool now ends with a line (and a line every 10 s names the one running)."""
    out = demo["proc"].stdout
    submitted = re.findall(r"^  evaluating (\d+) rows on the pool in the background \((.+)\)$", out, re.M)
    finished = re.findall(r"^  evaluated (.+) in the background: (\d+) rows in \d+ s$", out, re.M)
    assert submitted and sorted(finished) == sorted((stage, n) for n, stage in submitted), out
    for line in re.findall(r"^  \.\.\. evaluating .*$", out, re.M):
        assert re.fullmatch(r"  \.\.\. evaluating .+ in the background: \d+/\d+ samples, \d+ s", line), line


@pytest.mark.ray
def test_quick_report_says_its_samples_look_like_noise(demo):
    report = (demo["run_dir"] / "report.md").read_text()
    text = " ".join(report.split())
    assert "Quick budgets: the teacher is tiny and briefly trained, so its samples (and every sampler's) are " \
           "expected to look like noise" in text
    assert re.search(HEADER, report, re.M)
    assert "KID is given " in text and "± its standard error" in text
    nfes = [int(line.split("|")[4]) for line in report.splitlines() if re.match(r"\| [^|]+ \| [^|]+ \| \d+ \| \d+ \|", line)]
    assert len(nfes) == len(_table(report)) and nfes == sorted(nfes)  # ordered by NFE


@pytest.mark.ray
def test_report_has_a_finite_row_for_every_stage(demo):
    text = (demo["run_dir"] / "report.md").read_text()
    table = _table(text)
    methods = {m for m, _ in table}
    for stage, wanted in STAGES.items():
        missing = [m for m in wanted if m not in methods]
        assert not missing, f"{stage}: no row for {missing}; notes: {text.split('## Notes')[-1][:1500]}"
    for (method, steps), (setting, nfe, fd, kid, seeds, wall) in table.items():
        assert int(nfe) >= 1 and math.isfinite(float(fd)) and math.isfinite(float(kid)) and float(wall) > 0, method
        assert int(seeds) == 3, method  # every row is a mean ± std over the 3 test seeds
        if method in STAGES["baseline"] + STAGES["accelerated"]:
            assert setting.split(",")[0] in ("linear", "karras"), (method, setting)  # the quick budget's grids
    assert ("student-ddim (distilled)", 4) in table  # distilled down to 4 steps


@pytest.mark.ray
def test_results_json_holds_the_rows(demo):
    results = json.loads((demo["run_dir"] / "results.json").read_text())
    rows = results["demo"]["rows"]
    assert {r["stage"] for r in rows} == set(STAGES)
    table = _table((demo["run_dir"] / "report.md").read_text())
    assert {(r["method"], r["steps"]) for r in rows} == set(table)
    for r in rows:
        assert math.isfinite(r["fd"]) and math.isfinite(r["kid"]) and r["nfe"] >= 1


@pytest.mark.ray
def test_frontier_and_grids_are_pngs(demo):
    run_dir = demo["run_dir"]
    text = (run_dir / "report.md").read_text()
    assert "![FD vs NFE](frontier.png)" in text
    pngs = [run_dir / "frontier.png"] + [run_dir / rel for rel in re.findall(r"\]\((grids/[^)]+\.png)\)", text)]
    assert len(pngs) >= 1 + sum(len(v) for v in STAGES.values())  # a grid per method at least
    import matplotlib.image as mpimg

    for p in pngs:
        assert p.read_bytes()[:8] == PNG, p
        img = mpimg.imread(str(p))
        assert img.ndim == 3 and img.shape[0] > 20 and img.std() > 0.02, p  # an image with content


def test_non_empty_run_dir_is_refused_and_left_alone(tmp_path, capsys):
    run_dir = tmp_path / "taken"
    run_dir.mkdir()
    (run_dir / "keep.txt").write_text("mine")
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir()}
    rc = cli.main(["demo", "--quick", "--run-dir", str(run_dir), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "not empty" in err
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir()} == before
    assert not (tmp_path / "cache").exists()


def test_cached_teacher_reuses_resumes_or_trains(tmp_path, monkeypatch, capsys):
    """One teacher cache (pipeline.teacher.train.reuse_or_train) behind the demo's cached_teacher:
    a new config is trained, an interrupted run (config.yaml only) resumed, a finished one reused."""
    from pipeline import rundir
    from pipeline.app import demo as app_demo
    from pipeline.teacher import train

    calls = []
    monkeypatch.setattr(train, "train_teacher", lambda cfg=None, **kw: calls.append((cfg, kw)))
    cfg = app_demo.teacher_config(app_demo.QUICK, str(tmp_path))
    path = app_demo.cached_teacher(cfg, str(tmp_path))
    assert os.path.basename(path).startswith("teacher-digits-") and os.path.dirname(path) == str(tmp_path)
    assert calls == [(cfg, {"run_dir": path})] and capsys.readouterr().out == ""
    os.makedirs(path)
    rundir.write_config(path, cfg)
    assert app_demo.cached_teacher(cfg, str(tmp_path)) == path
    assert calls[1] == (None, {"run_dir": path, "resume": True})
    assert capsys.readouterr().out == f"  continuing the interrupted training in {path}\n"
    rundir.update_results(path, {"teacher": {"trained_steps": 150}})
    assert app_demo.cached_teacher(cfg, str(tmp_path)) == path
    assert len(calls) == 2 and capsys.readouterr().out == f"  reusing {path}\n"
