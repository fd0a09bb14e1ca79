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
