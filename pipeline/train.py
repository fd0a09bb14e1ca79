"""Teacher training: a class-conditional eps-prediction diffusion model with classifier-free
guidance, trained SPMD (the loop runs under pipeline.distributed.spmd or in one process).

Loss (Ho et al. 2020, eq. 14, continuous time as in Kingma et al. 2021):
    E_{x0, y, t ~ U(0,1), eps} || eps_theta(alpha_t x0 + sigma_t eps, t, y') - eps ||^2,
y' = the null label with probability p (Ho & Salimans 2022, Alg. 1). Adam, EMA of the weights.

The model is any Flax module named by import path (`model.import_path: "pkg.mod:Class"`,
`model.kwargs`) with the call contract of pipeline.models.unet.UNet:
`apply({"params": p}, x [B,H,W,C], t [B], y [B] (num_classes = null), w=None, train=bool)` -> eps.

`load_teacher(run_dir)` gives the trained model (EMA weights) as a `Teacher` for sampling,
search, distillation and evaluation; `evaluate_teacher` writes its sample grid and FD.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pipeline import config, rundir, schedules
from pipeline.errors import UserError, choose

# ----------------------------------------------------------------------------------------
# Config.

DATASETS = ("digits", "npz")
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    import_path: str = "pipeline.models.unet:UNet"  # "package.module:Class"
    kwargs: Any = dataclasses.field(default_factory=dict)  # the class's constructor arguments

    def validate(self):
        module, sep, name = self.import_path.partition(":")
        config.check(bool(module and sep and name), "model.import_path", f"must be 'package.module:Class', got {self.import_path!r}")
        config.check(isinstance(self.kwargs, dict) and all(isinstance(k, str) for k in self.kwargs),
                     "model.kwargs", "must be a mapping of argument names to values")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The training data: scikit-learn's digits, or the user's own .npz files (name: npz)."""

    name: str = "digits"  # digits | npz
    path: str = dataclasses.field(default="", metadata=config.PATH)  # npz: the training .npz (required)
    test_path: str = dataclasses.field(default="", metadata=config.PATH)  # npz: the held-out .npz, the evaluation reference (empty: path itself, i.e. the training images)
    key: str = "images"  # npz: the images array, uint8 [N, H, W, C] in [0, 255] or float in [-1, 1]
    labels_key: str = "labels"  # npz: the integer labels array; "": unconditional (every label 0, one class, null class 1)

    def validate(self):
        config.check(self.name in DATASETS, "data.name", f"must be one of {', '.join(DATASETS)}, got {self.name!r}")
        if self.name == "npz":
            config.check(bool(self.path), "data.path", "data.name npz needs the training .npz file (--set data.path=FILE)")
            config.check(bool(self.key), "data.key", "must name the images array in the .npz")
            return
        for f in ("path", "test_path", "key", "labels_key"):  # a .npz setting with digits would be ignored: refuse it
            default = type(self).__dataclass_fields__[f].default
            config.check(getattr(self, f) == default, f"data.{f}", f"applies only to data.name npz (data.name is {self.name!r})")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000
    batch_size: int = 128  # global, over all workers
    lr: float = 2e-3
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    label_dropout: float = 0.1  # probability of the null label (classifier-free guidance)
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2

    def validate(self):
        config.check(self.steps >= 1, "train.steps", f"must be >= 1, got {self.steps}")
        config.check(self.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.batch_size}")
        config.check(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        config.check(self.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        config.check(self.grad_clip > 0, "train.grad_clip", f"must be > 0, got {self.grad_clip}")
        config.check(0 <= self.ema_decay < 1, "train.ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        config.check(0 <= self.label_dropout <= 1, "train.label_dropout", f"must be in [0, 1], got {self.label_dropout}")
        config.check(self.log_every >= 1, "train.log_every", f"must be >= 1, got {self.log_every}")
        config.check(self.checkpoint_every >= 1, "train.checkpoint_every", f"must be >= 1, got {self.checkpoint_every}")
        config.check(self.keep_checkpoints >= 1, "train.keep_checkpoints", f"must be >= 1, got {self.keep_checkpoints}")


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """The end-of-training check: a sample grid and FD against the test split."""

    sampler: str = "ddim"
    steps: int = 256
    stride: str = "quadratic"
    guidance: float = 0.0  # w of eps_w = (1 + w) eps(c) - w eps(null); the teacher's default
    per_class: int = 10  # grid: this many samples of each class
    fd_samples: int = 1000  # 0: no FD
    batch_size: int = 500
    seed: int = 1
    cache_dir: str = dataclasses.field(default=".cache", metadata=config.PATH)  # the digit classifier (FD features) is cached here

    def validate(self):
        config.check(self.steps >= 1, "sample.steps", f"must be >= 1, got {self.steps}")
        config.check(self.stride in schedules.STRIDES, "sample.stride", f"must be one of {', '.join(schedules.STRIDES)}")
        config.check(self.guidance >= 0, "sample.guidance", f"must be >= 0, got {self.guidance}")
        config.check(self.per_class >= 1, "sample.per_class", f"must be >= 1, got {self.per_class}")
        config.check(self.fd_samples >= 0, "sample.fd_samples", f"must be >= 0, got {self.fd_samples}")
        config.check(self.fd_samples != 1, "sample.fd_samples", "FD needs at least 2 samples")
        config.check(self.batch_size >= 1, "sample.batch_size", f"must be >= 1, got {self.batch_size}")


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    schedule: str = "cosine"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    sample: SampleConfig = dataclasses.field(default_factory=SampleConfig)

    def validate(self):
        config.check(self.schedule in ("cosine", "linear"), "schedule", f"must be cosine or linear, got {self.schedule!r}")


def load_config(source=None, overrides: dict | None = None) -> TeacherConfig:
    """A TeacherConfig from a YAML path or dict plus dotted overrides, validated."""
    return config.load(TeacherConfig, source, overrides)


# ----------------------------------------------------------------------------------------
# Model, data, state.


def import_object(path: str):
    """The object named by "package.module:Name"."""
    module, _, name = path.partition(":")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"model.import_path {path!r} cannot be imported: {e}") from None
    return obj


def build_model(cfg: ModelConfig, num_classes: int):
    """The Flax module of the config; its num_classes (if it takes one) must match the data's,
    and is set to the data's when model.kwargs does not give it."""
    kwargs = dict(cfg.kwargs)
    if "num_classes" in kwargs and kwargs["num_classes"] != num_classes:
        raise UserError(f"config key 'model.kwargs.num_classes' is {kwargs['num_classes']}, but the data has {num_classes} classes")
    for k in ("ch_mult", "attn_resolutions"):  # YAML lists -> the hashable tuples Flax fields need
        if isinstance(kwargs.get(k), list):
            kwargs[k] = tuple(kwargs[k])
    cls = import_object(cfg.import_path)
    if "num_classes" not in kwargs and dataclasses.is_dataclass(cls) and any(
            f.name == "num_classes" for f in dataclasses.fields(cls)):
        kwargs["num_classes"] = num_classes  # else labels past the module's default class count would be clamped
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise UserError(f"config key 'model.kwargs' does not fit {cfg.import_path}: {e}") from None


def load_data(cfg: DataConfig, split: str):
    """(images [N,H,W,C] float32 in [-1, 1], labels [N] int32) of a data set split: digits, or
    for npz the file data.path ("train") or data.test_path, default data.path ("test")."""
    choose("data set", cfg.name, DATASETS)
    if cfg.name == "digits":
        from pipeline.data import load_digits

        images, labels = load_digits(split)
        return np.asarray(images, np.float32), np.asarray(labels, np.int32)
    from pipeline.data import load_npz

    choose("data split", split, SPLITS)
    key, path = ("data.test_path", cfg.test_path) if split == "test" and cfg.test_path else ("data.path", cfg.path)
    if not os.path.isfile(path):
        raise UserError(f"config key {key!r}: {path!r} is not a file")
    images, labels = load_npz(path, cfg.key, cfg.labels_key or None)
    if len(images) == 0:
        raise UserError(f"config key {key!r}: {path}[{cfg.key!r}] holds no images")
    if labels is None:
        labels = np.zeros(len(images), np.int32)  # unconditional: one class (the null label is 1)
    elif labels.min() < 0:
        raise UserError(f"{path}[{cfg.labels_key!r}]: labels must be >= 0, got {labels.min()}")
    return np.asarray(images, np.float32), np.asarray(labels, np.int32)


def check_data(cfg: DataConfig) -> None:
    """Load both splits once, so that a missing or bad .npz (or a test split of another image
    shape) fails with one line before a run directory is made; digits needs no check."""
    if cfg.name == "digits":
        return
    train_x, _ = load_data(cfg, "train")
    test_x, _ = load_data(cfg, "test")
    if test_x.shape[1:] != train_x.shape[1:]:
        raise UserError(f"config key 'data.test_path': its images are {'x'.join(map(str, test_x.shape[1:]))}, "
                        f"the training images {'x'.join(map(str, train_x.shape[1:]))}")


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
        x = jnp.zeros((1,) + tuple(data_shape), jnp.float32)
        params = model.init(jax.random.fold_in(key, 0), x, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))["params"]
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


def make_train_step(model, sched, optimizer, cfg: TrainConfig, null_label: int, mesh):
    """step(state, x0, y, rows) -> (state, loss): loss and gradient of the global batch (this
    process holds its `rows`, NumPy x0 and y; pipeline.distributed.grads), Adam, EMA; state
    and loss replicated over `mesh`."""
    from pipeline.distributed.grads import ProcessGradients

    grads = ProcessGradients(lambda p, _, b: diffusion_loss(p, model, sched, b, cfg.label_dropout, null_label), mesh)

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


# ----------------------------------------------------------------------------------------
# The SPMD loop.


def teacher_loop(ctx) -> dict:
    """Train (or resume) the teacher of ctx.config["config"]; runs in every process."""
    cfg = load_config(ctx.config["config"])
    tc = cfg.train
    if tc.batch_size % ctx.num_devices:
        raise UserError(f"config key 'train.batch_size' ({tc.batch_size}) must be divisible by the {ctx.num_devices} devices")
    images, labels = load_data(cfg.data, "train")
    num_classes = int(labels.max()) + 1
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
    with ctx.progress(tc.steps, start, "train") as bar:
        for step in range(start, tc.steps):
            idx = batch_indices(tc.seed, step, len(images), tc.batch_size)
            rows = ctx.local_rows(tc.batch_size)
            state, loss = step_fn(state, images[idx[rows]], labels[idx[rows]], rows)
            done, n = done + 1, step + 1
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


# ----------------------------------------------------------------------------------------
# The trained teacher.


@dataclasses.dataclass(frozen=True, eq=False)
class Teacher:
    """A trained teacher: `eps_fn(y, w)` is the denoiser eps_fn(x, t) for labels y."""

    model: Any
    params: Any  # the EMA parameters (the model's "params" collection)
    schedule: schedules.Schedule
    config: TeacherConfig
    data_shape: tuple
    num_classes: int  # the label value num_classes is the null (unconditional) label
    step: int

    @property
    def default_w(self) -> float:
        """The guidance weight eps_fn uses when given none (config sample.guidance)."""
        return self.config.sample.guidance

    def apply_fn(self, variables, x, t, y, w=None):
        """The network: eps(x, t, y[, w]) with variables {"params": ...} (pipeline.models.denoiser's contract)."""
        return self.model.apply(variables, x, t, y, w)

    def eps_fn(self, y, w=None, params=None, clip_x0: bool = True):
        """eps_fn(x, t) for labels y ([B] or scalar; None: unconditional) with classifier-free
        guidance w (None: default_w; 0: the conditional model); params: other parameters of
        the same model (default: the teacher's EMA parameters); clip_x0: the data prediction
        clipped to the data's range [-1, 1] (denoiser.clip_x0_eps_fn)."""
        from pipeline.models import denoiser

        variables = {"params": self.params if params is None else params}
        w = self.default_w if w is None else w
        y = denoiser.null_label(self.num_classes) if y is None else y
        if np.ndim(w) == 0 and float(w) == 0.0:
            fn = denoiser.conditional_eps_fn(self.apply_fn, variables, y)
        else:
            fn = denoiser.guided_eps_fn(self.apply_fn, variables, y, w, self.num_classes)
        return denoiser.clip_x0_eps_fn(fn, self.schedule) if clip_x0 else fn


def load_teacher(run_dir) -> Teacher:
    """The teacher trained in `run_dir` (its config.yaml and latest checkpoint, EMA weights)."""
    from pipeline import checkpoint

    run_dir = os.fspath(run_dir)
    if not os.path.isfile(os.path.join(run_dir, rundir.CONFIG)):
        raise UserError(f"{run_dir} is not a teacher run directory (no {rundir.CONFIG})")
    cfg = load_config(rundir.read_config(run_dir))
    images, labels = load_data(cfg.data, "train")
    num_classes = int(labels.max()) + 1
    model = build_model(cfg.model, num_classes)
    ck_dir = rundir.checkpoint_dir(run_dir)
    if not os.path.isdir(ck_dir):
        raise UserError(f"no checkpoint in {ck_dir}: the teacher has not been trained")
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    with checkpoint.Checkpointer(ck_dir) as ck:
        state = ck.restore(abstract_state(model, make_optimizer(cfg.train), images.shape[1:], sharding))
    return Teacher(model, state["ema"], schedules.get(cfg.schedule), cfg, tuple(images.shape[1:]), num_classes,
                   int(state["step"]))


# ----------------------------------------------------------------------------------------
# The job: train, then check the teacher with a sample grid and FD.

# What --resume may change in a run's config: train longer, check differently.
RESUMABLE_KEYS = ("train.steps", "train.log_every", "train.checkpoint_every", "sample.")


def resume_config(run_dir, overrides: dict | None = None) -> TeacherConfig:
    """The config to continue `run_dir` with: its config.yaml plus dotted `overrides`, which
    may only change RESUMABLE_KEYS."""
    stored = config.to_dict(load_config(rundir.read_config(run_dir)))
    cfg = load_config(stored, overrides)
    old, new = _flat(stored), _flat(config.to_dict(cfg))
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key) and not key.startswith(RESUMABLE_KEYS):
            raise UserError(
                f"--resume cannot change config key {key!r} (the run has {old.get(key)!r}, given {new.get(key)!r}); "
                f"only {', '.join(RESUMABLE_KEYS)} may change"
            )
    return cfg


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def train_teacher(cfg: TeacherConfig | None = None, *, run_dir=None, resume: bool = False, workers: int = 0,
                  address: str | None = None, overrides: dict | None = None, max_failures: int = 2,
                  root="runs") -> tuple[str, dict]:
    """Train a teacher as an SPMD job on `workers` Ray Train workers (0: in this process), then
    write its sample grid and FD against the test split into the run directory.

    A new run (config cfg, default: the built-in defaults, plus dotted overrides) gets
    root/teacher-<time>-<id> unless run_dir names an empty or new directory. resume=True
    continues run_dir from its latest checkpoint with the run's own config.yaml (cfg is not
    used; overrides may change RESUMABLE_KEYS only). Returns (run_dir, results["teacher"]).
    """
    from pipeline.distributed.spmd import run_spmd

    t0 = time.time()
    if resume:
        run_dir = rundir.prepare(run_dir, resume=True)
        cfg = resume_config(run_dir, overrides)
        check_data(cfg.data)
    else:
        cfg = load_config(config.to_dict(cfg) if cfg is not None else None, overrides)
        check_data(cfg.data)  # before the run directory is made
        run_dir = rundir.prepare(run_dir, root=root, prefix="teacher")
    rundir.write_config(run_dir, cfg)
    out = run_spmd(teacher_loop, {"config": config.to_dict(cfg)}, num_workers=workers, run_dir=run_dir,
                   address=address, max_failures=max_failures) or {}
    out["workers"] = workers
    out["train_job_s"] = time.time() - t0  # including Ray and worker start-up
    out.update(check_teacher(run_dir))
    out["total_s"] = time.time() - t0
    rundir.update_results(run_dir, {"teacher": out})
    return run_dir, out


