"""Config validation at the edge: unknown keys, wrong types, impossible values, one line each."""
import dataclasses

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


def test_parse_sets_reads_values_as_yaml():
    assert config.parse_sets(None) == {}
    sets = config.parse_sets(["train.steps=500", "name=y", "widths=[4, 5]", "seed=null", "lr=0.5", "s=a=b"])
    assert sets == {"train.steps": 500, "name": "y", "widths": [4, 5], "seed": None, "lr": 0.5, "s": "a=b"}
    job = config.load(Job, {}, config.parse_sets(["optim.steps=3", "widths=[4]"]))
    assert job == Job(widths=(4,), optim=Optim(steps=3))


@pytest.mark.parametrize("item, needle", [("steps", "--set needs key=value, got 'steps'"),
                                          ("=3", "--set needs key=value, got '=3'"),
                                          ("a=[1, 2", "--set 'a=[1, 2': the value is not valid YAML at column 6: "
                                                      "expected ',' or ']', but got '<stream end>' "
                                                      "(while parsing a flow sequence at column 1)")])
def test_parse_sets_errors_are_one_line(item, needle):
    with pytest.raises(UserError) as e:
        config.parse_sets(["ok=1", item])
    assert str(e.value) == needle


STORED = {"model": {"ch": 32, "mult": [1, 2]}, "train": {"steps": 10, "lr": 0.1}, "sample": {"n": 4}, "seed": 0}


def test_check_resume_lets_allowed_keys_change():
    given = {**STORED, "train": {"steps": 20, "lr": 0.1}, "sample": {"n": 8}}
    config.check_resume(STORED, given, ("train.steps", "sample."), "runs/t")
    config.check_resume(STORED, STORED, (), "runs/t")


@pytest.mark.parametrize("given, key, values", [
    ({**STORED, "model": {"ch": 16, "mult": [1, 2]}}, "model.ch", "(32 in the run, 16 given)"),
    ({**STORED, "model": {"ch": 32, "mult": [1, 3]}}, "model.mult", "([1, 2] in the run, [1, 3] given)"),
    ({**STORED, "train": {"steps": 20, "lr": 0.2}}, "train.lr", "(0.1 in the run, 0.2 given)"),
    ({**STORED, "extra": 1}, "extra", "(nothing in the run, 1 given)"),
    ({**STORED, "extra": None}, "extra", "(nothing in the run, None given)"),
])
def test_check_resume_names_the_first_forbidden_change(given, key, values):
    with pytest.raises(UserError) as e:
        config.check_resume(STORED, given, ("train.steps", "sample."), "runs/t")
    assert str(e.value) == (f"cannot resume runs/t with a different {key!r} {values}; "
                            "only train.steps, sample. may change")


def test_check_resume_first_key_in_order_and_hint():
    given = {**STORED, "seed": 1, "model": {"ch": 16, "mult": [1, 2]}}
    with pytest.raises(UserError, match=r"^cannot resume d with a different 'model.ch' .*; nothing may change$"):
        config.check_resume(STORED, given, (), "d")
    with pytest.raises(UserError, match=r"'model.ch' \(32 in the run, 16 given\); pass --dir$"):
        config.check_resume(STORED, given, (), "d", hint="pass --dir")


