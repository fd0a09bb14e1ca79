"""`ddss distill`: its flags become the job config (configs/distill.yaml underneath) that is run,
and bad flags or keys fail with one line and exit 2 before anything runs (the rounds themselves:
tests/test_distill_*.py)."""
import json

import pytest

from helpers import one_line_exit_2
from pipeline.app import cli
from pipeline.distill import run as distill_run


@pytest.fixture
def jobs(monkeypatch):
    """The jobs `ddss distill` runs, as (JobConfig, address), in place of running them."""
    ran = []
    def run_job(job, address=None, log=None):
        ran.append((job, address))
        return [{"round": 0}]

    monkeypatch.setattr(distill_run, "run_job", run_job)
    return ran


def test_flags_become_the_job_config(jobs, tmp_path, capsys):
    argv = ["distill", "--teacher", str(tmp_path / "t"), "--until", "4", "--dir", str(tmp_path / "d"), "--workers", "2",
            "--set", "distill.seed=3", "--address", "http://h:8265"]
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out) == [{"round": 0}]
    assert cli.main(["distill", "--teacher", str(tmp_path / "t"), "--round", "2"]) == 0
    (until, address), (one_round, _) = jobs
    assert (until.round, until.until, until.workers, address) == (-1, 4, 2, "http://h:8265")
    assert until.distill.teacher == str(tmp_path / "t") and until.distill.dir == str(tmp_path / "d")
    assert until.distill.seed == 3 and until.distill.start_steps == 256  # the rest: configs/distill.yaml
    assert (one_round.round, one_round.distill.dir, one_round.workers) == (2, "", 0)


def test_bad_flags_are_one_line_and_run_nothing(jobs, tmp_path, capsys):
    one_line_exit_2(["distill"], capsys, "distill.teacher")
    one_line_exit_2(["distill", "--teacher", str(tmp_path), "--round", "-2"], capsys, "'round'")
    one_line_exit_2(["distill", "--teacher", str(tmp_path), "--set", "distill.stage1.lrr=2"], capsys,
                    "distill.stage1.lrr")
    with pytest.raises(SystemExit) as e:  # argparse: one of --round, --until
        cli.main(["distill", "--teacher", str(tmp_path), "--round", "0", "--until", "4"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert jobs == [] and list(tmp_path.iterdir()) == []
