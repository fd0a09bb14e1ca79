"""Data-parallel gradients, the path chosen by platform in one place (`make_gradients`): on GPU
and TPU one jit over the global mesh with XLA's collectives (GlobalMeshGradients); on CPU
(ProcessGradients) each process differentiates its own rows with a program of its own devices,
and the processes exchange one flat vector per step (pure JAX, no Ray).

Why not one jit on CPU over the global mesh: XLA:CPU runs the U-Net's backward pass as a program of
a two-process mesh about 12x slower than the same function jitted on the process's own device,
even with no collective in the program (bench/spmd_cpu.py: 296 ms against 24 ms), and a
combined all-reduce of the 75 gradient leaves over gloo goes leaf by leaf (~3 ms each). Here
the gradient and the update are process-local programs; the only cross-process program is a
mean over a [devices, 1 + P] array (the loss and the raveled gradient of every device).

Randomness must not depend on the split: losses draw their noise from per-example keys
(`example_keys`), so a step gives the same numbers for any number of processes, up to float
reduction order.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def example_keys(key, n: int):
    """n independent keys, one per example of a global batch (row i's draws do not depend on
    how the batch is split over processes)."""
    return jax.random.split(key, n)


class ProcessGradients:
    """`loss_fn(params, aux, batch)` (a mean over the rows of `batch`; aux: replicated values
    it is not differentiated in, e.g. a teacher's parameters) differentiated on this process's
    rows over its local devices; the batch given to loss_fn is (*rows, keys), one key per row.
    Calling it with replicated global params and aux, this process's rows (NumPy pytree) and
    their global range gives the global batch's (loss, raveled gradient) as one vector [1 + P],
    on this process's devices; `unravel_like(params)` turns the gradient back into a pytree.
    `local` / `to_global` move replicated state between the global mesh and the local devices
    (no copy), so that the update too runs as a local program."""

    def __init__(self, loss_fn: Callable, mesh: Mesh, axis: str = "data"):
        self.mesh, self.axis = mesh, axis
        local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
        self.local_mesh = Mesh(np.array(local), (axis,))
        self._rows = NamedSharding(self.local_mesh, P(axis))
        self._local_rep = NamedSharding(self.local_mesh, P())
        self._global_rep = NamedSharding(mesh, P())

        def grad(params, aux, batch, key_data, step, start, total):
            key = jax.random.fold_in(jax.random.wrap_key_data(key_data), step)
            keys = jax.lax.dynamic_slice_in_dim(example_keys(key, total), start, jax.tree.leaves(batch)[0].shape[0])
            loss, grads = jax.value_and_grad(loss_fn)(params, aux, (*batch, keys))
            return jnp.concatenate([loss[None], ravel_pytree(grads)[0]])

        self._grad = jax.jit(grad, static_argnums=6, out_shardings=self._local_rep)
        # the one cross-process program: the mean over devices of their [1 + P] vectors
        self._mean = jax.jit(lambda a: jnp.mean(a, axis=0), out_shardings=self._global_rep)

    def local(self, tree):
        """This process's copy of replicated global arrays, on its local devices."""
        return jax.tree.map(lambda a: jax.make_array_from_single_device_arrays(
            a.shape, self._local_rep, [s.data for s in a.addressable_shards]), tree)

    def to_global(self, tree):
        """Replicated local arrays (the same values in every process) as global arrays."""
        return jax.tree.map(lambda a: jax.make_array_from_single_device_arrays(
            a.shape, self._global_rep, [s.data for s in a.addressable_shards]), tree)

    def __call__(self, params, batch, key_data, step, rows: slice, total: int, aux=None):
        """Row i of the global batch draws from example_keys(fold_in(key, step), total)[i]."""
        batch = jax.device_put(batch, self._rows)
        flat = self._grad(self.local(params), self.local(aux), batch, self.local(key_data), self.local(step),
                          rows.start, total)
        if self.local_mesh.size == self.mesh.size:  # one process: nothing to exchange
            return flat
        stacked = jax.make_array_from_single_device_arrays(
            (self.mesh.size,) + flat.shape, NamedSharding(self.mesh, P(self.axis)),
            [s.data[None] for s in flat.addressable_shards])
        return self.local(self._mean(stacked))

    @staticmethod
    def unravel_like(params, flat):
        """(loss, gradient pytree like params) from __call__'s vector."""
        return flat[0], ravel_pytree(params)[1](flat[1:])

    def train_step(self, apply_gradient: Callable, batch_size: int) -> Callable:
        """step(state, rows_data, rows, aux=None) -> (state, loss, ok) for a state holding "params",
        "key" (key data) and "step": the gradient of the global batch of batch_size rows, then
        apply_gradient(state, grads) -> new state as a local program (state donated); state,
        loss and ok (the loss and the gradient's global norm are finite; computed on device, so
        a caller that checks it does not wait for more than the step) come back as replicated
        global arrays."""

        @functools.partial(jax.jit, donate_argnums=0)
        def update(state, flat):
            loss, grads = self.unravel_like(state["params"], flat)
            return apply_gradient(state, grads), loss, finite_step(loss, grads)

        def step(state, rows_data, rows: slice, aux=None):
            flat = self(state["params"], rows_data, state["key"], state["step"], rows, batch_size, aux=aux)
            return self.to_global(update(self.local(state), flat))

        return step


class GlobalMeshGradients:
    """ProcessGradients' interface as one jit over the global mesh (the batch sharded over every
    device of every process, XLA's collectives reducing the gradient): the normal path on GPU
    and TPU. The same loss, keys and update give the same numbers as ProcessGradients, up to
    float reduction order."""

    def __init__(self, loss_fn: Callable, mesh: Mesh, axis: str = "data"):
        self.mesh, self.axis, self.loss_fn = mesh, axis, loss_fn
        self._rows = NamedSharding(mesh, P(axis))
        self._rep = NamedSharding(mesh, P())

        def grad(params, aux, batch, key_data, step, total):
            keys = example_keys(jax.random.fold_in(jax.random.wrap_key_data(key_data), step), total)
            keys = jax.lax.with_sharding_constraint(keys, self._rows)
            return jax.value_and_grad(loss_fn)(params, aux, (*batch, keys))

        self._value_and_grad = grad
        self._grad = jax.jit(lambda *a: _flat(*grad(*a)), static_argnums=5, out_shardings=self._rep)

    def global_rows(self, rows_data, total: int):
        """This process's rows (NumPy pytree) as the global batch of `total` rows, sharded over the mesh."""
        return jax.tree.map(lambda a: jax.make_array_from_process_local_data(
            self._rows, np.asarray(a), (total,) + np.shape(a)[1:]), rows_data)

    def __call__(self, params, batch, key_data, step, rows: slice, total: int, aux=None):
        """ProcessGradients.__call__'s (loss, raveled gradient) vector, replicated over the mesh."""
        return self._grad(params, aux, self.global_rows(batch, total), key_data, step, total)

    unravel_like = staticmethod(ProcessGradients.unravel_like)

    def train_step(self, apply_gradient: Callable, batch_size: int) -> Callable:
        """ProcessGradients.train_step's step, gradient and update in one program."""

        @functools.partial(jax.jit, donate_argnums=0, out_shardings=self._rep)
        def update(state, batch, aux):
            loss, grads = self._value_and_grad(state["params"], aux, batch, state["key"], state["step"], batch_size)
            return apply_gradient(state, grads), loss, finite_step(loss, grads)

        def step(state, rows_data, rows: slice, aux=None):
            return update(state, self.global_rows(rows_data, batch_size), aux)

        return step


def finite_step(loss, grads):
    """The loss and the gradient's squared global norm are finite (no raveled copy of the gradient)."""
    return jnp.isfinite(loss) & jnp.isfinite(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))


def _flat(loss, grads):
    return jnp.concatenate([loss[None], ravel_pytree(grads)[0]])


PATHS = ("process", "global")


def make_gradients(loss_fn: Callable, mesh: Mesh, path: str | None = None):
    """The gradient path for mesh's platform, chosen here only: ProcessGradients on CPU (where
    it was measured faster, see above), GlobalMeshGradients on GPU and TPU. path ("process" or
    "global") forces one (tests)."""
    if path is None:
        path = "process" if mesh.devices.flat[0].platform == "cpu" else "global"
    return {"process": ProcessGradients, "global": GlobalMeshGradients}[path](loss_fn, mesh)
