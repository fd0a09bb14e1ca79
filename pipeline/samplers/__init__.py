"""Samplers by name: `sample(name, eps_fn, sched, x_T, steps, key=..., stride=...)`, `nfe(name, steps)`."""
from pipeline.samplers.core import SamplerDiverged, get, names, nfe, register, run, sample, scan_chain

__all__ = ["SamplerDiverged", "get", "names", "nfe", "register", "run", "sample", "scan_chain"]
