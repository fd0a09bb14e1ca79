"""Where an SPMD job's workers run: one setting for every job (train-teacher, search, distill,
evaluate), given as CLI flags or, where the job has a config, as invocation keys.

    acc = AcceleratorConfig("tpu", devices_per_worker=4, topology="2x2x2", accelerator_type="TPU-V4")
    acc.resources()   # {"TPU": 4}: a worker's Ray resources (one Ray Train worker per host)

cpu workers take one CPU each (devices_per_worker is ignored); gpu/tpu workers take
devices_per_worker GPUs / TPU chips each and must see them from JAX (pipeline.distributed.spmd
stops the job otherwise). topology and accelerator_type (e.g. "2x2x2", "TPU-V4") are Ray
Train's, needed for multi-host TPU slices.
"""
from __future__ import annotations

import dataclasses

from pipeline.errors import UserError

KINDS = ("cpu", "gpu", "tpu")


@dataclasses.dataclass(frozen=True)
class AcceleratorConfig:
    accelerator: str = "cpu"
    devices_per_worker: float = 1
    topology: str = ""
    accelerator_type: str = ""

    def __post_init__(self):
        if self.accelerator not in KINDS:
            raise UserError(f"accelerator must be one of {', '.join(KINDS)}, got {self.accelerator!r}")
        if not self.devices_per_worker > 0:
            raise UserError(f"devices per worker must be > 0, got {self.devices_per_worker}")
        if self.accelerator == "tpu" and self.devices_per_worker != int(self.devices_per_worker):
            raise UserError(f"TPU chips per worker must be a whole number, got {self.devices_per_worker}")
        if (self.topology or self.accelerator_type) and self.accelerator != "tpu":
            raise UserError("a TPU topology or type needs accelerator tpu")

    def resources(self) -> dict:
        """One worker's Ray resources."""
        if self.accelerator == "cpu":
            return {"CPU": 1}
        n = self.devices_per_worker
        return {self.accelerator.upper(): int(n) if n == int(n) else n}


def from_resources(resources: dict | None) -> AcceleratorConfig:
    """The setting a worker-resources dict ({"CPU": 1}, {"GPU": 1}, {"TPU": 4}) asks for."""
    resources = resources or {}
    for kind in ("tpu", "gpu"):
        if resources.get(kind.upper()):
            return AcceleratorConfig(kind, resources[kind.upper()])
    return AcceleratorConfig()


def add_arguments(p):
    """The flags --accelerator, --devices-per-worker, --tpu-topology, --tpu-type."""
    p.add_argument("--accelerator", choices=KINDS,
                   help="where each worker runs JAX (default cpu); gpu/tpu workers that see no such device stop the job")
    p.add_argument("--devices-per-worker", type=float, metavar="N",
                   help="GPUs or TPU chips per worker (default 1; a TPU v4 host has 4)")
    p.add_argument("--tpu-topology", metavar="T", help="TPU slice topology for multi-host slices, e.g. 2x2x2")
    p.add_argument("--tpu-type", metavar="V", help="TPU accelerator type for multi-host slices, e.g. TPU-V4")


def from_args(args, default: AcceleratorConfig | None = None) -> AcceleratorConfig | None:
    """The setting the flags of add_arguments give (over `default`); None if no flag was given
    and there is no default."""
    given = {k: v for k, v in (("accelerator", args.accelerator), ("devices_per_worker", args.devices_per_worker),
                               ("topology", args.tpu_topology), ("accelerator_type", args.tpu_type))
             if v is not None}
    if not given:
        return default
    return dataclasses.replace(default or AcceleratorConfig(), **given)
