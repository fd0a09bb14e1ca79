"""A teacher's data set from its config: .npz splits, unconditional data, and the up-front check
of both splits (npz_files: tests/cli_fixtures.py)."""
import numpy as np
import pytest

from pipeline.data import loading
from pipeline.errors import UserError
from pipeline.models import build
from pipeline.teacher import config as tconfig


def test_npz_splits_and_unconditional_data(npz_files, tmp_path):
    train_npz, test_npz = npz_files
    cfg = tconfig.load_config(None, {"data.name": "npz", "data.path": str(train_npz)})
    assert cfg.data.test_path == "" and cfg.data.key == "images" and cfg.data.labels_key == "labels"
    x, y = loading.load_data(cfg.data, "train")
    assert x.shape == (300, 8, 8, 1) and x.dtype == np.float32 and y.dtype == np.int32
    assert x.min() == -1.0 and x.max() == 1.0
    x_test, _ = loading.load_data(cfg.data, "test")  # no test_path: the training file
    np.testing.assert_array_equal(x_test, x)
    with_test = tconfig.load_config(None, {"data.name": "npz", "data.path": str(train_npz), "data.test_path": str(test_npz)})
    assert loading.load_data(with_test.data, "test")[0].shape == (120, 8, 8, 1)

    unconditional = tconfig.load_config(None, {"data.name": "npz", "data.path": str(train_npz), "data.labels_key": ""})
    _, y = loading.load_data(unconditional.data, "train")
    assert y.dtype == np.int32 and not y.any()  # every label 0: one class, null class 1
    assert build.build_model(unconditional.model, int(y.max()) + 1).num_classes == 1

    with pytest.raises(UserError, match="data.path"):  # a .npz setting with digits would be ignored
        tconfig.load_config(None, {"data.path": str(train_npz)})
    with pytest.raises(UserError, match="'data.test_path'"):
        loading.load_data(tconfig.load_config(None, {"data.name": "npz", "data.path": str(train_npz),
                                                 "data.test_path": str(tmp_path / "no.npz")}).data, "test")


def test_check_data_reads_both_splits_and_compares_their_shapes(npz_files, tmp_path):
    train_npz, test_npz = npz_files
    assert loading.check_data(loading.DataConfig()) == ((8, 8, 1), 10)  # the image shape and class count
    assert loading.check_data(loading.DataConfig(name="npz", path=str(train_npz), test_path=str(test_npz))) == ((8, 8, 1), 10)
    small = tmp_path / "small.npz"
    np.savez(small, images=np.zeros((3, 4, 4, 1), np.uint8), labels=np.zeros(3, np.int64))
    with pytest.raises(UserError) as e:
        loading.check_data(loading.DataConfig(name="npz", path=str(train_npz), test_path=str(small)))
    assert str(e.value) == "config key 'data.test_path': its images are 4x4x1, the training images 8x8x1"
    negative = tmp_path / "negative.npz"
    np.savez(negative, images=np.zeros((3, 8, 8, 1), np.uint8), labels=np.array([0, -1, 2]))
    with pytest.raises(UserError, match="labels must be >= 0, got -1"):
        loading.check_data(loading.DataConfig(name="npz", path=str(negative)))
