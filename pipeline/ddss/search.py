"""DDSS search (Watson et al. 2022, sec. 4): Adam on the GGDM parameters to minimise KID between
the features of the sampler's samples and of the training data, backpropagating through the
whole chain. The model is frozen.

`search_loop(ctx)` runs in every process of an SPMD job (pipeline.distributed.spmd; ctx a
SpmdContext), or in this process alone. It starts from a training-free sampler (`init`: DDIM by
default, or a multistep solver, exactly: samplers.linear) on time_grid(steps, stride, t_max).
Each step draws a fresh global batch of chains (sample i of step s from
fold_in(fold_in(train_key, s), i)); every `eval_every` steps (and at step 0) FD and KID of
`eval_samples` samples from held-out seeds, the same chains at every evaluation (common random
numbers), against the held-out validation reference (problem.py) pick the best parameters:
step 0 is the incumbent and only a strictly better score (in float32) replaces it, so a search
never returns worse than its start on validation. The state (params, Adam state, step, key, best
params and score) is checkpointed with orbax; a resumed search repeats exactly what an
uninterrupted one does. A non-finite loss or gradient stops the search with SearchDiverged naming
the step; the last good checkpoint stays. The result is the best parameters as a sampler
artefact, RUN_DIR/sampler; results.json records the initial and the best validation FD and KID.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pipeline import config, metrics, rundir
from pipeline.ddss import artefact
from pipeline.ddss.chain import Chain, kid_loss, sharded_features
from pipeline.ddss.config import SearchConfig
from pipeline.ddss.problem import build_problem
from pipeline.errors import UserError
from pipeline.samplers import linear

TRAIN, VALIDATION = 1, 2  # key streams folded into key(seed)
ARTEFACT = "sampler"  # RUN_DIR/sampler
# config keys added after runs existed, with the behaviour of a run whose config.yaml lacks them
BEFORE = {"lr_schedule": "constant", "holdout_fraction": 0.0}
INVOCATION = ("run_dir", "resume", "workers", "accelerator", "devices_per_worker", "tpu_topology", "tpu_type")  # config keys that may change when a run is resumed


class SearchDiverged(UserError):
    """The loss or its gradient became non-finite."""


def learning_rate(cfg: SearchConfig):
    """Adam's step size: cfg.learning_rate (constant), or a schedule of the update count n:
    linear warm-up from 0 over warmup_steps, then cosine decay to 0 at train_steps (cosine;
    Loshchilov & Hutter 2017, SGDR, without restarts)."""
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    return optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, cfg.warmup_steps,
                                              max(cfg.train_steps, cfg.warmup_steps + 1), end_value=0.0)


def make_optimizer(cfg: SearchConfig):
    """Global-norm clipping, then Adam (Kingma & Ba 2015) at learning_rate(cfg)."""
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), optax.adam(learning_rate(cfg)))


def init_state(cfg: SearchConfig, sched) -> dict:
    """The search state at step 0: the GGDM parameters of sampler cfg.init on time_grid(steps, stride,
    t_max) (samplers.linear), Adam's state, the base key."""
    params = linear.ggdm_params(cfg.init, cfg.steps, cfg.variant, sched, cfg.stride, cfg.t_max)
    return {
        "params": params,
        "opt": make_optimizer(cfg).init(params),
        "step": jnp.zeros((), jnp.int32),
        "key": jax.random.key_data(jax.random.key(cfg.seed)),
        "best": {"params": params, "score": jnp.asarray(jnp.inf, jnp.float32), "step": jnp.asarray(-1, jnp.int32)},
    }


def make_train_step(chain: Chain, reference, mesh, cfg: SearchConfig):
    """step(state) -> (state after one Adam step, loss, gradient norm, all finite)."""
    loss_fn = kid_loss(chain, reference, mesh, cfg.remat)
    optimizer = make_optimizer(cfg)

    def step(state):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state["key"]), TRAIN), state["step"])
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], key, jnp.arange(cfg.batch_size))
        norm = optax.tree.norm(grads)  # an overflowing norm would make clipping zero the step
        finite = jnp.isfinite(loss) & jnp.isfinite(norm)
        updates, opt = optimizer.update(grads, state["opt"], state["params"])
        new = {**state, "params": optax.apply_updates(state["params"], updates), "opt": opt, "step": state["step"] + 1}
        return new, loss, norm, finite

    return step


