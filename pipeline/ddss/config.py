"""The DDSS search config (configs/ddss_search.yaml; `ddss search` flags override it)."""
from __future__ import annotations

import dataclasses
import math

from pipeline import config, schedules
from pipeline.accelerator import AcceleratorConfig
from pipeline.data.gmm import PRESETS
from pipeline.samplers import ggdm, linear

SELECT_BY = ("kid", "fd")
LR_SCHEDULES = ("constant", "cosine")
REFERENCES = ("data", "teacher")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """What to search (a teacher's or a Gaussian mixture's GGDM sampler) and how."""

    teacher: str = dataclasses.field(default="", metadata=config.PATH)  # the teacher's run directory (ddss train-teacher); or gmm:
    gmm: str = ""  # a Gaussian-mixture preset with its exact denoiser (pipeline.data.gmm), for tests and demos
    steps: int = 5  # K, the sampler's steps (= model evaluations)
    variant: str = "ggdm+pred+time"
    init: str = "ddim"  # the training-free sampler the search starts from, exactly (samplers.linear.STARTS)
    stride: str = "quadratic"  # the time grid it starts on
    t_max: float = 1.0  # that grid's first time, in (0, 1] (schedules.time_grid)
    clip_x0: bool = True  # the model's x0 prediction clipped to the data range [-1, 1] (a teacher's; gmm: exact, never)
    guidance: float | None = None  # classifier-free guidance w of the teacher (None: its default)
    batch_size: int = 128  # chains per gradient step, global over all devices
    train_steps: int = 300
    learning_rate: float = 3e-3  # Adam's (peak) learning rate
    lr_schedule: str = "cosine"  # constant | cosine: linear warm-up to learning_rate, cosine decay to 0 at train_steps
    warmup_steps: int = 0  # cosine: the warm-up's steps (fewer than train_steps)
    clip_norm: float = 1.0  # global-norm gradient clipping before Adam
    remat: str = "adjoint"  # backprop memory: adjoint O(K) | adjoint-unrolled (faster on CPU, grows with K) | step O(K^2) | none
    eval_every: int = 50  # validation FD/KID every this many steps (and at the end)
    eval_samples: int = 1000  # validation samples, drawn from held-out seeds (the same chains at every evaluation)
    select_by: str = "fd"  # the validation metric that picks the best parameters (ties keep the earlier: step 0 first)
    holdout_fraction: float = 0.2  # teacher: this share of the training split (a fixed permutation) is the validation
    # reference, the rest the loss's; gmm: exact samples of another seed; 0: validate against the loss's reference
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    seed: int = 0
    reference: str = "data"  # teacher: what the loss matches: "data", its training split (Watson et al.), or "teacher",
    # its own converged samples (reference_steps-step DDIM, reference_samples of them, a seed no evaluation uses)
    reference_steps: int = 512
    reference_samples: int = 2000  # gmm: exact samples as the reference; teacher with reference "teacher": its samples
    cache_dir: str = dataclasses.field(default=".cache", metadata=config.PATH)  # where the digit classifier (digits features) is cached
    workers: int = 1  # Ray Train workers (processes); 0: in this process, without Ray
    accelerator: str = "cpu"  # where the workers run JAX: cpu | gpu | tpu (pipeline.accelerator)
    devices_per_worker: float = 1  # GPUs or TPU chips per worker
    tpu_topology: str = ""  # multi-host TPU slices: e.g. 2x2x2
    tpu_type: str = ""  # multi-host TPU slices: e.g. TPU-V4
    run_dir: str | None = dataclasses.field(default=None, metadata=config.PATH)  # None: runs/ddss-<timestamp>-<id>
    resume: bool = False  # continue run_dir from its latest checkpoint

    def validate(self):
        config.check(bool(self.teacher) != bool(self.gmm), "teacher", "give exactly one of teacher (a run directory) or gmm (a preset)")
        config.check(not self.gmm or self.gmm in PRESETS, "gmm", f"must be one of {', '.join(PRESETS)}, got {self.gmm!r}")
        config.check_range(self.steps, 1, 1000, "steps", " (a GGDM sampler of K steps holds K x K mixing weights)")
        config.check(self.variant in ggdm.VARIANTS, "variant", f"must be one of {', '.join(ggdm.VARIANTS)}, got {self.variant!r}")
        config.check(self.init in linear.STARTS, "init", f"must be one of {', '.join(linear.STARTS)}, got {self.init!r}")
        config.check(self.stride in schedules.STRIDES, "stride", f"must be one of {', '.join(schedules.STRIDES)}, got {self.stride!r}")
        config.check(_number(self.t_max) and 0.0 < self.t_max <= 1.0, "t_max", f"must be a number in (0, 1], got {self.t_max!r}")
        config.check(self.remat in ggdm.REMAT, "remat", f"must be one of {', '.join(ggdm.REMAT)}, got {self.remat!r}")
        config.check_range(self.batch_size, 2, config.MAX_BATCH, "batch_size", " (KID needs two samples)")
        config.check_range(self.train_steps, 0, config.MAX_STEPS, "train_steps")
        config.check(self.learning_rate > 0 and math.isfinite(self.learning_rate), "learning_rate",
                     f"must be a positive finite number, got {self.learning_rate}")
        config.check(self.lr_schedule in LR_SCHEDULES, "lr_schedule",
                     f"must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        config.check_range(self.warmup_steps, 0, config.MAX_STEPS, "warmup_steps")
        config.check(self.lr_schedule != "cosine" or self.warmup_steps == 0 or self.warmup_steps < self.train_steps,
                     "warmup_steps", f"must be fewer than train_steps ({self.train_steps}), got {self.warmup_steps}")
        config.check(self.clip_norm > 0 and math.isfinite(self.clip_norm), "clip_norm",
                     f"must be a positive finite number, got {self.clip_norm}")
        config.check(self.eval_every >= 1, "eval_every", f"must be >= 1, got {self.eval_every}")
        config.check_range(self.eval_samples, 2, config.MAX_SAMPLES, "eval_samples")
        config.check(_number(self.holdout_fraction) and 0.0 <= self.holdout_fraction < 1.0, "holdout_fraction",
                     f"must be a number in [0, 1), got {self.holdout_fraction!r}")
        config.check(self.select_by in SELECT_BY, "select_by", f"must be one of {', '.join(SELECT_BY)}, got {self.select_by!r}")
        config.check(self.checkpoint_every >= 1, "checkpoint_every", f"must be >= 1, got {self.checkpoint_every}")
        config.check(self.keep_checkpoints >= 1, "keep_checkpoints", f"must be >= 1, got {self.keep_checkpoints}")
        config.check(self.workers >= 0, "workers", f"must be >= 0, got {self.workers}")
        self.placement()  # a bad accelerator setting is refused here
        config.check_range(self.reference_samples, 2, config.MAX_SAMPLES, "reference_samples")
        config.check(self.reference in REFERENCES, "reference", f"must be one of {', '.join(REFERENCES)}, got {self.reference!r}")
        config.check_range(self.reference_steps, 1, 10000, "reference_steps")
        config.check(self.reference == "data" or not self.gmm, "reference",
                     "must be data with gmm (its references are exact samples already)")
        config.check(self.reference == "data" or self.guidance is None, "reference",
                     "teacher: its samples are drawn at the teacher's default guidance; leave guidance unset")
        config.check_range(self.seed, 0, config.MAX_SEED, "seed")

    def placement(self) -> AcceleratorConfig:
        """Where the workers run (pipeline.accelerator)."""
        return AcceleratorConfig(self.accelerator, self.devices_per_worker, self.tpu_topology, self.tpu_type)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load(source=None, overrides: dict | None = None) -> SearchConfig:
    """The search config from a YAML path or dict, with overrides, validated."""
    return config.load(SearchConfig, source, overrides)
