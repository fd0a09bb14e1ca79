"""Config validation at the edge: unknown keys, wrong types, impossible values, one line each."""
import dataclasses
import os

import pytest

from pipeline import config
from pipeline.errors import UserError


@dataclasses.dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    steps: int = 10

    def validate(self):
        config.check(self.lr > 0, "optim.lr", "must be > 0")


@dataclasses.dataclass(frozen=True)
class Job:
    name: str = "x"
    widths: tuple[int, ...] = (1, 2)
    seed: int | None = None
    optim: Optim = Optim()


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: y\noptim:\n  lr: 0.5\n")
    job = config.load(Job, p, {"optim.steps": 3, "widths": [4]})
    assert job == Job(name="y", widths=(4,), optim=Optim(lr=0.5, steps=3))
    assert config.to_dict(job)["widths"] == [4]


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"nme": "y"}, "unknown config key 'nme'"),
        ({"optim": {"lr": 0.1, "stepz": 1}}, "unknown config key 'optim.stepz'"),
        ({"optim": {"steps": "ten"}}, "'optim.steps' must be an integer"),
        ({"optim": {"steps": 2.5}}, "'optim.steps' must be an integer"),
        ({"widths": 3}, "'widths' must be a list"),
        ({"optim": {"lr": -1.0}}, "'optim.lr': must be > 0"),
        ({"seed": True}, "'seed' must be an integer"),
    ],
)
def test_bad_configs_fail_with_one_line(data, needle):
    with pytest.raises(UserError) as e:
        config.load(Job, data)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_yaml_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        config.load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        config.load_yaml(bad)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("a: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(UserError):
        config.load_yaml(unsafe)


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "sub" / "f.txt"
    config.atomic_write_text(p, "one")
    config.atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert os.listdir(p.parent) == ["f.txt"]


def test_paths_are_made_absolute_at_the_edge(tmp_path, monkeypatch):
    """Ray workers and actors run in another cwd: the configs that name local paths resolve them
    against the caller's cwd when loaded; URLs and the sampler's name are left alone."""
    from pipeline import ddss
    from pipeline.distill import config as dconfig
    from pipeline.evaluate import EvaluateConfig

    monkeypatch.chdir(tmp_path)
    ev = config.load(EvaluateConfig, {"teacher": "runs/t", "sampler": "ggdm:arts/k5", "cache_dir": "gs://b/cache"})
    assert ev.teacher == str(tmp_path / "runs" / "t") and ev.sampler == f"ggdm:{tmp_path / 'arts' / 'k5'}"
    assert ev.cache_dir == "gs://b/cache" and ev.results_dir is None
    assert config.load(EvaluateConfig, {"teacher": "t"}).cache_dir == str(tmp_path / ".cache")  # defaults too
    assert config.load(EvaluateConfig, {"teacher": "t", "sampler": "ddim"}).sampler == "ddim"
    assert ddss.load_config(None, {"teacher": "t", "run_dir": "r"}).run_dir == str(tmp_path / "r")
    d = dconfig.load({"teacher": "../t", "dir": "~/d"})
    assert d.teacher == os.path.normpath(str(tmp_path / ".." / "t")) and d.dir == os.path.expanduser("~/d")
