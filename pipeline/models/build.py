"""A Flax module from its config: `model.import_path: "pkg.mod:Class"` and `model.kwargs`.

The module has the call contract of pipeline.models.unet.UNet:
`apply({"params": p}, x [B,H,W,C], t [B], y [B] (num_classes = null), w=None, train=bool)` -> eps.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from pipeline import config
from pipeline.errors import UserError


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    import_path: str = "pipeline.models.unet:UNet"  # "package.module:Class"
    kwargs: Any = dataclasses.field(default_factory=dict)  # the class's constructor arguments

    def validate(self):
        module, sep, name = self.import_path.partition(":")
        config.check(bool(module and sep and name), "model.import_path", f"must be 'package.module:Class', got {self.import_path!r}")
        config.check(isinstance(self.kwargs, dict) and all(isinstance(k, str) for k in self.kwargs),
                     "model.kwargs", "must be a mapping of argument names to values")


def import_object(path: str):
    """The object named by "package.module:Name"."""
    module, _, name = path.partition(":")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"model.import_path {path!r} cannot be imported: {e}") from None
    return obj


def build_model(cfg: ModelConfig, num_classes: int):
    """The Flax module of the config; its num_classes (if it takes one) must match the data's,
    and is set to the data's when model.kwargs does not give it."""
    kwargs = dict(cfg.kwargs)
    if "num_classes" in kwargs and kwargs["num_classes"] != num_classes:
        raise UserError(f"config key 'model.kwargs.num_classes' is {kwargs['num_classes']}, but the data has {num_classes} classes")
    for k in ("ch_mult", "attn_resolutions"):  # YAML lists -> the hashable tuples Flax fields need
        if isinstance(kwargs.get(k), list):
            kwargs[k] = tuple(kwargs[k])
    cls = import_object(cfg.import_path)
    if "num_classes" not in kwargs and dataclasses.is_dataclass(cls) and any(
            f.name == "num_classes" for f in dataclasses.fields(cls)):
        kwargs["num_classes"] = num_classes  # else labels past the module's default class count would be clamped
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise UserError(f"config key 'model.kwargs' does not fit {cfg.import_path}: {e}") from None
