"""A searched sampler as a named artefact: a directory with the GGDM parameters as params.npz
(plain arrays, no pickle) and meta.json (K, variant, schedule, teacher, search figures).

    samplers.sample("ggdm", eps_fn, sched, x_T, steps=K, key=key, params=load_ggdm(path))
    ddss evaluate --sampler ggdm:PATH ...
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

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
        meta = {"format": FORMAT, "sampler": "ggdm", "variant": variant, "K": ggdm.num_steps(arrays), **meta}
        with open(os.path.join(tmp, PARAMS), "wb") as f:
            np.savez(f, **arrays)
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
        with open(os.path.join(path, META)) as f:
            meta = json.load(f)
        with np.load(os.path.join(path, PARAMS), allow_pickle=False) as z:
            params = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"sampler artefact {path} is unreadable: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise UserError(f"sampler artefact {path} has format {found!r}, expected {FORMAT!r}")
    _check_params(path, params)
    variant = ggdm.variant_of(params)
    if variant != meta.get("variant") or ggdm.num_steps(params) != meta.get("K"):
        raise UserError(f"sampler artefact {path}: params.npz ({variant}, K={ggdm.num_steps(params)}) "
                        f"disagrees with meta.json ({meta.get('variant')}, K={meta.get('K')})")
    return {"params": params, "meta": meta}


def _check_params(path, params: dict):
    """UserError unless params are one GGDM variant's float arrays, of one K, all finite."""
    try:
        ggdm.variant_of(params)
    except UserError as e:
        raise UserError(f"sampler artefact {path}: {e}") from None
    K = np.shape(params["sigma"])[0] if np.ndim(params["sigma"]) == 1 else 0
    for name, value in sorted(params.items()):
        want = (K, K) if name in ("mu_x", "mu_pred") else (K,)
        if not K or np.shape(value) != want:
            raise UserError(f"sampler artefact {path}: {name} has shape {np.shape(value)}, expected "
                            f"{list(want) if K else '[K] (sigma is a vector of K noise scales)'}")
        if not np.issubdtype(value.dtype, np.floating) or not np.all(np.isfinite(value)):
            raise UserError(f"sampler artefact {path}: {name} holds non-finite or non-float values")


def load_ggdm(path) -> dict:
    """The GGDM parameters of an artefact, ready for samplers.sample("ggdm", ..., params=...)."""
    return load_artefact(path)["params"]


def plan(path: str, model):
    """The evaluation Plan of "ggdm:PATH": the artefact's parameters for `model`, checked against
    its schedule and data shape; the guidance weight it was searched at is the default w."""
    from pipeline.evaluation.evaluator import check_made_for
    from pipeline.evaluation.spec import Plan

    art = load_artefact(path)
    meta = art["meta"]
    check_made_for(f"DDSS sampler artefact {path}", model, schedule=meta.get("schedule"), data_shape=meta.get("data_shape"))
    return Plan(kwargs={"params": art["params"]}, steps=ggdm.num_steps(art["params"]), w=meta.get("guidance"))
