"""Teacher training: a class-conditional eps-prediction diffusion model with classifier-free
guidance, trained SPMD (the loop runs under pipeline.distributed.spmd or in one process).

Loss (Ho et al. 2020, eq. 14, continuous time as in Kingma et al. 2021):
    E_{x0, y, t ~ U(0,1), eps} || eps_theta(alpha_t x0 + sigma_t eps, t, y') - eps ||^2,
y' = the null label with probability p (Ho & Salimans 2022, Alg. 1). Adam, EMA of the weights.
After training, `check_teacher` writes a sample grid and FD against the test split.
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pipeline import checkpoint, config, rundir, schedules
from pipeline.data.loading import check_data, load_data
from pipeline.errors import UserError
from pipeline.models.build import build_model
from pipeline.teacher.config import RESUMABLE_KEYS, TeacherConfig, TrainConfig, load_config
from pipeline.teacher.model import init_params, load_teacher, write_record


def make_optimizer(cfg: TrainConfig):
    """Adam with linear warm-up and global-norm gradient clipping."""
    lr = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adam(lr))


def init_state(model, optimizer, data_shape, seed: int) -> dict:
    """The training state: params, EMA params, optimizer state, step, base PRNG key data.
    Initialised under jit with the non-partitionable threefry, which XLA:CPU compiles several
    times faster for many parameter shapes (the values are the same on every process)."""
    key = jax.random.key(seed)

    def make():
        params = init_params(model, data_shape, jax.random.fold_in(key, 0))
        return {
            "params": params,
            "ema": jax.tree.map(jnp.copy, params),
            "opt": optimizer.init(params),
            "step": jnp.zeros((), jnp.int32),
            "key": jax.random.key_data(key),
        }

    with jax.threefry_partitionable(False):
        return jax.jit(make)()


def abstract_state(model, optimizer, data_shape, sharding) -> dict:
    """Shapes, dtypes and `sharding` of init_state's pytree (a restore target)."""
    shapes = jax.eval_shape(lambda: init_state(model, optimizer, data_shape, 0))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def diffusion_loss(params, model, sched, batch, label_dropout: float, null_label: int):
    """Eps-prediction loss (Ho et al. 2020, eq. 14) on batch = (x0, y, keys), a mean over its rows:
    row i draws t ~ U(0, 1), eps and the drop of its label to `null_label` (w.p. label_dropout)
    from its own key, so a batch split over devices draws the same numbers."""
    x0, y, keys = batch
    draws = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
    t = jax.vmap(jax.random.uniform)(draws[:, 0])
    eps = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:]))(draws[:, 1])
    bc = (x0.shape[0],) + (1,) * (x0.ndim - 1)
    x_t = sched.alpha(t).reshape(bc) * x0 + sched.sigma(t).reshape(bc) * eps
    y = jnp.where(jax.vmap(jax.random.uniform)(draws[:, 2]) < label_dropout, null_label, y)
    # network dropout (off by default) draws per slice, from the slice's first row
    eps_hat = model.apply({"params": params}, x_t, t, y, train=True, rngs={"dropout": jax.random.fold_in(keys[0], 1)})
    return jnp.mean(jnp.square(eps_hat - eps))


def make_train_step(model, sched, optimizer, cfg: TrainConfig, null_label: int, mesh, path: str | None = None):
    """step(state, x0, y, rows) -> (state, loss, ok): loss and gradient of the global batch (this
    process holds its `rows`, NumPy x0 and y; pipeline.distributed.grads), Adam, EMA; state,
    loss and ok (loss and gradient norm finite) replicated over `mesh`; path: grads.make_gradients'."""
    from pipeline.distributed.grads import make_gradients

    grads = make_gradients(lambda p, _, b: diffusion_loss(p, model, sched, b, cfg.label_dropout, null_label), mesh, path)

    def apply_gradient(state, g):
        updates, opt = optimizer.update(g, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        step = state["step"] + 1
        # EMA with the usual warm-up of its decay, min(decay, (1 + n) / (10 + n))
        decay = jnp.minimum(cfg.ema_decay, (1.0 + step) / (10.0 + step))
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state["ema"], params)
        return {"params": params, "ema": ema, "opt": opt, "step": step, "key": state["key"]}

    step = grads.train_step(apply_gradient, cfg.batch_size)
    return lambda state, x0, y, rows: step(state, (x0, y), rows)


def batch_indices(seed: int, step: int, n_data: int, batch_size: int) -> np.ndarray:
    """The data rows of global batch `step`: a function of (seed, step) only."""
    return np.random.default_rng([seed, step]).integers(0, n_data, batch_size)


