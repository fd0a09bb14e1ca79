"""A Flax module from its config: num_classes from the data, YAML lists as tuples, and bad
import paths or arguments as one UserError line."""
import pytest

from pipeline import config
from pipeline.errors import UserError
from pipeline.models.build import ModelConfig, build_model, import_object
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
