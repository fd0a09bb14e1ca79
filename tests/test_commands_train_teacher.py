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


def test_a_bad_model_config_fails_before_the_run_directory_exists(tmp_path, capsys):
    """An unknown model argument, a class that does not exist and an argument the module cannot
    use fail before the run directory is made: a retry with the fix is a new run, not one stuck
    as "not empty" whose --resume refuses the change."""
    run_dir = tmp_path / "r"
    tiny = ["--set", "model.kwargs={ch: 8, ch_mult: [1], num_res_blocks: 1}"]
    for change, needle in (("model.kwargs.nonsense=1", "unexpected keyword argument 'nonsense'"),
                           ("model.import_path=pipeline.models.unet:Nope", "cannot be imported"),
                           ("model.kwargs.ch=x", "cannot be initialised for 8x8x1 data and 10 classes")):
        one_line_exit_2(["train-teacher", *tiny, "--set", change, "--run-dir", str(run_dir)], capsys, needle)
        assert not run_dir.exists(), change
    assert list(tmp_path.iterdir()) == []


def test_a_run_dir_that_cannot_be_made_or_written_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    one_line_exit_2(["train-teacher", "--run-dir", str(tmp_path / "file" / "run")], capsys,
                    "cannot create the run directory", "Not a directory")
    one_line_exit_2(["train-teacher", "--run-dir", "/proc/x"], capsys, "cannot create the run directory /proc/x")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
