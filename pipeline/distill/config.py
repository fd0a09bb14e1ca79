"""The distillation config (configs/distill.yaml), validated once at the edge.

Round numbering: round 0 is Meng et al.'s stage 1 (the w-conditioned student of the guided
teacher, used at `start_steps` sampling steps); round r >= 1 is the r-th halving of
progressive distillation, a student with start_steps / 2^r steps.
"""
from __future__ import annotations

import dataclasses
import math

from pipeline import config, schedules
from pipeline.accelerator import AcceleratorConfig


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """Optimisation of one round: Adam, learning rate annealed linearly to 0 over the round,
    global-norm gradient clipping (Salimans & Ho 2022, appendix; diffusion_distillation's config)."""

    train_steps: int = 1000
    lr: float = 1e-4
    batch: int = 128  # global batch, split over all devices


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    teacher: str = dataclasses.field(default="", metadata=config.PATH)  # the guided teacher's run directory (ddss train-teacher)
    dir: str = dataclasses.field(default="", metadata=config.PATH)  # where the rounds go; default <teacher>/distill
    start_steps: int = 256  # N: sampling steps of round 0's student; round r has N / 2^r
    stride: str = "linear"  # the time grid of the students (schedules.time_grid); nested by halving
    logsnr_start: float = -8.0  # the students' first time t_start has this logsnr; x_T ~ N(0, I) stands for z_{t_start}
    w_min: float = 0.0  # guidance strengths the student learns: w ~ U[w_min, w_max]
    w_max: float = 4.0
    stage1: StageConfig = StageConfig(train_steps=2000, lr=1e-4)
    rounds: StageConfig = StageConfig(train_steps=1000, lr=5e-5)
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 200  # train steps between orbax checkpoints
    log_every: int = 50  # train steps between metrics.jsonl records

    def validate(self):
        n = self.start_steps
        config.check(1 <= n <= 4096 and n & (n - 1) == 0, "start_steps", f"must be a power of two in [1, 4096], got {n}")
        config.check(self.stride in schedules.HALVING_STRIDES, "stride",  # rounds halve the steps: grids must nest
                     f"must be one of {', '.join(schedules.HALVING_STRIDES)} (grids that nest under halving), got {self.stride!r}")
        config.check(-20.0 <= self.logsnr_start <= 0.0, "logsnr_start", f"must be in [-20, 0], got {self.logsnr_start}")
        config.check(math.isfinite(self.w_min) and 0.0 <= self.w_min <= self.w_max, "w_min", f"need 0 <= w_min <= w_max, got [{self.w_min}, {self.w_max}]")
        config.check(math.isfinite(self.w_max), "w_max", f"must be finite, got {self.w_max}")
        for name in ("stage1", "rounds"):
            st = getattr(self, name)
            config.check_range(st.train_steps, 1, config.MAX_STEPS, f"{name}.train_steps")
            config.check(st.lr > 0 and math.isfinite(st.lr), f"{name}.lr", f"must be a positive finite number, got {st.lr}")
            config.check_range(st.batch, 1, config.MAX_BATCH, f"{name}.batch")
        config.check(self.grad_clip > 0 and math.isfinite(self.grad_clip), "grad_clip",
                     f"must be a positive finite number, got {self.grad_clip}")
        config.check(self.checkpoint_every >= 1, "checkpoint_every", f"must be >= 1, got {self.checkpoint_every}")
        config.check(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")

    @property
    def num_rounds(self) -> int:
        """Rounds 0..num_rounds-1: stage 1, then one halving per round down to 1 step."""
        return int(math.log2(self.start_steps)) + 1

    def steps_of(self, r: int) -> int:
        """Sampling steps of round r's student: start_steps / 2^r."""
        return self.start_steps >> r

    def stage(self, r: int) -> StageConfig:
        return self.stage1 if r == 0 else self.rounds


def load(source=None, overrides: dict | None = None) -> DistillConfig:
    """The distillation config from a YAML path or dict, with dotted-key overrides."""
    return config.load(DistillConfig, source, overrides)


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """What `ddss distill` and jobs/distill_round.py run: one round, or the schedule down to
    `until` steps (from the first unfinished round), on `workers` Ray Train workers."""

    distill: DistillConfig = DistillConfig()
    round: int = -1  # run this round (-1: run the schedule down to `until` steps)
    until: int = 1  # with round = -1: the step count of the last student
    max_rounds: int = 0  # with round = -1: run at most this many rounds (0: all; 1: "the next round")
    workers: int = 0  # Ray Train workers, one per host (0: in this process, no Ray)
    worker_gpus: float = 0.0  # GPUs per worker (0: CPU workers); > 0 is accelerator gpu with these devices
    accelerator: str = "cpu"  # where the workers run JAX: cpu | gpu | tpu (pipeline.accelerator)
    devices_per_worker: float = 1  # GPUs or TPU chips per worker
    tpu_topology: str = ""  # multi-host TPU slices: e.g. 2x2x2
    tpu_type: str = ""  # multi-host TPU slices: e.g. TPU-V4

    def validate(self):
        config.check(bool(self.distill.teacher), "distill.teacher", "give the teacher's run directory (--teacher RUN_DIR)")
        config.check(self.round >= -1, "round", f"must be a round index >= 0 (or -1 for the schedule), got {self.round}")
        config.check(self.round >= 0 or self.until >= 1, "until", f"must be >= 1, got {self.until}")
        config.check(self.max_rounds >= 0, "max_rounds", f"must be >= 0, got {self.max_rounds}")
        config.check(self.workers >= 0, "workers", f"must be >= 0, got {self.workers}")
        config.check(self.worker_gpus >= 0, "worker_gpus", f"must be >= 0, got {self.worker_gpus}")
        config.check(not (self.worker_gpus and self.accelerator != "cpu"), "worker_gpus",
                     "give either worker_gpus or accelerator, not both")
        self.placement()  # a bad accelerator setting is refused here

    def placement(self) -> AcceleratorConfig:
        """Where the workers run (worker_gpus > 0: that many GPUs each)."""
        if self.worker_gpus:
            return AcceleratorConfig("gpu", self.worker_gpus)
        return AcceleratorConfig(self.accelerator, self.devices_per_worker, self.tpu_topology, self.tpu_type)


def load_job(source=None, overrides: dict | None = None) -> JobConfig:
    """A JobConfig from a YAML path or dict, with dotted-key overrides ("distill.teacher": ...)."""
    return config.load(JobConfig, source, overrides)