def _rate_configs():
    """(load(overrides), dotted key) of every learning rate and clip norm of the training configs."""
    from pipeline.ddss.config import load as ddss_load
    from pipeline.distill.config import load as distill_load
    from pipeline.teacher.config import load_config as teacher_load

    teacher, distill = (lambda o: teacher_load(None, o)), (lambda o: distill_load(None, o))
    ddss = lambda o: ddss_load({"gmm": "ring2d"}, o)  # noqa: E731
    return [(teacher, "train.lr"), (teacher, "train.grad_clip"), (distill, "stage1.lr"), (distill, "rounds.lr"),
            (distill, "grad_clip"), (ddss, "learning_rate"), (ddss, "clip_norm")]


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 0.0, -1.0])
def test_learning_rates_and_clip_norms_must_be_positive_and_finite(value):
    for load, key in _rate_configs():
        load({key: 0.5})
        with pytest.raises(UserError) as e:
            load({key: value})
        assert f"'{key}'" in str(e.value) and "positive finite" in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_sizes_past_any_machine_are_refused_before_any_work():
    """--steps 1e18 or a batch of 1e12 would overflow or run out of memory after starting."""
    from pipeline import ddss
    from pipeline.distill import config as dconfig
    from pipeline.teacher.config import load_config

    for overrides, key in [({"steps": 10**18}, "steps"), ({"batch_size": 10**12}, "batch_size"),
                           ({"eval_samples": 10**12}, "eval_samples"), ({"seed": 2**32}, "seed")]:
        with pytest.raises(UserError, match=f"'{key}': must be in"):
            ddss.load_config({"gmm": "ring2d", **overrides})
    for overrides, key in [({"train.batch_size": 10**12}, "train.batch_size"), ({"sample.per_class": 2**63}, "sample.per_class"),
                           ({"train.steps": 10**18}, "train.steps"), ({"sample.batch_size": 10**12}, "sample.batch_size")]:
        with pytest.raises(UserError, match=f"'{key}': must be in"):
            load_config(None, overrides)
    with pytest.raises(UserError, match="'start_steps'"):
        dconfig.load({"teacher": "t", "start_steps": 2**40})
    with pytest.raises(UserError, match="'stage1.batch'"):
        dconfig.load({"teacher": "t", "stage1": {"batch": 10**12}})


@pytest.mark.parametrize("text, where", [
    ("a: 1\nb: c: d\n", "at line 2, column 5: mapping values are not allowed here"),
    ("a: 1\nb: [1, 2\n", "at line 3, column 1: expected ',' or ']', but got '<stream end>' "
                          "(while parsing a flow sequence at line 2, column 4)"),
    ("a:\n  - 1\n - 2\n", "at line 3, column 2: expected <block end>, but found '<block sequence start>' "
                          "(while parsing a block mapping at line 1, column 1)"),
    ("a: 1\n\tb: 2\n", "at line 2, column 1: found character '\\t' that cannot start any token"),
])
def test_yaml_syntax_errors_give_line_and_column(tmp_path, text, where):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(UserError) as e:
        config.load_yaml(bad)
    assert str(e.value).startswith(f"config {bad} is not valid YAML {where}"), str(e.value)
    assert "\n" not in str(e.value)


def test_a_multi_line_set_value_gives_line_and_column():
    with pytest.raises(UserError) as e:
        config.parse_sets(["a=x\n b: c"])
    assert str(e.value) == "--set 'a=x\\n b: c': the value is not valid YAML at line 2, column 3: " \
                           "mapping values are not allowed here"


def test_default_configs_are_found_from_any_directory(tmp_path, monkeypatch):
    """configs/NAME.yaml not found here is read from the package's copy; any other missing path
    (another folder, another name) is still an error."""
    from importlib import resources

    monkeypatch.chdir(tmp_path)
    shipped = resources.files("pipeline") / "configs" / "tiny.yaml"
    assert config.load_yaml("configs/tiny.yaml") == config.load_yaml(str(shipped)) == {"tasks": 4, "n": 1000, "sleep_s": 0.0}
    assert config.load_yaml("./configs/tiny.yaml")["tasks"] == 4
    for missing in ("configs/nope.yaml", "tiny.yaml", "my/configs/tiny.yaml", str(tmp_path / "configs/tiny.yaml"),
                    "configs/../configs/nope.yaml", "configs/sub/tiny.yaml"):
        with pytest.raises(UserError, match=f"^config file not found: {missing}$"):
            config.load_yaml(missing)
    (tmp_path / "configs").mkdir()  # a configs/ of one's own comes first
    (tmp_path / "configs" / "tiny.yaml").write_text("tasks: 7\n")
    assert config.load_yaml("configs/tiny.yaml") == {"tasks": 7}
