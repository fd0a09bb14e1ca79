"""Configs as data: frozen dataclasses, loaded from YAML and validated once, at the edge.

`load(cls, path_or_dict, overrides)` rejects unknown keys, wrong types and (through the
dataclass's `validate()` method, if it has one) impossible values, each with one
UserError line naming the key. `parse_sets` reads the --set KEY=VALUE overrides of every
command and job; `check_resume` says what a resumed run may change.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from typing import Any

import yaml

from pipeline.errors import UserError
from pipeline.io import atomic_write_text


PATH = {"path": "path"}  # field metadata: a local path, made absolute at load
ARTEFACT = {"path": "artefact"}  # field metadata: NAME or NAME:PATH, the PATH made absolute at load


def local_path(path: str) -> str:
    """`path` made absolute against this process's cwd (Ray workers and actors run elsewhere);
    empty strings and URLs (gs://..., s3://...) unchanged."""
    if not path or "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def _resolve(kind: str, value):
    if not isinstance(value, str):
        return value
    if kind == "artefact":
        name, sep, artefact = value.partition(":")
        return f"{name}:{local_path(artefact)}" if sep and artefact else value
    return local_path(value)


SHIPPED = "configs"  # the default configs: pipeline/configs/*.yaml in the package (and configs/ in a checkout)


def shipped_config(path):
    """The copy inside the installed package of a default config `configs/NAME.yaml` (a
    Traversable), if `path` names one by that relative path; else None."""
    from importlib import resources

    folder, _, name = os.path.normpath(os.fspath(path)).partition(os.sep)
    if folder != SHIPPED or not name.endswith(".yaml") or os.sep in name:
        return None
    shipped = resources.files("pipeline") / SHIPPED / name
    return shipped if shipped.is_file() else None


def yaml_where(e: yaml.YAMLError, lines: bool = True) -> str:
    """Where and what a YAML error is, for "... is not valid YAML<this>": " at line L, column C:
    PROBLEM" (1-based; the column only when not `lines`) when the parser marked it, else ": MESSAGE"."""
    mark = getattr(e, "problem_mark", None)
    if mark is None:
        return f": {str(e).splitlines()[0]}"

    def at(m) -> str:
        return f"line {m.line + 1}, column {m.column + 1}" if lines or m.line else f"column {m.column + 1}"

    text = f" at {at(mark)}: {e.problem or str(e).splitlines()[0]}"
    ctx = getattr(e, "context_mark", None)
    if e.context and ctx is not None and (ctx.line, ctx.column) != (mark.line, mark.column):
        text += f" ({e.context} at {at(ctx)})"
    elif e.context:
        text += f" ({e.context})"
    return text


def load_yaml(path) -> dict:
    """Read a YAML mapping with the safe loader. A default config, `configs/NAME.yaml`, that is
    not found relative to the cwd is read from the copy shipped inside the package."""
    path = os.fspath(path)
    source = path if os.path.isfile(path) else shipped_config(path)
    if source is None:
        raise UserError(f"config file not found: {path}")
    try:
        with (open(source, encoding="utf-8") if isinstance(source, str) else source.open(encoding="utf-8")) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise UserError(f"config {path} is not valid YAML{yaml_where(e)}") from None
    except UnicodeDecodeError as e:  # YAML is UTF-8 text
        raise UserError(f"config {path} is not valid YAML: not UTF-8 text (byte {e.start})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a mapping of keys to values")
    return data


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass `cls` from a nested dict, checking keys and types."""
    if not isinstance(data, dict):
        raise UserError(f"config section {where or cls.__name__!r} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise UserError(f"unknown config key {key!r}; valid keys here: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, key)
    for name, f in fields.items():  # given or default, a local path is made absolute
        if "path" in f.metadata:
            kwargs[name] = _resolve(f.metadata["path"], kwargs.get(name, f.default))
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def _coerce(tp, value, key):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, key)
            except UserError as e:
                errors.append(e)
        raise errors[0]
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {key!r} must be a list, got {value!r}")
        (arg, *_) = typing.get_args(tp) or (Any,)
        return tuple(_coerce(arg, v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"config key {key!r} must be a string, got {value!r}")
        return value
    raise TypeError(f"config type {tp} of {key!r} is not supported")


def load(cls, source=None, overrides: dict | None = None):
    """`cls` from a YAML path or dict (or defaults), then dotted-key overrides ({"train.steps": 10})."""
    data = load_yaml(source) if isinstance(source, (str, os.PathLike)) else copy.deepcopy(dict(source or {}))
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {dotted}: {p!r} is not a section of the config")
        node[leaf] = value
    return from_dict(cls, data)


def to_dict(obj) -> dict:
    """A plain nested dict (lists for tuples), ready for YAML."""

    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(obj)


# Upper bounds of sizes a config may ask for: beyond them a job would only run out of memory or
# overflow after starting (one line before any work instead).
MAX_STEPS = 100_000  # sampling steps, training steps
MAX_SAMPLES = 1_000_000  # samples of an evaluation or a reference
MAX_BATCH = 100_000
MAX_SEED = 2**32 - 1  # JAX folds larger seeds onto smaller ones


def check_range(value, low, high, key: str, note: str = ""):
    """Raise a UserError naming `key` unless low <= value <= high."""
    check(low <= value <= high, key, f"must be in [{low}, {high}]{note}, got {value}")


def check(cond: bool, key: str, message: str):
    """Raise a UserError naming `key` unless `cond` holds (for validate() methods)."""
    if not cond:
        raise UserError(f"config key {key!r}: {message}")


def dump_yaml(obj, path):
    """Write a config (dataclass or dict) as YAML, atomically."""
    data = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def parse_sets(items) -> dict:
    """--set KEY=VALUE items to dotted overrides ({"train.steps": 500}), values read as YAML."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set needs key=value, got {item!r}")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:  # a one-line value: its column says where
            where = yaml_where(e, lines="\n" in value)
            raise UserError(f"--set {item!r}: the value is not valid YAML{where}") from None
    return out


class _Absent:
    def __repr__(self):
        return "nothing"


_ABSENT = _Absent()


def check_resume(stored: dict, given: dict, may_change: tuple[str, ...] = (), where: str = "the run",
                 hint: str = ""):
    """Refuse to resume `where` (stored config) with `given` if they differ in a dotted key that
    does not start with one of `may_change`: a UserError naming the first such key (sorted) and
    both values, then "only ... may change" (or `hint`, if given)."""
    old, new = _flat(stored), _flat(given)
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if a != b and not key.startswith(tuple(may_change)):
            tail = hint or (f"only {', '.join(may_change)} may change" if may_change else "nothing may change")
            raise UserError(f"cannot resume {where} with a different {key!r} ({a!r} in the run, {b!r} given); {tail}")


def _flat(d: dict, prefix: str = "") -> dict:
    """A nested dict as {"a.b.c": leaf}; an empty dict is a leaf."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
