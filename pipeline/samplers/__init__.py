"""Samplers by name: `sample(name, eps_fn, sched, x_T, steps, key=..., stride=...)`, `nfe(name, steps)`.

Importing this package imports every sampler family, so each registers itself and the
registry is full (the registry itself imports no family).
"""
from pipeline.samplers import accel, baseline, ggdm, multistep, student  # noqa: F401  (they register themselves)
from pipeline.samplers.chain import scan_chain
from pipeline.samplers.registry import SamplerDiverged, get, names, nfe, register, run, sample

__all__ = ["SamplerDiverged", "get", "names", "nfe", "register", "run", "sample", "scan_chain"]
