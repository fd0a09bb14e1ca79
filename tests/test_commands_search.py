"""`ddss search`: --run-dir is never overwritten, --resume keeps the run (on the exact
Gaussian-mixture denoiser: fast; gmm_search: tests/cli_fixtures.py)."""
import os

from cli_fixtures import SEARCH, fails, snapshot
from pipeline import ddss
from pipeline.app import cli


def test_search_run_dir_is_never_overwritten_and_resume_keeps_the_run(gmm_search, capsys):
    capsys.readouterr()
    before = snapshot(gmm_search)
    fails(["search", *SEARCH, "--run-dir", gmm_search], capsys, "not empty", "--resume")
    fails(["search", "--resume"], capsys, "--run-dir")
    fails(["search", "--resume", "--run-dir", gmm_search, "--steps", "3"], capsys, "'steps'")
    fails(["search", "--resume", "--run-dir", os.path.dirname(gmm_search)], capsys, "config.yaml")
    assert snapshot(gmm_search) == before

    art = os.path.join(gmm_search, "sampler")
    art_before = snapshot(art)
    assert cli.main(["search", "--resume", "--run-dir", gmm_search]) == 0  # finished: nothing left to do
    assert '"resumed_from": 2' in capsys.readouterr().out
    assert snapshot(art) == art_before
    assert ddss.load_artefact(gmm_search)["meta"]["data_shape"] == [2]


def test_resume_honours_workers(gmm_search, tmp_path, capsys, monkeypatch):
    import shutil

    from pipeline import rundir
    from pipeline.distributed import spmd

    run = str(shutil.copytree(gmm_search, tmp_path / "run"))
    cfg = rundir.read_config(run)
    rundir.write_config(run, {**cfg, "workers": 2})  # as if started on 2 Ray workers
    real = spmd.run_spmd

    def in_process_only(loop, config, num_workers, **kw):
        assert num_workers == 0, f"ran on {num_workers} workers, not the --workers 0 given"
        return real(loop, config, num_workers=num_workers, **kw)

    monkeypatch.setattr(spmd, "run_spmd", in_process_only)
    capsys.readouterr()
    assert cli.main(["search", "--resume", "--run-dir", run, "--workers", "0"]) == 0, capsys.readouterr().err[-2000:]
    assert rundir.read_results(run)["ddss_search"]["processes"] == 1
    assert rundir.read_config(run)["workers"] == 2


def test_grid_lr_schedule_and_selection_flags_reach_the_config(capsys, monkeypatch):
    """--stride/--t-max (the grid the search starts from), --lr-schedule and --select-by set their
    config keys; a t_max outside (0, 1] is one line, exit 2."""
    given = []
    monkeypatch.setattr(ddss, "search", lambda cfg, **kw: given.append(cfg) or {"ok": True})
    argv = ["search", "--gmm", "ring2d", "--workers", "0", "--stride", "karras", "--t-max", "0.9",
            "--lr-schedule", "constant", "--select-by", "kid", "--set", "holdout_fraction=0.1"]
    assert cli.main(argv) == 0
    cfg = given[0]
    got = (cfg.stride, cfg.t_max, cfg.lr_schedule, cfg.select_by, cfg.holdout_fraction)
    assert got == ("karras", 0.9, "constant", "kid", 0.1)
    assert cli.main(["search", "--gmm", "ring2d", "--workers", "0"]) == 0
    assert (given[1].stride, given[1].t_max, given[1].lr_schedule, given[1].select_by) == ("quadratic", 1.0, "cosine", "fd")
    capsys.readouterr()
    fails(["search", "--gmm", "ring2d", "--t-max", "1.5"], capsys, "'t_max'", "(0, 1]")
