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
import math
import os
import time
import uuid
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from pipeline import checkpoint, rundir

DATA = "data"
TENSORBOARD = "tensorboard"  # RUN_DIR/tensorboard/: the event files of report()
# Ray Train takes one report per worker every ~2 s (its controller's poll; the worker's result
# queue holds one), and each report is a barrier over the workers: send at most one every
# TRAIN_REPORT_EVERY_S (the last one at close()), so that a loop reporting every step never waits.
TRAIN_REPORT_EVERY_S = 10.0


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
    # Set on a Ray Train worker (spmd._worker_main): receives {"step", **metrics} (ray.train.report).
    on_report: Callable[[dict], None] | None = dataclasses.field(default=None, repr=False)
    _writer: Any = dataclasses.field(default=None, init=False, repr=False)
    _pending: dict | None = dataclasses.field(default=None, init=False, repr=False)
    _last_sent: float = dataclasses.field(default=-math.inf, init=False, repr=False)

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
        """Append {"step", "time", **metrics} to RUN_DIR/metrics.jsonl and the scalars among
        them to TensorBoard event files in RUN_DIR/tensorboard/ (process 0 only); on a Ray Train
        worker, also send them to Ray Train (its dashboard's Train view; at most one report every
        TRAIN_REPORT_EVERY_S, the newest at close()). Values may be replicated JAX scalars:
        every process must call this, the same number of times."""
        values = {k: _to_host(v) for k, v in metrics.items()}
        now = time.time()
        if self.is_main:
            rundir.append_metrics(self.run_dir, {"step": int(step), "time": now, **values})
            self._write_scalars(int(step), values, now)
        if self.on_report is not None:
            self._pending = {"step": int(step), **values}
            if self._agree(time.monotonic() - self._last_sent >= TRAIN_REPORT_EVERY_S):
                self._send()

    def close(self, send: bool = True):
        """After the loop, in every process: send the newest metrics Ray Train has not had yet
        (send=False: not, e.g. after an error that not every process saw) and close the event
        files. The context may report again afterwards (new event files)."""
        if send and self.on_report is not None and self._pending is not None:
            self._send()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _send(self):
        self.on_report(self._pending)
        self._pending, self._last_sent = None, time.monotonic()

    def _agree(self, flag: bool) -> bool:
        """Process 0's `flag` in every process (a time-based choice must be the same everywhere)."""
        if self.process_count == 1:
            return flag
        from jax.experimental import multihost_utils

        return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))

    def _write_scalars(self, step: int, values: dict, walltime: float):
        scalars = {k: v for k, v in values.items() if isinstance(v, (int, float))}
        if not scalars:
            return
        if self._writer is None:
            # tensorboardX: a maintained writer of standard event files that needs neither
            # TensorFlow nor PyTorch, and is already installed with ray[train]. clu's
            # metric_writers write TensorBoard files through tf.summary, i.e. TensorFlow, which
            # this package does not depend on (only the optional tfgan venv has it).
            from tensorboardX import SummaryWriter

            # a file of its own (the default name, time in seconds + host, is reused within a second)
            self._writer = SummaryWriter(os.path.join(self.run_dir, TENSORBOARD), flush_secs=10,
                                         filename_suffix=f".{os.getpid()}.{uuid.uuid4().hex[:8]}")
        for k, v in scalars.items():
            self._writer.add_scalar(k, float(v), step, walltime=walltime)

    def update_results(self, updates: dict):
        """Merge `updates` into RUN_DIR/results.json (process 0 only)."""
        if self.is_main:
            rundir.update_results(self.run_dir, updates)

    def progress(self, total: int, initial: int = 0, desc: str = ""):
        """A bar on process 0 (silent elsewhere): pipeline.progress.bar, whole lines every
        few seconds off a terminal (a Ray worker's log, a job's output)."""
        from pipeline import progress

        return progress.bar(total=total, initial=initial, desc=desc, disable=not self.is_main)


def _to_host(v):
    a = np.asarray(v)
    return a.item() if a.ndim == 0 else a.tolist()


def local_context(run_dir: str, config: dict) -> SpmdContext:
    """The single-process context: this process's devices, no Ray."""
    return SpmdContext(run_dir=run_dir, config=config, mesh=make_mesh(), process_index=0, process_count=1)
