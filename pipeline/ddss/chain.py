"""The differentiable sampling chain of DDSS and its loss (Watson et al. 2022, sec. 4).

Sample i of a batch depends only on (key, i): k_i = fold_in(key, i) gives x_T (from
fold_in(k_i, 0)) and the chain's per-step noise (fold_in(k_i, 1)), drawn by the
reparametrisation trick, so the samples are differentiable functions of the sampler's
parameters; a class-conditional model gets the label i % num_classes (the convention of
pipeline.evaluation.spec). The global batch is sharded over the mesh's "data" axis: every device
runs its slice of the chains, the features are all-gathered and the KID loss is computed on
the global batch, so the gradient is the single-process one whatever the device count.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from pipeline import metrics, samplers, schedules
from pipeline.distributed.context import DATA
from pipeline.evaluation.evaluator import with_clip
from pipeline.evaluation.spec import sample_inputs


@dataclasses.dataclass(frozen=True, eq=False)
class Chain:
    """GGDM samples of a model, and their features: what the loss and the validation share.

    model: teacher-like (`schedule`, `data_shape`, `num_classes` (0: unconditional),
    `eps_fn(y, w)`); feature_fn: x [B, ...] -> [B, F]; w: guidance weight (None: the model's);
    clip_x0: as the evaluation's (EvalSpec.clip_x0).
    """

    model: Any
    feature_fn: Callable
    w: float | None = None
    clip_x0: bool = True  # the model's x0 prediction clipped to the data range (a model without clip_x0 ignores it)

    def __post_init__(self):
        samplers.get("ggdm")  # loads the sampler registry now, not inside a trace

    def samples(self, params, key, idx, remat: str = "none"):
        """x_0 [B, ...] of the global sample indices idx [B]; remat: how backprop saves memory (ggdm.REMAT)."""
        num_classes = int(getattr(self.model, "num_classes", 0) or 0)
        x_T, kn, y = sample_inputs(key, idx, self.model.data_shape, num_classes)
        K = int(np.shape(params["sigma"])[0])
        grid = jnp.asarray(schedules.time_grid(K, "linear"), jnp.float32)  # GGDM's times are in params
        eps_fn = with_clip(self.model.eps_fn, self.clip_x0)(y, self.w)
        x0, _ = samplers.run("ggdm", eps_fn, self.model.schedule, x_T, grid, key=kn,
                             params=params, remat=remat)
        return x0

    def features(self, params, key, idx, remat: str = "none"):
        """Features [B, F] of the samples of idx."""
        x0 = self.samples(params, key, idx, remat)
        return self.feature_fn(x0).reshape(x0.shape[0], -1)


def kid_loss(chain: Chain, reference, mesh, remat: str = "adjoint") -> Callable:
    """loss(params, key, idx) = KID(features of the global batch idx [B], reference [M, F]) (Watson
    et al. 2022, eq. 9), the chains sharded over mesh axis "data" (B divisible by its size), the
    features all-gathered, the loss replicated; jit partitions it (gradients all-reduced)."""
    reference = jnp.asarray(reference, jnp.float32)
    by_row, whole = NamedSharding(mesh, PartitionSpec(DATA)), NamedSharding(mesh, PartitionSpec())

    def loss(params, key, idx):
        f = chain.features(params, key, jax.lax.with_sharding_constraint(idx, by_row), remat)
        f = jax.lax.with_sharding_constraint(jax.lax.with_sharding_constraint(f, by_row), whole)
        return metrics.kid_jax(f, reference)

    return loss


def sharded_features(chain: Chain, mesh) -> Callable:
    """features(params, key, idx) of a global batch idx, computed sharded over "data", gathered."""
    by_row, whole = NamedSharding(mesh, PartitionSpec(DATA)), NamedSharding(mesh, PartitionSpec())

    def features(params, key, idx):
        f = chain.features(params, key, jax.lax.with_sharding_constraint(idx, by_row))
        return jax.lax.with_sharding_constraint(jax.lax.with_sharding_constraint(f, by_row), whole)

    return features
