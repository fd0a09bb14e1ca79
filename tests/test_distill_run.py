"""Running the rounds (pipeline/distill/run.py): run_until starts at the first unfinished round."""
from pipeline.distill.run import run_until


def test_until_resumes_at_the_first_unfinished_round(until_2):
    cfg, _, done = until_2  # run_until(cfg, 2) on a root where round 0 had finished
    assert [r["round"] for r in done] == [1]  # round 0 was finished: not run again
    assert run_until(cfg, 2, log=lambda m: None) == []
