"""A Flax module from its config: num_classes from the data, YAML lists as tuples, and bad
import paths or arguments as one UserError line."""
import os

import pytest

from pipeline import config
from pipeline.errors import UserError
from pipeline.models.build import ALLOW_ENV, ModelConfig, build_model, import_object
from pipeline.models.mlp import MLPDenoiser
from pipeline.models.unet import UNet


def test_num_classes_comes_from_the_data_and_must_agree_with_it():
    assert build_model(ModelConfig(kwargs={"ch": 8}), 7) == UNet(ch=8, num_classes=7)
    mlp = ModelConfig(import_path="pipeline.models.mlp:MLPDenoiser", kwargs={"hidden": 16, "num_classes": 3})
    assert build_model(mlp, 3) == MLPDenoiser(hidden=16, num_classes=3)
    with pytest.raises(UserError) as e:
        build_model(mlp, 10)
    assert str(e.value) == "config key 'model.kwargs.num_classes' is 3, but the data has 10 classes"


def test_yaml_lists_become_tuples():
    cfg = config.load(ModelConfig, {"kwargs": {"ch": 8, "ch_mult": [1, 2], "attn_resolutions": [4]}})
    model = build_model(cfg, 10)
    assert model.ch_mult == (1, 2) and model.attn_resolutions == (4,)
    hash(model)  # Flax modules must be hashable: a list field would raise here


@pytest.mark.parametrize("call, needle", [
    (lambda: import_object("pipeline.models.nowhere:UNet"), "'pipeline.models.nowhere:UNet' cannot be imported"),
    (lambda: import_object("pipeline.models.unet:Nothing"), "'pipeline.models.unet:Nothing' cannot be imported"),
    (lambda: config.load(ModelConfig, {"import_path": "pipeline.models.unet.UNet"}), "'model.import_path'"),
    (lambda: build_model(ModelConfig(kwargs={"chh": 8}), 10), "'model.kwargs' does not fit pipeline.models.unet:UNet"),
])
def test_bad_import_path_or_arguments_is_one_line(call, needle):
    with pytest.raises(UserError) as e:
        call()
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


# -- a config.yaml may come from a shared run directory: it names a Module class, never runs code --

USER_MODEL = '''
import flax.linen as nn
open(__file__ + ".imported", "w").close()  # importing a module runs its code

class Eps(nn.Module):
    width: int = 4

    @nn.compact
    def __call__(self, x, t, y=None, w=None, train=False):
        return nn.Dense(x.shape[-1])(x)

def not_a_module(**kw):
    open(__file__ + ".called", "w").close()
'''


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """A package `ddss_user_models` outside pipeline/ on sys.path, not yet imported, nothing allowed."""
    import sys

    (tmp_path / "ddss_user_models").mkdir()
    (tmp_path / "ddss_user_models" / "__init__.py").write_text("")
    (tmp_path / "ddss_user_models" / "nets.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    yield tmp_path / "ddss_user_models"
    for name in [m for m in sys.modules if m.split(".")[0] == "ddss_user_models"]:
        del sys.modules[name]


def test_a_module_outside_the_allowed_packages_is_refused_before_it_is_imported(user_package):
    path = "ddss_user_models.nets:Eps"
    for call in (lambda: config.load(ModelConfig, {"import_path": path}), lambda: import_object(path),
                 lambda: build_model(ModelConfig(import_path=path), 10)):
        with pytest.raises(UserError) as e:
            call()
        assert str(e.value) == (f"model.import_path {path!r} is not allowed: only models from pipeline or from packages "
                                f"named by --allow-module PKG or {ALLOW_ENV}=PKG[,PKG] are built; allow "
                                "'ddss_user_models' that way only if you trust its code")
    assert not (user_package / "nets.py.imported").exists()


def test_an_allowed_package_s_module_class_is_built(user_package, monkeypatch):
    monkeypatch.setenv(ALLOW_ENV, "other, ddss_user_models")
    model = build_model(config.load(ModelConfig, {"import_path": "ddss_user_models.nets:Eps", "kwargs": {"width": 3}}), 10)
    assert type(model).__name__ == "Eps" and model.width == 3
    monkeypatch.setenv(ALLOW_ENV, "ddss_user_models.nets")  # a module, not only a package, may be named
    assert import_object("ddss_user_models.nets:Eps") is type(model)
    monkeypatch.setenv(ALLOW_ENV, "ddss_user_model")  # a prefix of the name is not its package
    with pytest.raises(UserError, match="is not allowed"):
        import_object("ddss_user_models.nets:Eps")


@pytest.mark.parametrize("path, what", [
    ("ddss_user_models.nets:not_a_module", "a function"),
    ("pipeline.models.build:ModelConfig", "a class"),
    ("pipeline.rundir:prepare", "a function"),
    ("pipeline.models.build:ALLOW_ENV", "a str"),
])
def test_an_import_path_that_is_no_module_class_is_refused_before_it_is_called(path, what, user_package, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setenv(ALLOW_ENV, "ddss_user_models")
    cfg = config.load(ModelConfig, {"import_path": path, "kwargs": {"run_dir": str(tmp_path / "made")}})
    with pytest.raises(UserError) as e:
        build_model(cfg, 10)
    assert str(e.value) == f"model.import_path {path!r} is {what}, not a flax.linen.Module subclass"
    assert not (tmp_path / "made").exists() and not (user_package / "nets.py.called").exists()


def test_a_teacher_whose_config_names_os_system_is_refused_and_runs_nothing(teachers, tmp_path, monkeypatch, capsys):
    """The issue's run directory: model {import_path: "os:system", kwargs: {command: ...}}."""
    import shutil

    from helpers import one_line_exit_2
    from pipeline import rundir

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    teacher = str(shutil.copytree(teachers["good"], tmp_path / "shared"))
    cfg = rundir.read_config(teacher)
    rundir.write_config(teacher, {**cfg, "model": {"import_path": "os:system", "kwargs": {"command": "id > pwned.txt"}}})
    one_line_exit_2(["sample", "--teacher", teacher, "--steps", "2", "--num-samples", "4", "--out", "s.npz"], capsys,
                    "model.import_path 'os:system' is not allowed", "--allow-module PKG")
    # allowing `os` does not make os.system a model either
    one_line_exit_2(["sample", "--allow-module", "os", "--teacher", teacher, "--steps", "2", "--num-samples", "4",
                     "--out", "s.npz"], capsys, "'os:system' is a builtin_function_or_method, not a flax.linen.Module")
    assert sorted(os.listdir(tmp_path)) == ["shared"]
