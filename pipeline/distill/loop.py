"""One distillation round as an SPMD loop: `round_loop(ctx)` runs in every process (Ray Train
worker or this process) with ctx.config = {"distill": <DistillConfig dict>, "round": r, "root": ROOT}
and ctx.run_dir = ROOT/round-RR.

Each process differentiates its rows of the global batch and the processes average one raveled
gradient (pipeline.distributed.grads); parameters and the teacher are replicated, so the
gradient is the global-batch gradient. Data rows and every random draw are functions of
(seed, round, step), so a round resumed from its latest checkpoint ends with the same
parameters as an uninterrupted one. A non-finite loss or gradient stops the round with
checkpoint.TrainingDiverged naming the step: its last good checkpoint stays, its student is not
written and it is not marked finished.
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pipeline import checkpoint
from pipeline.distill import config as dconfig
from pipeline.distill import losses, rounds
from pipeline.distill.student import load_student_params
from pipeline.errors import UserError


def make_optimizer(stage: dconfig.StageConfig, grad_clip: float):
    """Adam, learning rate annealed linearly to 0 over the round, global-norm clipping
    (Salimans & Ho 2022, appendix; diffusion_distillation's cifar_distill config)."""
    lr = optax.linear_schedule(stage.lr, 0.0, stage.train_steps)
    return optax.chain(optax.clip_by_global_norm(grad_clip), optax.adam(lr))


def batch_rows(seed: int, r: int, step: int, n_data: int, batch: int) -> np.ndarray:
    """The data rows of round r's global batch `step`: a function of (seed, r, step) only."""
    return np.random.default_rng([seed, r, step]).integers(0, n_data, batch)


def make_loss(cfg: dconfig.DistillConfig, r: int, teacher):
    """The loss of round r: stage 1 (r = 0) or the two-step distillation loss."""
    sched = teacher.schedule
    start = losses.t_start(sched, cfg.logsnr_start)
    common = dict(apply_fn=teacher.apply_fn, sched=sched, w_range=(cfg.w_min, cfg.w_max))
    if r == 0:
        return functools.partial(losses.stage1_loss, start=start, **common)
    grid = losses.student_grid(sched, 2 * cfg.steps_of(r), cfg.stride, start)
    return functools.partial(losses.round_loss, teacher_grid=jnp.asarray(grid, jnp.float32), **common)


def make_train_step(loss_fn, optimizer, mesh, batch: int, path: str | None = None):
    """step(state, teacher_params, x0, y, rows) -> (state, loss, ok): one Adam step on the global
    batch of `batch` rows (this process holds its `rows`, NumPy x0 and y; pipeline.distributed.grads); row i
    draws its noise from example_keys(fold_in(state["key"], step), batch)[i]; ok: the loss and
    the gradient norm are finite. path: grads.make_gradients' (default: by the mesh's platform)."""
    from pipeline.distributed.grads import make_gradients

    grads = make_gradients(lambda p, teacher, b: loss_fn(p, teacher, *b), mesh, path)

    def apply_gradient(state, g):
        updates, opt = optimizer.update(g, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt": opt, "step": state["step"] + 1,
                "key": state["key"]}

    step = grads.train_step(apply_gradient, batch)
    return lambda state, teacher_params, x0, y, rows: step(state, (x0, y), rows, aux=teacher_params)


def round_loop(ctx) -> dict:
    """Train (or resume) round ctx.config["round"]; returns the round's summary (process 0)."""
    from pipeline.data import loading
    from pipeline.teacher import model as tmodel

    cfg = dconfig.load(ctx.config["distill"])
    r, root = int(ctx.config["round"]), ctx.config["root"]
    stage = cfg.stage(r)
    if stage.batch % ctx.num_devices:
        key = "stage1.batch" if r == 0 else "rounds.batch"
        raise UserError(f"config key {key!r} ({stage.batch}) must be divisible by the {ctx.num_devices} devices")
    teacher = tmodel.load_teacher(cfg.teacher)
    images, labels = loading.load_data(teacher.config.data, "train")
    teacher_params = jax.device_get(teacher.params if r == 0 else load_student_params(root, r - 1, teacher.params))
    optimizer = make_optimizer(stage, cfg.grad_clip)

    def init():  # the round's key: fold_in(key(seed), r)
        return {"params": teacher_params, "opt": optimizer.init(teacher_params), "step": jnp.zeros((), jnp.int32),
                "key": jax.random.key_data(jax.random.fold_in(jax.random.key(cfg.seed), r))}

    ck = ctx.checkpointer(max_to_keep=2)
    if ck.latest_step() is None:
        state = ctx.replicate(jax.device_get(init()))
    else:
        shapes = jax.eval_shape(init)
        state = ck.restore(jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=ctx.replicated), shapes))
    start = int(state["step"])
    teacher_rep = ctx.replicate(teacher_params)
    step_fn = make_train_step(make_loss(cfg, r, teacher), optimizer, ctx.mesh, stage.batch)
    t0, done, loss = time.time(), 0, None
    key = "stage1" if r == 0 else "rounds"
    guard = checkpoint.FiniteGuard(ck, f"distillation round {r}", f"distill.{key}.lr or distill.grad_clip")
    with ctx.progress(stage.train_steps, start, f"round {r} ({cfg.steps_of(r)} steps)") as bar:
        for step in range(start, stage.train_steps):
            idx = batch_rows(cfg.seed, r, step, len(images), stage.batch)
            rows = ctx.local_rows(stage.batch)
            state, loss, ok = step_fn(state, teacher_rep, images[idx[rows]], labels[idx[rows]], rows)
            done, n = done + 1, step + 1
            # checked one step late, but at once before anything of step n is logged or saved
            last = n == stage.train_steps
            guard.step(n, ok, loss, now=n % cfg.log_every == 0 or n % cfg.checkpoint_every == 0 or last)
            if n % cfg.log_every == 0 or n == stage.train_steps:
                rate = done / (time.time() - t0)
                loss_v = float(loss)
                ctx.report(n, round=r, loss=loss_v, steps_per_s=rate)
                bar.set_postfix(loss=f"{loss_v:.4g}", refresh=False)
            bar.update(1)
            if n % cfg.checkpoint_every == 0 or n == stage.train_steps:
                ck.save(n, state)
    ck.close()
    with checkpoint.Checkpointer(rounds.student_dir(root, r), max_to_keep=1) as sk:
        sk.save(r, {"params": state["params"]})
    elapsed = time.time() - t0
    summary = {
        "round": r, "steps": cfg.steps_of(r), "train_steps": stage.train_steps, "resumed_from": start,
        "train_time_s": elapsed, "final_loss": None if loss is None else float(loss),
        "processes": ctx.process_count, "devices": ctx.num_devices,
    }
    ctx.update_results({**summary, "finished": True})
    return summary
