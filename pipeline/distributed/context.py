"""What an SPMD loop sees: its process, the device mesh, and helpers for sharded batches,
metrics and checkpoints. No Ray here: the same context serves a Ray Train worker and the
single-process path, so loops are testable without Ray.

A loop works on global arrays: every process builds the same program over the global batch,
which is sharded along its first axis over the mesh's "data" axis; each process only
materialises its own rows. Randomness drawn inside jit from one key (threefry is
partitionable) and rows chosen from (seed, step) make results independent of the number
of processes, up to float reduction order.
"""
from __future__ import annotations

import dataclasses
import sys
import time

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from pipeline import checkpoint, rundir

DATA = "data"


def make_mesh() -> Mesh:
    """A 1-D mesh over all devices of all processes, axis "data", Auto sharding."""
    return jax.make_mesh((jax.device_count(),), (DATA,), axis_types=(AxisType.Auto,))


@dataclasses.dataclass
class SpmdContext:
    """Handed to `loop_fn(ctx)` in every process."""

    run_dir: str
    config: dict
    mesh: Mesh
    process_index: int
    process_count: int

    @property
    def is_main(self) -> bool:
        """Process 0 writes the run's files (metrics, results, plots)."""
        return self.process_index == 0

    @property
    def num_devices(self) -> int:
        return self.mesh.size

    @property
    def data_sharding(self) -> NamedSharding:
        """Arrays split along axis 0 over all devices."""
        return NamedSharding(self.mesh, PartitionSpec(DATA))

    @property
    def replicated(self) -> NamedSharding:
        """Arrays held whole on every device (params, optimizer state)."""
        return NamedSharding(self.mesh, PartitionSpec())

    # -- batches ---------------------------------------------------------------------------

    def local_rows(self, global_size: int) -> slice:
        """The rows [start, stop) of a global batch of `global_size` this process holds."""
        if global_size % self.num_devices:
            raise ValueError(f"global batch {global_size} is not divisible by the {self.num_devices} devices")
        idx = self.data_sharding.addressable_devices_indices_map((global_size,))
        starts = sorted({(s[0].start or 0, s[0].stop if s[0].stop is not None else global_size) for s in idx.values()})
        start, stop = starts[0][0], starts[-1][1]
        if sum(b - a for a, b in starts) != stop - start:
            raise RuntimeError("this process's devices do not hold a contiguous block of the batch")
        return slice(start, stop)

    def replicate(self, tree):
        """Host values (the same on every process) as arrays replicated on all devices."""

        def put(a):
            a = np.asarray(a)
            return jax.make_array_from_callback(a.shape, self.replicated, lambda idx: a[idx])

        return jax.tree.map(put, tree)

    def gather(self, tree):
        """A sharded or replicated pytree as NumPy arrays, whole, on every process."""
        if self.process_count == 1:
            return jax.tree.map(np.asarray, tree)
        from jax.experimental import multihost_utils

        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))

    # -- run-directory helpers ---------------------------------------------------------------

    def checkpointer(self, **kw) -> checkpoint.Checkpointer:
        """The run's orbax checkpoints (RUN_DIR/checkpoints); every process must use it."""
        return checkpoint.Checkpointer(rundir.checkpoint_dir(self.run_dir), **kw)

    def report(self, step: int, **metrics):
        """Append {"step", "time", **metrics} to RUN_DIR/metrics.jsonl (process 0 only).
        Values may be replicated JAX scalars: every process must call this."""
        values = {k: _to_host(v) for k, v in metrics.items()}
        if self.is_main:
            rundir.append_metrics(self.run_dir, {"step": int(step), "time": time.time(), **values})

    def update_results(self, updates: dict):
        """Merge `updates` into RUN_DIR/results.json (process 0 only)."""
        if self.is_main:
            rundir.update_results(self.run_dir, updates)

    def progress(self, total: int, initial: int = 0, desc: str = ""):
        """A tqdm bar on process 0 (silent elsewhere). Off a terminal (a Ray worker's log, a
        job's output) it prints a plain line every 10 s instead of redrawing."""
        from tqdm.auto import tqdm

        live = sys.stderr.isatty()
        return tqdm(
            total=total, initial=initial, desc=desc, disable=not self.is_main, dynamic_ncols=live,
            file=sys.stderr if live else _Lines(sys.stderr), mininterval=1.0 if live else 10.0,
            ascii=not live,
        )


class _Lines:
    """A file for tqdm that turns its carriage-return redraws into whole lines."""

    def __init__(self, f):
        self._f = f

    def write(self, s):
        s = s.replace("\r", "").strip()
        if s:
            self._f.write(s + "\n")

    def flush(self):
        self._f.flush()


def _to_host(v):
    a = np.asarray(v)
    return a.item() if a.ndim == 0 else a.tolist()


def local_context(run_dir: str, config: dict) -> SpmdContext:
    """The single-process context: this process's devices, no Ray."""
    return SpmdContext(run_dir=run_dir, config=config, mesh=make_mesh(), process_index=0, process_count=1)
