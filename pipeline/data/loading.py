"""A teacher's data set from its config: scikit-learn's digits, the user's own .npz files, or none
(a teacher imported by `ddss import-teacher` without data: it samples, but nothing that needs
data runs on it)."""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from pipeline import config
from pipeline.errors import UserError, choose

DATASETS = ("digits", "npz", "none")
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The training data: scikit-learn's digits, or the user's own .npz files (name: npz)."""

    name: str = "digits"  # digits | npz | none (an imported teacher without data)
    path: str = dataclasses.field(default="", metadata=config.PATH)  # npz: the training .npz (required)
    test_path: str = dataclasses.field(default="", metadata=config.PATH)  # npz: the held-out .npz, the evaluation reference (empty: path itself, i.e. the training images)
    key: str = "images"  # npz: the images array, uint8 [N, H, W, C] in [0, 255] or float in [-1, 1]
    labels_key: str = "labels"  # npz: the integer labels array; "": unconditional (every label 0, one class, null class 1)

    def validate(self):
        config.check(self.name in DATASETS, "data.name", f"must be one of {', '.join(DATASETS)}, got {self.name!r}")
        if self.name == "npz":
            config.check(bool(self.path), "data.path", "data.name npz needs the training .npz file (--set data.path=FILE)")
            config.check(bool(self.key), "data.key", "must name the images array in the .npz")
            return
        for f in ("path", "test_path", "key", "labels_key"):  # a .npz setting with digits would be ignored: refuse it
            default = type(self).__dataclass_fields__[f].default
            config.check(getattr(self, f) == default, f"data.{f}", f"applies only to data.name npz (data.name is {self.name!r})")


def require_data(cfg: DataConfig, what: str) -> None:
    """A one-line UserError when `what` (e.g. "ddss evaluate") needs the data set of a teacher
    that has none (data.name none: imported by `ddss import-teacher` without data)."""
    if cfg.name == "none":
        raise UserError(f"{what} needs the teacher's data set, but it has none (data.name: none, imported by "
                        "ddss import-teacher without data); import it with --set data.name=npz --set data.path=TRAIN.npz "
                        "--set data.test_path=TEST.npz (ddss sample needs no data)")


def load_data(cfg: DataConfig, split: str):
    """(images [N,H,W,C] float32 in [-1, 1], labels [N] int32) of a data set split: digits, or
    for npz the file data.path ("train") or data.test_path, default data.path ("test")."""
    choose("data set", cfg.name, DATASETS)
    require_data(cfg, "this command")
    if cfg.name == "digits":
        from pipeline.data.digits import load_digits

        images, labels = load_digits(split)
        return np.asarray(images, np.float32), np.asarray(labels, np.int32)
    from pipeline.data.arrays import load_npz

    choose("data split", split, SPLITS)
    key, path = ("data.test_path", cfg.test_path) if split == "test" and cfg.test_path else ("data.path", cfg.path)
    if not os.path.isfile(path):
        raise UserError(f"config key {key!r}: {path!r} is not a file")
    images, labels = load_npz(path, cfg.key, cfg.labels_key or None)
    if len(images) == 0:
        raise UserError(f"config key {key!r}: {path}[{cfg.key!r}] holds no images")
    if labels is None:
        labels = np.zeros(len(images), np.int32)  # unconditional: one class (the null label is 1)
    return np.asarray(images, np.float32), np.asarray(labels, np.int32)


def check_data(cfg: DataConfig) -> tuple[tuple, int]:
    """(image shape [H, W, C], class count) of the training data, after loading both splits once,
    so that a missing or bad .npz (or a test split of another image shape) fails with one line
    before a run directory is made."""
    train_x, train_y = load_data(cfg, "train")
    if cfg.name != "digits":
        test_x, _ = load_data(cfg, "test")
        if test_x.shape[1:] != train_x.shape[1:]:
            raise UserError(f"config key 'data.test_path': its images are {'x'.join(map(str, test_x.shape[1:]))}, "
                            f"the training images {'x'.join(map(str, train_x.shape[1:]))}")
    return tuple(train_x.shape[1:]), int(train_y.max()) + 1
