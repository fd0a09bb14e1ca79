"""A searched sampler as a named artefact: a directory with the GGDM parameters as params.npz
(plain arrays, no pickle) and meta.json (K, variant, schedule, teacher, the initial grid's stride
and t_max, search figures, and params_sha256: the SHA-256 of params.npz, verified on load; older
artefacts have none).

    samplers.sample("ggdm", eps_fn, sched, x_T, steps=K, key=key, params=load_ggdm(path))
    ddss evaluate --sampler ggdm:PATH ...
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os

import numpy as np

from pipeline.data.arrays import read_npz
from pipeline.errors import UserError
from pipeline.io import atomic_dir
from pipeline.samplers import ggdm

PARAMS = "params.npz"
META = "meta.json"
FORMAT = "ddss-ggdm/1"


def save_artefact(path, params, meta: dict) -> str:
    """Write the artefact directory `path` atomically (a temporary sibling renamed); an existing
    path is never overwritten (UserError)."""
    path = os.path.abspath(os.fspath(path))
    with atomic_dir(path, "sampler artefact") as tmp:
        variant = ggdm.variant_of(params)
        arrays = {k: np.asarray(v) for k, v in params.items()}
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        data = buf.getvalue()
        meta = {"format": FORMAT, "sampler": "ggdm", "variant": variant, "K": ggdm.num_steps(arrays), **meta,
                "params_sha256": hashlib.sha256(data).hexdigest()}
        with open(os.path.join(tmp, PARAMS), "wb") as f:
            f.write(data)
        with open(os.path.join(tmp, META), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
            f.write("\n")
    return path


def load_artefact(path) -> dict:
    """{"params": GGDM parameters (NumPy arrays), "meta": the metadata} of an artefact directory
    (or of a search run directory, whose artefact is RUN_DIR/sampler)."""
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, META)) and os.path.isfile(os.path.join(path, "sampler", META)):
        path = os.path.join(path, "sampler")
    if not os.path.isfile(os.path.join(path, META)) or not os.path.isfile(os.path.join(path, PARAMS)):
        raise UserError(f"{path} is not a DDSS sampler artefact (needs {META} and {PARAMS})")
    try:
        with open(os.path.join(path, META), "rb") as f:
            meta = json.loads(f.read())
        with open(os.path.join(path, PARAMS), "rb") as f:
            data = f.read()
    except (OSError, ValueError, RecursionError) as e:  # ValueError: not JSON or not UTF-8
        raise UserError(f"sampler artefact {path} is unreadable: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    recorded = meta.get("params_sha256") if isinstance(meta, dict) else None
    if recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
        raise UserError(f"sampler artefact {path} is unreadable (corrupt): {PARAMS} checksum mismatch, "
                        f"its SHA-256 differs from meta.json's params_sha256")
    try:  # an .npz of plain arrays: not empty, not a bare .npy, no pickles
        params = read_npz(os.path.join(path, PARAMS), what=PARAMS, data=data)
    except UserError as e:
        raise UserError(f"sampler artefact {path} is unreadable: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise UserError(f"sampler artefact {path} has format {found!r}, expected {FORMAT!r}")
    _check_meta(path, meta)
    _check_params(path, params)
    variant = ggdm.variant_of(params)
    if variant != meta.get("variant") or ggdm.num_steps(params) != meta.get("K"):
        raise UserError(f"sampler artefact {path}: params.npz ({variant}, K={ggdm.num_steps(params)}) "
                        f"disagrees with meta.json ({meta.get('variant')}, K={meta.get('K')})")
    return {"params": params, "meta": meta}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# meta.json keys the artefact's users read: (test, what it must be); absent or null: not recorded
_META_TYPES = {
    "sampler": (lambda v: v == "ggdm", '"ggdm"'),
    "variant": (lambda v: isinstance(v, str), "a string"),
    "K": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
    "schedule": (lambda v: v is None or isinstance(v, str), "a schedule name"),
    "data_shape": (lambda v: v is None or (isinstance(v, list) and bool(v) and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in v)), "a list of positive integers"),
    "guidance": (lambda v: v is None or (_number(v) and math.isfinite(v)), "a finite number"),
    "stride": (lambda v: v is None or isinstance(v, str), "a stride name"),
    "t_max": (lambda v: v is None or (_number(v) and 0.0 < v <= 1.0), "a number in (0, 1]"),
    "clip_x0": (lambda v: v is None or isinstance(v, bool), "true or false"),
}


def _check_meta(path, meta: dict):
    """UserError unless meta.json's values have the types its readers expect."""
    for key, (ok, what) in _META_TYPES.items():
        if key in meta and not ok(meta[key]):
            shown = repr(meta[key])
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise UserError(f"sampler artefact {path}: meta.json {key!r} must be {what}, got {shown}")


def _check_params(path, params: dict):
    """UserError unless params are one GGDM variant's float arrays, of one K, all finite (t_max: a
    scalar in (0, 1])."""
    try:
        ggdm.variant_of(params)
    except UserError as e:
        raise UserError(f"sampler artefact {path}: {e}") from None
    K = np.shape(params["sigma"])[0] if np.ndim(params["sigma"]) == 1 else 0
    for name, value in sorted(params.items()):
        want = (K, K) if name in ("mu_x", "mu_pred") else () if name == "t_max" else (K,)
        if not K or np.shape(value) != want:
            raise UserError(f"sampler artefact {path}: {name} has shape {np.shape(value)}, expected "
                            f"{list(want) if K else '[K] (sigma is a vector of K noise scales)'}")
        if not np.issubdtype(value.dtype, np.floating) or not np.all(np.isfinite(value)):
            raise UserError(f"sampler artefact {path}: {name} holds non-finite or non-float values")
    if "t_max" in params and not 0.0 < float(params["t_max"]) <= 1.0:
        raise UserError(f"sampler artefact {path}: t_max is {float(params['t_max'])}, expected a time in (0, 1]")


def load_ggdm(path) -> dict:
    """The GGDM parameters of an artefact, ready for samplers.sample("ggdm", ..., params=...)."""
    return load_artefact(path)["params"]


def plan(path: str, model):
    """The evaluation Plan of "ggdm:PATH": the artefact's parameters for `model`, checked against
    its schedule and data shape; the guidance weight it was searched at is the default w, and it
    runs with the x0 clipping it was searched with (meta clip_x0; older artefacts: the spec's)."""
    from pipeline.evaluation.evaluator import check_made_for
    from pipeline.evaluation.spec import Plan

    art = load_artefact(path)
    meta = art["meta"]
    check_made_for(f"DDSS sampler artefact {path}", model, schedule=meta.get("schedule"), data_shape=meta.get("data_shape"))
    return Plan(kwargs={"params": art["params"]}, steps=ggdm.num_steps(art["params"]), w=meta.get("guidance"),
                clip_x0=meta.get("clip_x0"))
