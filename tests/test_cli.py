"""The `ddss` command as a user meets it: help with examples; bad configs, --set items and flags,
and a missing or corrupt checkpoint or a teacher that does not match its checkpoint each end with
one line and exit code 2 in every command, writing nothing (teachers: tests/cli_fixtures.py)."""
import importlib
import os

import pytest

from cli_fixtures import fails, snapshot
from pipeline.app import cli


def test_help_shows_an_example_for_the_command_and_each_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    top = capsys.readouterr().out
    assert "examples:" in top and "ddss demo --quick" in top
    names = [importlib.import_module(f"pipeline.app.commands.{m}").NAME for m in cli.COMMANDS]
    assert "sample" in names
    for name in names:
        assert name in top
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert f"example:\n  ddss {name} " in text, name
    assert cli.main([]) == 2  # no command: the help, exit 2
    assert "examples:" in capsys.readouterr().out


@pytest.mark.parametrize("command, yaml_text, key", [
    ("evaluate", "stepz: 3\n", "stepz"),                       # unknown key
    ("evaluate", "num_samples: many\n", "num_samples"),        # wrong type
    ("evaluate", "workers: 0\n", "workers"),                   # impossible value
    ("evaluate", "w: .inf\n", "'w'"),                          # impossible value
    ("search", "eval_every: soon\n", "eval_every"),
    ("search", "learning_rate: -1\n", "learning_rate"),
    ("search", "remat: sometimes\n", "remat"),
    ("distill", "distill:\n  stage1:\n    lr: 1\n    lrr: 2\n", "distill.stage1.lrr"),
])
def test_bad_yaml_config_is_one_line_naming_the_key(command, yaml_text, key, tmp_path, capsys, teachers):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    before = snapshot(teachers["good"])
    fails([command, "--config", path, "--teacher", teachers["good"]], capsys, key)
    assert snapshot(teachers["good"]) == before
    assert sorted(os.listdir(tmp_path)) == ["bad.yaml"]


def test_bad_set_and_flags_are_one_line(teachers, tmp_path, capsys):
    t = teachers["good"]
    fails(["evaluate", "--teacher", t, "--set", "stride=cubic"], capsys, "stride")
    fails(["evaluate", "--teacher", t, "--set", "sampler"], capsys, "--set")
    fails(["evaluate", "--teacher", t, "--w", "nan"], capsys, "'w'")
    fails(["evaluate", "--teacher", t, "--sampler", "euler"], capsys, "euler")
    fails(["search", "--teacher", t, "--set", "batch_size=1"], capsys, "batch_size")
    fails(["search", "--teacher", t, "--gmm", "ring2d"], capsys, "teacher")
    fails(["sample", "--teacher", t, "--out", tmp_path / "x.png"], capsys, ".npz")
    fails(["sample", "--teacher", t, "--out", tmp_path / "no" / "x.npz"], capsys, "does not exist")
    fails(["evaluate", "--teacher", tmp_path / "nowhere"], capsys, "not found")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("which, needle", [
    ("missing", "no checkpoint"),
    ("corrupt", "unreadable"),
    ("mismatch", "incompatible"),
])
def test_unusable_teacher_is_one_line_and_nothing_is_written(which, needle, teachers, tmp_path, capsys):
    t = teachers[which]
    before = snapshot(t)
    fails(["sample", "--teacher", t, "--steps", 2, "--num-samples", 4, "--out", tmp_path / "s.npz"], capsys, needle)
    fails(["evaluate", "--teacher", t, "--steps", 2, "--num-samples", 4, "--workers", 1], capsys, needle)
    fails(["search", "--teacher", t, "--steps", 2, "--workers", 0, "--run-dir", tmp_path / "search"], capsys, needle)
    assert os.listdir(tmp_path) == [], "nothing may be created for an unusable teacher"
    assert snapshot(t) == before


def test_version_prints_the_package_version(capsys):
    from importlib import metadata

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"ddss {metadata.version('ddss-pipeline')}\n"


def test_quick_demo_duration_is_one_number_in_help_and_readme(capsys):
    """`ddss demo --help` and README.md quote the same measured time of `ddss demo --quick`."""
    import re
    from pathlib import Path

    from pipeline.app.commands import demo

    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"(at most {demo.QUICK_DEMO_S} s on a 2-core machine)" in help_text
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    quoted = re.findall(r"`ddss demo --quick` \(tiny budgets, the same stages\) takes (\d+) s", readme)
    assert quoted == [str(demo.QUICK_DEMO_S)]
    assert not re.search(r"--quick[^.]*\b\d+ minutes", help_text + readme)  # no second figure
