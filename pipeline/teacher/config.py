"""The teacher's config (configs/digits_teacher.yaml): model, data, training and its end-of-training check."""
from __future__ import annotations

import dataclasses
import math

from pipeline import config, schedules
from pipeline.data.loading import DataConfig
from pipeline.models.build import ModelConfig

# What --resume may change in a run's config: train longer, check differently.
RESUMABLE_KEYS = ("train.steps", "train.log_every", "train.checkpoint_every", "sample.")


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
        config.check_range(self.steps, 1, config.MAX_STEPS, "train.steps")
        config.check_range(self.batch_size, 1, config.MAX_BATCH, "train.batch_size")
        config.check_range(self.seed, 0, config.MAX_SEED, "train.seed")
        config.check(self.lr > 0 and math.isfinite(self.lr), "train.lr", f"must be a positive finite number, got {self.lr}")
        config.check(self.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        config.check(self.grad_clip > 0 and math.isfinite(self.grad_clip), "train.grad_clip",
                     f"must be a positive finite number, got {self.grad_clip}")
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
        config.check_range(self.steps, 1, config.MAX_STEPS, "sample.steps")
        config.check_range(self.seed, 0, config.MAX_SEED, "sample.seed")
        config.check(self.stride in schedules.STRIDES, "sample.stride", f"must be one of {', '.join(schedules.STRIDES)}")
        config.check(self.stride not in schedules.DIFFUSERS_STRIDES or self.steps <= schedules.DIFFUSERS_N, "sample.steps",
                     f"stride {self.stride!r} takes at most {schedules.DIFFUSERS_N} steps, got {self.steps}")
        config.check(self.guidance >= 0, "sample.guidance", f"must be >= 0, got {self.guidance}")
        config.check_range(self.per_class, 1, 1000, "sample.per_class")
        config.check_range(self.fd_samples, 0, config.MAX_SAMPLES, "sample.fd_samples")
        config.check(self.fd_samples != 1, "sample.fd_samples", "FD needs at least 2 samples")
        config.check_range(self.batch_size, 1, config.MAX_BATCH, "sample.batch_size")


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