def make_validation(chain: Chain, mesh, cfg: SearchConfig):
    """features(params, key_data) of the eval_samples held-out samples, in batches."""
    bs = cfg.batch_size
    nb = math.ceil(cfg.eval_samples / bs)
    feats = sharded_features(chain, mesh)

    def features(params, key_data):
        key = jax.random.fold_in(jax.random.wrap_key_data(key_data), VALIDATION)
        out = jax.lax.map(lambda b: feats(params, key, b * bs + jnp.arange(bs)), jnp.arange(nb))
        return out.reshape((nb * bs,) + out.shape[2:])[: cfg.eval_samples]

    return features


def search_loop(ctx) -> dict:
    """Search (or resume) the run of ctx.config (a SearchConfig as a dict); every process runs it."""
    cfg = config.load(SearchConfig, ctx.config)
    if cfg.batch_size % ctx.num_devices:
        raise UserError(f"config key 'batch_size' ({cfg.batch_size}) must be divisible by the {ctx.num_devices} devices")
    problem = build_problem(cfg)
    chain = Chain(problem.model, problem.feature_fn, cfg.guidance, cfg.clip_x0)
    train_step = jax.jit(make_train_step(chain, problem.reference, ctx.mesh, cfg), out_shardings=ctx.replicated)
    val_features = jax.jit(make_validation(chain, ctx.mesh, cfg), out_shardings=ctx.replicated)

    def score(params, key):
        """Validation KID and FD of params: the same chains (key: the run's base key) every time."""
        f = ctx.gather(val_features(params, key))
        return {"kid": metrics.kid(f, problem.validation), "fd": metrics.frechet_distance(f, problem.validation)}

    scored = {}  # step -> validation scores, of this process's evaluations

    def validate(state, n):
        scores = scored[n] = score(state["params"], state["key"])
        ctx.report(n, val_kid=scores["kid"], val_fd=scores["fd"])
        if is_better(scores[cfg.select_by], float(state["best"]["score"])):
            best = {"params": state["params"], "score": jnp.asarray(scores[cfg.select_by], jnp.float32),
                    "step": jnp.asarray(n, jnp.int32)}
            state = {**state, "best": ctx.replicate(jax.device_get(best))}
        return state, scores

    ck = ctx.checkpointer(max_to_keep=cfg.keep_checkpoints)
    fresh = jax.device_get(init_state(cfg, problem.model.schedule))
    if ck.latest_step() is None:
        state = ctx.replicate(fresh)
    else:
        state = ck.restore(jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype, sharding=ctx.replicated), fresh))
    start = int(state["step"])
    if start == 0:
        state, initial = validate(state, 0)
        ctx.update_results({"ddss_search": {"initial": initial}})

    t0, times, loss = time.time(), [], None
    with ctx.progress(cfg.train_steps, start, "ddss search") as bar:
        for n in range(start + 1, cfg.train_steps + 1):
            t = time.time()
            new, loss, gnorm, finite = train_step(state)
            if not bool(finite):
                ck.close()
                what = "loss" if not np.isfinite(float(loss)) else "gradient (or its norm overflowed)"
                last = ck.latest_step()
                kept = f"the last good checkpoint (step {last}) stays in {ck.directory}" if last is not None else "no checkpoint was written yet"
                raise SearchDiverged(f"DDSS search diverged at step {n}: non-finite {what}; {kept}; "
                                     "lower learning_rate or clip_norm, or check the model's predictions")
            state = new
            times.append(time.time() - t)
            ctx.report(n, loss=float(loss), grad_norm=float(gnorm), step_s=times[-1])
            bar.set_postfix(loss=f"{float(loss):.3g}", refresh=False)
            bar.update(1)
            if n % cfg.eval_every == 0 or n == cfg.train_steps:
                state, _ = validate(state, n)
            if n % cfg.checkpoint_every == 0 or n == cfg.train_steps:
                ck.save(n, state)
    ck.close()

    best = jax.device_get(state["best"])
    best_step = int(best["step"])
    # a resumed run did not evaluate them here: the same chains give the same figures again
    initial = scored[0] if 0 in scored else score(ctx.replicate(fresh["params"]), state["key"])
    best_scores = scored[best_step] if best_step in scored else score(state["best"]["params"], state["key"])
    result = {
        "K": cfg.steps, "variant": cfg.variant, "init": cfg.init, "stride": cfg.stride, "t_max": cfg.t_max,
        "clip_x0": cfg.clip_x0,
        "train_steps": cfg.train_steps, "resumed_from": start, "select_by": cfg.select_by,
        "best_step": best_step, "initial_val_fd": initial["fd"], "initial_val_kid": initial["kid"],
        "best_val_fd": best_scores["fd"], "best_val_kid": best_scores["kid"],
        "val_fd_gain": initial["fd"] / best_scores["fd"] if best_scores["fd"] > 0 else None,  # > 1: the search helped
        "final_loss": None if loss is None else float(loss),
        "step_s": float(np.median(times[1:])) if len(times) > 1 else None,  # the first step compiles
        "search_s": time.time() - t0, "processes": ctx.process_count, "devices": ctx.num_devices,
    }
    path = os.path.join(ctx.run_dir, ARTEFACT)
    if ctx.is_main and not os.path.exists(path):  # a finished run that is resumed keeps its artefact
        artefact.save_artefact(path, best["params"], {
            **problem.meta, "init": cfg.init, "stride": cfg.stride, "t_max": cfg.t_max, "clip_x0": cfg.clip_x0,
            "best_step": best_step,
            "select_by": cfg.select_by, "best_val": float(best["score"]), "initial_val_fd": initial["fd"],
            "best_val_fd": best_scores["fd"], "config": config.to_dict(cfg),
        })
    result["artefact"] = path
    ctx.update_results({"ddss_search": result})
    return result


