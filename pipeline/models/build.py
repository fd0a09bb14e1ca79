"""A Flax module from its config: `model.import_path: "pkg.mod:Class"` and `model.kwargs`.

The module has the call contract of pipeline.models.unet.UNet:
`apply({"params": p}, x [B,H,W,C], t [B], y [B] (num_classes = null), w=None, train=bool)` -> eps.

A config.yaml may come from a shared run directory, so an import path is not trusted: its
module must be the project's own (`pipeline.`) or under a package the user allowed, in the
environment variable DDSS_ALLOW_MODULES="pkg1,pkg2" (`ddss ... --allow-module PKG` adds to
it), checked before the module is imported; and the name must be a flax.linen.Module
subclass, checked before it is called.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any

from pipeline import config
from pipeline.errors import UserError

ALLOW_ENV = "DDSS_ALLOW_MODULES"  # comma-separated packages (or modules) whose models may be built
PROJECT = "pipeline"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    import_path: str = "pipeline.models.unet:UNet"  # "package.module:Class"
    kwargs: Any = dataclasses.field(default_factory=dict)  # the class's constructor arguments

    def validate(self):
        module, sep, name = self.import_path.partition(":")
        config.check(bool(sep) and _dotted(module) and name.isidentifier(), "model.import_path",
                     f"must be 'package.module:Class', got {self.import_path!r}")
        check_allowed(self.import_path)
        config.check(isinstance(self.kwargs, dict) and all(isinstance(k, str) for k in self.kwargs),
                     "model.kwargs", "must be a mapping of argument names to values")


def _dotted(module: str) -> bool:
    return bool(module) and all(part.isidentifier() for part in module.split("."))


def allowed_modules() -> list[str]:
    """The packages whose models may be built: the project's own, then DDSS_ALLOW_MODULES's."""
    extra = [m.strip() for m in os.environ.get(ALLOW_ENV, "").split(",")]
    return [PROJECT] + [m for m in extra if m]


def allow_modules(names) -> None:
    """Add packages to DDSS_ALLOW_MODULES (for this process and the processes it starts)."""
    have = allowed_modules()[1:]
    for name in names:
        if not _dotted(name):
            raise UserError(f"--allow-module {name!r}: give a package or module name, e.g. mypkg or mypkg.models")
        if name not in have:
            have.append(name)
    os.environ[ALLOW_ENV] = ",".join(have)


def check_allowed(path: str) -> None:
    """A one-line UserError unless the module of "package.module:Class" is under an allowed
    package (nothing is imported)."""
    module = path.partition(":")[0]
    if not any(module == p or module.startswith(p + ".") for p in allowed_modules()):
        raise UserError(f"model.import_path {path!r} is not allowed: only models from pipeline or from packages "
                        f"named by --allow-module PKG or {ALLOW_ENV}=PKG[,PKG] are built; allow {module.split('.')[0]!r} "
                        "that way only if you trust its code")


def import_object(path: str):
    """The flax.linen.Module subclass named by "package.module:Class", its module checked
    against the allowed packages before it is imported."""
    import flax.linen as nn

    module, _, name = path.partition(":")
    if not (_dotted(module) and name.isidentifier()):
        raise UserError(f"model.import_path must be 'package.module:Class', got {path!r}")
    check_allowed(path)
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"model.import_path {path!r} cannot be imported: {e}") from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        what = "a class" if isinstance(obj, type) else f"a {type(obj).__name__}"
        raise UserError(f"model.import_path {path!r} is {what}, not a flax.linen.Module subclass")
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
