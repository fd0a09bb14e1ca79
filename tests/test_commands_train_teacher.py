"""`ddss train-teacher`: bad configs and flags fail with one line and exit 2, before a run
directory is made (training and --resume: tests/test_teacher_train.py)."""
from helpers import one_line_exit_2


def test_bad_config_and_flags_fail_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stepz: 10\n")
    run_dir = tmp_path / "r"
    one_line_exit_2(["train-teacher", "--config", str(bad), "--run-dir", str(run_dir)], capsys, "train.stepz")
    bad.write_text("train:\n  steps: -5\n")
    one_line_exit_2(["train-teacher", "--config", str(bad), "--run-dir", str(run_dir)], capsys, "train.steps")
    bad.write_text("train:\n  lr: fast\n")
    one_line_exit_2(["train-teacher", "--config", str(bad), "--run-dir", str(run_dir)], capsys, "train.lr")
    one_line_exit_2(["train-teacher", "--config", str(tmp_path / "missing.yaml")], capsys, "missing.yaml")
    one_line_exit_2(["train-teacher", "--set", "train.steps"], capsys, "--set")
    one_line_exit_2(["train-teacher", "--resume"], capsys, "--run-dir")
    one_line_exit_2(["train-teacher", "--resume", "--run-dir", str(tmp_path / "nothing")], capsys)
    assert not run_dir.exists(), "a rejected config must not create the run directory"


def test_resume_takes_no_config_and_workers_are_not_negative(tmp_path, capsys):
    one_line_exit_2(["train-teacher", "--workers", "-1", "--run-dir", str(tmp_path / "r")], capsys,
                    "--workers must be >= 0")
    config = "configs/digits_teacher.yaml"
    one_line_exit_2(["train-teacher", "--resume", "--run-dir", str(tmp_path), "--config", config], capsys,
                    "drop --config")
    assert list(tmp_path.iterdir()) == []