def teacher_loop(ctx) -> dict:
    """Train (or resume) the teacher of ctx.config["config"]; runs in every process."""
    cfg = load_config(ctx.config["config"])
    tc = cfg.train
    if tc.batch_size % ctx.num_devices:
        raise UserError(f"config key 'train.batch_size' ({tc.batch_size}) must be divisible by the {ctx.num_devices} devices")
    images, labels = load_data(cfg.data, "train")
    num_classes = int(labels.max()) + 1
    if ctx.is_main:
        write_record(ctx.run_dir, images.shape[1:], num_classes)
    model = build_model(cfg.model, num_classes)
    sched = schedules.get(cfg.schedule)
    optimizer = make_optimizer(tc)

    ck = ctx.checkpointer(max_to_keep=tc.keep_checkpoints)
    start = ck.latest_step()
    if start is None:
        state = ctx.replicate(jax.device_get(init_state(model, optimizer, images.shape[1:], tc.seed)))
    else:
        state = ck.restore(abstract_state(model, optimizer, images.shape[1:], ctx.replicated))
    start = int(state["step"])

    step_fn = make_train_step(model, sched, optimizer, tc, num_classes, ctx.mesh)
    t0, done, loss = time.time(), 0, None
    t_first = None  # the first step's time includes compilation: rates start after it
    guard = checkpoint.FiniteGuard(ck, "teacher training", "train.lr or train.grad_clip")
    with ctx.progress(tc.steps, start, "train") as bar:
        for step in range(start, tc.steps):
            idx = batch_indices(tc.seed, step, len(images), tc.batch_size)
            rows = ctx.local_rows(tc.batch_size)
            state, loss, ok = step_fn(state, images[idx[rows]], labels[idx[rows]], rows)
            done, n = done + 1, step + 1
            # checked one step late, but at once before anything of step n is logged or saved
            guard.step(n, ok, loss, now=n % tc.log_every == 0 or n % tc.checkpoint_every == 0 or n == tc.steps)
            if t_first is None:
                loss.block_until_ready()
                t_first = time.time()
            if n % tc.log_every == 0 or n == tc.steps:
                loss_v = float(loss)
                rate = (done - 1) / max(time.time() - t_first, 1e-9)
                ctx.report(n, loss=loss_v, steps_per_s=rate, examples_per_s=rate * tc.batch_size)
                bar.set_postfix(loss=f"{loss_v:.4f}", steps_per_s=f"{rate:.1f}", refresh=False)
            bar.update(1)
            if n % tc.checkpoint_every == 0 or n == tc.steps:
                ck.save(n, state)
    ck.close()
    end = time.time()
    return {
        "steps": tc.steps,
        "resumed_from": start,
        "train_time_s": end - t0,
        "first_step_s": None if t_first is None else t_first - t0,
        "examples_per_s": (done - 1) * tc.batch_size / (end - t_first) if done > 1 else None,
        "final_loss": None if loss is None else float(loss),
        "processes": ctx.process_count,
        "devices": ctx.num_devices,
    }


def resume_config(run_dir, overrides: dict | None = None) -> TeacherConfig:
    """The config to continue `run_dir` with: its config.yaml plus dotted `overrides`, which
    may only change RESUMABLE_KEYS, and train.steps not below the latest committed checkpoint
    (read from the step directories' names: nothing is opened or written)."""
    stored = config.to_dict(load_config(rundir.read_config(run_dir)))
    cfg = load_config(stored, overrides)
    config.check_resume(stored, config.to_dict(cfg), RESUMABLE_KEYS, run_dir)
    ck = rundir.checkpoint_dir(run_dir)  # orbax commits step N by renaming N.orbax-checkpoint-tmp-* to N
    names = os.listdir(ck) if os.path.isdir(ck) else ()
    latest = max((int(n) for n in names if n.isascii() and n.isdigit()), default=None)
    if latest is not None and cfg.train.steps < latest:
        raise UserError(f"cannot resume {run_dir} with train.steps={cfg.train.steps}: its latest checkpoint is at step "
                        f"{latest}; give train.steps >= {latest}")
    return cfg


def check_model(cfg: TeacherConfig, data_shape, num_classes: int):
    """Build cfg.model for the data and trace its initialisation (shapes only, nothing computed):
    a model config that cannot run (an unknown argument, a bad value) is one line before anything
    is written."""
    model = build_model(cfg.model, num_classes)
    try:
        jax.eval_shape(lambda: init_params(model, data_shape, jax.random.key(0)))
    except Exception as e:  # whatever the module raises for arguments it cannot use
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise UserError(f"config key 'model.kwargs': {cfg.model.import_path} cannot be initialised for "
                        f"{'x'.join(map(str, data_shape))} data and {num_classes} classes: "
                        f"{type(e).__name__}{': ' + first if first else ''}") from None