def sample_teacher(teacher: Teacher, n: int, *, seed: int, sampler: str = "ddim", steps: int = 256,
                   stride: str = "quadratic", w=None, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """n samples (clipped to [-1, 1]) and their labels; sample i has label i % num_classes and
    key k_i = fold_in(key(seed), i): x_T from fold_in(k_i, 0), sampler noise from fold_in(k_i, 1).
    One compiled program serves every batch (the last one is padded)."""
    from pipeline import samplers

    grid = jnp.asarray(schedules.time_grid(steps, stride, teacher.schedule), jnp.float32)
    w = teacher.default_w if w is None else w

    @jax.jit
    def draw(params, idx):
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(idx)
        x_T = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), teacher.data_shape))(keys)
        noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        y = idx % max(teacher.num_classes, 1)
        x0, bad = samplers.run(sampler, teacher.eps_fn(y, w, params=params), teacher.schedule, x_T, grid, noise_keys)
        return jnp.clip(x0, -1.0, 1.0), bad

    out = []
    for b in range(0, n, batch_size):
        idx = np.arange(b, b + batch_size)
        x0, bad = draw(teacher.params, jnp.asarray(idx, jnp.int32))
        if int(bad):
            raise samplers.SamplerDiverged(f"sampler {sampler!r} produced non-finite values at step {int(bad)} of {steps}")
        out.append(np.asarray(x0)[: min(batch_size, n - b)])
    labels = np.arange(n) % max(teacher.num_classes, 1)
    return np.concatenate(out), labels


def check_teacher(run_dir) -> dict:
    """The end-of-training check of config `sample`: samples.png (per_class samples of each
    class, one column per class) and FD / KID against the test split, in digit-classifier
    features (digits) or flattened pixels (npz)."""
    from pipeline import metrics, report
    from pipeline.evaluate import data_features, features_in_batches

    t0 = time.time()
    teacher = load_teacher(run_dir)
    sc = teacher.config.sample
    n_grid = sc.per_class * teacher.num_classes
    x, _ = sample_teacher(teacher, max(n_grid, sc.fd_samples), seed=sc.seed, sampler=sc.sampler, steps=sc.steps,
                          stride=sc.stride, batch_size=sc.batch_size)
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
