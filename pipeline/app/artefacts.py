"""Sampler prefix -> the method that reads its artefact: the one module that knows all three
methods. "ggdm:PATH" is a DDSS search's sampler (pipeline.ddss), "student-ddim:PATH" and
"student-stochastic:PATH" a distilled student (pipeline.distill); the training-free samplers
take none. The loaders run where the model is (every evaluation actor), so a spec carries
them as picklable functions.
"""
from __future__ import annotations

import functools

from pipeline.ddss import artefact as ddss_artefact
from pipeline.distill import student as distill_student
from pipeline.errors import UserError
from pipeline.evaluation.spec import EvalSpec, split_sampler

LOADERS = {
    "ggdm": ddss_artefact.plan,
    "student-ddim": distill_student.plan,
    "student-stochastic": distill_student.plan,
}
# the checks of an artefact that need no model (a DDSS artefact read, its checksum verified; a
# student's round directory found), run before any work
CHECKS = {
    "ggdm": ddss_artefact.load_artefact,
    "student-ddim": distill_student._round_dir,
    "student-stochastic": distill_student._round_dir,
}


def plan_loader(sampler: str):
    """The picklable loader model -> Plan of "NAME:ARTEFACT" (None for a plain NAME); a NAME that
    takes no artefact, or one that needs an artefact given none, is a one-line UserError."""
    name, artefact = split_sampler(sampler)
    if artefact is None:
        if name in LOADERS:
            raise UserError(f"sampler {name!r} needs an artefact: {name}:PATH")
        return None
    if name not in LOADERS:
        raise UserError(f"sampler {name!r} takes no artefact (samplers with artefacts: {', '.join(sorted(LOADERS))})")
    return functools.partial(LOADERS[name], artefact)


def check_artefact(sampler: str):
    """The checks of a sampler's artefact that need no model and no computation (run before any
    work): an artefact is given where one is needed and refused where none is taken; then its
    method's CHECKS entry (one-line UserErrors)."""
    if plan_loader(sampler) is not None:
        name, artefact = split_sampler(sampler)
        CHECKS[name](artefact)


def eval_spec(problem, sampler: str, steps: int, num_samples: int, **kw) -> EvalSpec:
    """An EvalSpec whose artefact (if the sampler names one) is read by its method's loader."""
    return EvalSpec(problem, sampler, steps, num_samples, plan=plan_loader(sampler), **kw)