def train_teacher(cfg: TeacherConfig | None = None, *, run_dir=None, resume: bool = False, workers: int = 0,
                  address: str | None = None, overrides: dict | None = None, max_failures: int = 2,
                  root="runs", accelerator=None) -> tuple[str, dict]:
    """Train a teacher as an SPMD job on `workers` Ray Train workers (0: in this process), then
    write its sample grid and FD against the test split into the run directory.

    A new run (config cfg, default: the built-in defaults, plus dotted overrides) gets
    root/teacher-<time>-<id> unless run_dir names an empty or new directory. resume=True
    continues run_dir from its latest checkpoint with the run's own config.yaml (cfg is not
    used; overrides may change RESUMABLE_KEYS only). accelerator: where the workers run (a
    pipeline.accelerator.AcceleratorConfig; default cpu). Returns (run_dir, results["teacher"]).
    """
    from pipeline.distributed.spmd import run_spmd

    t0 = time.time()
    if resume:
        run_dir = rundir.prepare(run_dir, resume=True)
    else:
        cfg = load_config(config.to_dict(cfg) if cfg is not None else None, overrides)
        check_model(cfg, *check_data(cfg.data))  # before the run directory is made
        run_dir = rundir.prepare(run_dir, root=root, prefix="teacher")
    # one writer per run: a second job on run_dir is refused here, before it writes anything
    with rundir.lock(run_dir, "teacher training", new=not resume):
        if resume:
            cfg = resume_config(run_dir, overrides)
            check_model(cfg, *check_data(cfg.data))
        rundir.write_config(run_dir, cfg)
        out = run_spmd(teacher_loop, {"config": config.to_dict(cfg)}, num_workers=workers, run_dir=run_dir,
                       address=address, max_failures=max_failures, accelerator=accelerator) or {}
        out["workers"] = workers
        out["train_job_s"] = time.time() - t0  # including Ray and worker start-up
        out.update(check_teacher(run_dir))
        out["total_s"] = time.time() - t0
        rundir.update_results(run_dir, {"teacher": out})
    return run_dir, out


def check_teacher(run_dir) -> dict:
    """The end-of-training check of config `sample`: samples.png (per_class samples of each
    class, one column per class) and FD / KID against the test split, in digit-classifier
    features (digits) or flattened pixels (npz); the samples are the evaluator's."""
    from pipeline import metrics, report
    from pipeline.evaluation.evaluator import Evaluator
    from pipeline.evaluation.features import data_features, features_in_batches
    from pipeline.evaluation.problems import Problem
    from pipeline.evaluation.spec import EvalSpec

    t0 = time.time()
    teacher = load_teacher(run_dir)
    sc = teacher.config.sample
    n_grid = sc.per_class * teacher.num_classes
    spec = EvalSpec(Problem(lambda: teacher), sc.sampler, sc.steps, max(n_grid, sc.fd_samples, 2), seed=sc.seed,
                    stride=sc.stride, batch_size=sc.batch_size)
    x, _ = Evaluator(spec).generate()
    report.save_grid(x[:n_grid], os.path.join(run_dir, "samples.png"), ncol=teacher.num_classes,
                     title=f"{sc.sampler}, {sc.steps} steps, w={teacher.default_w:g}, step {teacher.step}")
    out = {"trained_steps": teacher.step, "sample_grid": "samples.png", "sampler": sc.sampler, "sample_steps": sc.steps,
           "sample_stride": sc.stride, "guidance": teacher.default_w}
    if sc.fd_samples:
        feats, label = data_features(teacher.config.data.name, sc.cache_dir)
        test_x, _ = load_data(teacher.config.data, "test")
        gen = features_in_batches(feats, x[:sc.fd_samples], sc.batch_size)
        ref = features_in_batches(feats, test_x)
        out.update(fd_test=metrics.frechet_distance(gen, ref), kid_test=metrics.kid(gen, ref), fd_samples=sc.fd_samples,
                   fd_reference=f"{teacher.config.data.name} test split, {len(test_x)} images, {label} features")
    out["check_s"] = time.time() - t0
    return out


def reuse_or_train(cfg: TeacherConfig, run_dir, log=None) -> str:
    """The absolute run_dir of a teacher trained with cfg: reused if its training finished
    (results.json holds "teacher"), continued from its latest checkpoint if interrupted (it has
    config.yaml), trained here otherwise. log(state, run_dir) is called first, with state
    "reuse", "resume" or "train"."""
    run_dir = os.path.abspath(os.fspath(run_dir))
    state = ("reuse" if "teacher" in rundir.read_results(run_dir)
             else "resume" if os.path.isfile(os.path.join(run_dir, rundir.CONFIG)) else "train")
    if log is not None:
        log(state, run_dir)
    if state == "resume":
        train_teacher(run_dir=run_dir, resume=True)
    elif state == "train":
        train_teacher(cfg, run_dir=run_dir)
    return run_dir