def is_better(new_score, incumbent) -> bool:
    """Whether a validation score beats the incumbent's: strictly lower once both are float32
    (the precision the state keeps), so a tie (or NaN) keeps the incumbent."""
    return bool(np.float32(new_score) < np.float32(incumbent))


def search(cfg: SearchConfig | None = None, *, run_dir=None, resume: bool = False, workers: int | None = None,
           address: str | None = None) -> dict:
    """Run a search as an SPMD job: `workers` Ray Train workers (0: in this process, no Ray;
    default cfg.workers). resume=True continues RUN_DIR from its latest checkpoint with its
    stored config (`cfg`, if given, must agree with it except in run_dir/resume/workers, and its
    workers are used; config.yaml keeps the workers the run started with). Returns the loop's
    result."""
    from pipeline.distributed.spmd import run_spmd

    if cfg is None and not resume:
        raise UserError("give a search config (or resume=True with the run directory)")
    run_dir = run_dir if run_dir is not None else (cfg.run_dir if cfg is not None else None)
    resume = resume or bool(cfg and cfg.resume)
    run_dir = rundir.prepare(run_dir, resume=resume, prefix="ddss")
    with rundir.lock(run_dir, "DDSS search", new=not resume):  # one writer per run directory
        if resume:
            raw = rundir.read_config(run_dir)
            before = {k: v for k, v in BEFORE.items() if k not in raw}  # a run older than these keys keeps its behaviour
            stored = config.load(SearchConfig, {**raw, **before})
            if cfg is not None:
                cfg = dataclasses.replace(cfg, **before)
                config.check_resume(config.to_dict(stored), config.to_dict(cfg), INVOCATION, run_dir)
                # this invocation's, not the stored
                stored = dataclasses.replace(stored, **{k: getattr(cfg, k) for k in INVOCATION[2:]})
            cfg = stored
        else:
            rundir.write_config(run_dir, cfg)
        workers = cfg.workers if workers is None else workers
        return run_spmd(search_loop, config.to_dict(cfg), num_workers=workers, run_dir=run_dir, address=address,
                        accelerator=cfg.placement())
