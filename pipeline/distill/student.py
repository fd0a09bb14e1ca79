"""A finished student, ready to sample: `load_student(path)` and the evaluation artefact loader.

    st = load_student("runs/teacher-x/distill@4")        # the finished 4-step round (ROOT@STEPS),
                                                          # ROOT: its last finished round; or a round dir
    eps_fn = st.eps_fn(y, w=2.0)                          # one evaluation per step, guided by w
    x0 = samplers.sample("student-ddim", eps_fn, st.schedule, x_T, st.steps, grid=st.grid)

Always sample on `st.grid` (the grid the student was distilled on; it starts at t_start < 1).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from pipeline import rundir
from pipeline.distill import config as dconfig
from pipeline.distill import losses, rounds
from pipeline.errors import UserError


@dataclasses.dataclass(frozen=True, eq=False)
class Student:
    """A w-conditioned student of `round` (its teacher-like interface: schedule, data_shape,
    num_classes, eps_fn(y, w))."""

    teacher: Any  # pipeline.train.Teacher: the network, schedule and data of the base teacher
    params: Any
    round: int
    steps: int
    grid: np.ndarray  # steps + 1 decreasing times from t_start to 0

    @property
    def schedule(self):
        return self.teacher.schedule

    @property
    def data_shape(self) -> tuple:
        return self.teacher.data_shape

    @property
    def num_classes(self) -> int:
        return self.teacher.num_classes

    def eps_fn(self, y, w=None, clip_x0: bool = True):
        """The student's eps_fn(x, t) for labels y at guidance w (None: the teacher's default w),
        its data prediction clipped to [-1, 1] like the teacher's (denoiser.clip_x0_eps_fn)."""
        from pipeline.models import denoiser

        w = self.teacher.default_w if w is None else w
        y = denoiser.null_label(self.num_classes) if y is None else y
        fn = denoiser.student_eps_fn(self.teacher.apply_fn, {"params": self.params}, y, w)
        return denoiser.clip_x0_eps_fn(fn, self.schedule) if clip_x0 else fn


def _finished_rounds(root: str) -> list[tuple[int, int]]:
    """(round, steps) of the finished rounds under a distillation root, in round order."""
    names = sorted(os.listdir(root)) if os.path.isdir(root) else []
    out = []
    for r in (int(n[6:]) for n in names if n.startswith("round-") and n[6:].isdigit()):
        if rounds.is_finished(root, r):
            steps = rundir.read_config(rounds.round_dir(root, r)).get("steps")
            out.append((r, steps))
    return out


def _round_dir(path: str) -> str:
    """The round directory `path` names: a round directory itself, ROOT@STEPS (the finished round
    of ROOT whose student takes STEPS steps), or ROOT (its last finished round)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(os.path.join(path, rounds.STUDENT)):
        return path
    root, at, steps = path.rpartition("@")
    if not (at and steps.isdigit() and not os.path.isdir(path)):
        root, steps = path, None
    finished = _finished_rounds(root)
    if not finished:
        raise UserError(f"{root} holds no finished distillation round (ddss distill writes ROOT/round-RR/student)")
    if steps is None:
        return rounds.round_dir(root, finished[-1][0])
    for r, n in finished:
        if n == int(steps):
            return rounds.round_dir(root, r)
    have = ", ".join(f"{root}@{n} (round {r})" for r, n in finished)
    raise UserError(f"{root} holds no finished {int(steps)}-step student; its finished rounds: {have}")


def load_student_params(root: str, r: int, like):
    """Round r's finished student parameters, read (never written) into the structure of `like`."""
    import jax
    import jax.numpy as jnp

    from pipeline import checkpoint

    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # whatever topology saved it
    target = {"params": jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a), sharding=one), like)}
    return checkpoint.read_subtree(rounds.student_dir(root, r), target)["params"]


def load_student(path) -> Student:
    """The student of a round directory, of ROOT@STEPS (the finished round of a distillation root
    whose student takes STEPS steps), or of ROOT's last finished round."""
    from pipeline.teacher import model as tmodel

    d = _round_dir(path)
    record = rundir.read_config(d)
    cfg = dconfig.load(record["distill"])
    r = int(record["round"])
    if not rundir.read_results(d).get("finished"):
        raise UserError(f"round {r} in {d} has not finished")
    teacher = tmodel.load_teacher(cfg.teacher)
    params = load_student_params(os.path.dirname(d), r, teacher.params)
    steps = cfg.steps_of(r)
    grid = losses.student_grid(teacher.schedule, steps, cfg.stride, losses.t_start(teacher.schedule, cfg.logsnr_start))
    return Student(teacher, params, r, steps, grid)


def plan(path: str, model):
    """The evaluation Plan of "student-ddim:PATH" / "student-stochastic:PATH": the student's
    eps_fn factory, grid and step count, checked against the model's schedule, data shape and
    classes."""
    from pipeline.evaluation.evaluator import check_made_for
    from pipeline.evaluation.spec import Plan

    st = load_student(path)
    check_made_for(f"student {path}", model, schedule=st.schedule.name, data_shape=st.data_shape,
                   num_classes=st.num_classes)
    return Plan(eps_fn=st.eps_fn, grid=st.grid, steps=st.steps)
