"""A trained teacher, ready to sample: `load_teacher(run_dir)` reads the run's config, the data
shape and class count it recorded, and the EMA weights of its latest checkpoint (nothing else:
no optimizer, no data set).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pipeline import checkpoint, io, rundir, schedules
from pipeline.errors import UserError
from pipeline.models import denoiser
from pipeline.models.build import build_model
from pipeline.teacher.config import TeacherConfig, load_config

RECORD = "teacher.json"  # RUN_DIR/teacher.json: {"data_shape": [H, W, C], "num_classes": N}


@dataclasses.dataclass(frozen=True, eq=False)
class Teacher:
    """A trained teacher: `eps_fn(y, w)` is the denoiser eps_fn(x, t) for labels y."""

    model: Any
    params: Any  # the EMA parameters (the model's "params" collection)
    schedule: schedules.Schedule
    config: TeacherConfig
    data_shape: tuple
    num_classes: int  # the label value num_classes is the null (unconditional) label
    step: int

    @property
    def default_w(self) -> float:
        """The guidance weight eps_fn uses when given none (config sample.guidance)."""
        return self.config.sample.guidance

    def apply_fn(self, variables, x, t, y, w=None):
        """The network: eps(x, t, y[, w]) with variables {"params": ...} (pipeline.models.denoiser's contract)."""
        return self.model.apply(variables, x, t, y, w)

    def eps_fn(self, y, w=None, params=None, clip_x0: bool = True):
        """eps_fn(x, t) for labels y ([B] or scalar; None: unconditional) with classifier-free
        guidance w (None: default_w; 0: the conditional model); params: other parameters of
        the same model (default: the teacher's EMA parameters); clip_x0: the data prediction
        clipped to the data's range [-1, 1] (denoiser.clip_x0_eps_fn)."""
        variables = {"params": self.params if params is None else params}
        w = self.default_w if w is None else w
        y = denoiser.null_label(self.num_classes) if y is None else y
        if np.ndim(w) == 0 and float(w) == 0.0:
            fn = denoiser.conditional_eps_fn(self.apply_fn, variables, y)
        else:
            fn = denoiser.guided_eps_fn(self.apply_fn, variables, y, w, self.num_classes)
        return denoiser.clip_x0_eps_fn(fn, self.schedule) if clip_x0 else fn


def init_params(model, data_shape, key):
    """The model's initial "params" for inputs of data_shape."""
    x = jnp.zeros((1,) + tuple(data_shape), jnp.float32)
    return model.init(key, x, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))["params"]


def write_record(run_dir, data_shape, num_classes: int):
    """Record the data shape and class count the teacher is trained for (RUN_DIR/teacher.json)."""
    io.atomic_write_text(os.path.join(os.fspath(run_dir), RECORD),
                         json.dumps({"data_shape": list(data_shape), "num_classes": int(num_classes)}) + "\n")


def read_record(run_dir, cfg: TeacherConfig) -> tuple[tuple, int]:
    """(data_shape, num_classes) the teacher of run_dir was trained for; a run written before
    the record existed learns them from its training split."""
    path = os.path.join(os.fspath(run_dir), RECORD)
    if os.path.isfile(path):
        with open(path) as f:
            rec = json.load(f)
        return tuple(int(d) for d in rec["data_shape"]), int(rec["num_classes"])
    from pipeline.data.loading import load_data

    images, labels = load_data(cfg.data, "train")
    return tuple(images.shape[1:]), int(labels.max()) + 1


def load_teacher(run_dir) -> Teacher:
    """The teacher trained in `run_dir` (its config.yaml and latest checkpoint, EMA weights)."""
    run_dir = rundir.require_run_dir(run_dir, "teacher")
    cfg = load_config(rundir.read_config(run_dir))
    data_shape, num_classes = read_record(run_dir, cfg)
    model = build_model(cfg.model, num_classes)
    ck_dir = rundir.checkpoint_dir(run_dir)
    if not os.path.isdir(ck_dir):
        raise UserError(f"no checkpoint in {ck_dir}: the teacher has not been trained")
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # whatever topology saved it
    shapes = jax.eval_shape(lambda: init_params(model, data_shape, jax.random.key(0)))
    target = {"ema": jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=one), shapes),
              "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=one)}
    state = checkpoint.read_subtree(ck_dir, target)
    return Teacher(model, state["ema"], schedules.get(cfg.schedule), cfg, data_shape, num_classes, int(state["step"]))
