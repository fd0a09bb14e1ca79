"""The demo's budgets (quick and full) as data: the teacher, the Ks, the samples per row, the
training-free samplers and the settings they are tuned over (pipeline.evaluation.protocol), the
seeds, the DDSS searches and the distillation."""
from __future__ import annotations

import dataclasses

from pipeline.evaluation import protocol


@dataclasses.dataclass(frozen=True)
class Budget:
    teacher: dict  # overrides of configs/digits_teacher.yaml
    ks: tuple  # K of the baselines and accelerated samplers
    num_samples: int  # per evaluated row
    batch_size: int  # samples per evaluation block
    search_ks: tuple
    search_steps: int
    search_batch: int
    search_eval_samples: int
    distill: dict  # overrides of the distillation config
    samplers: tuple  # the training-free samplers, each tuned (pipeline.evaluation.protocol)
    strides: tuple  # the grids tried
    t_maxes: tuple  # the first times tried
    clips: tuple  # x0 clipping tried
    val_seeds: tuple  # settings are chosen on these
    val_samples: int  # per validation evaluation
    test_seeds: tuple  # every row is mean ± std over these
    search_seeds: tuple  # a DDSS row covers every search seed x test seed
    distill_until: int = 4


QUICK = Budget(
    teacher={"model.kwargs": {"ch": 8, "ch_mult": [1], "num_res_blocks": 1}, "train.steps": 150,
             "train.batch_size": 64, "train.warmup_steps": 20},
    ks=(5,), num_samples=100, batch_size=100,
    search_ks=(5,), search_steps=4, search_batch=16, search_eval_samples=50,
    distill={"start_steps": 8, "stage1": {"train_steps": 20, "lr": 1e-3, "batch": 16},
             "rounds": {"train_steps": 10, "lr": 1e-3, "batch": 16}},
    samplers=("ddim", "accel-ddim", "dpm-solver++2m"), strides=("linear", "karras"),
    t_maxes=(1.0,), clips=(True,), val_seeds=(1000,), val_samples=50, test_seeds=(0, 1, 2), search_seeds=(0,),
)
FULL = Budget(
    teacher={"train.steps": 700},
    ks=(5, 10, 20), num_samples=1000, batch_size=250,
    search_ks=(5, 10), search_steps=100, search_batch=64, search_eval_samples=250,
    distill={"start_steps": 16, "stage1": {"train_steps": 1000, "lr": 3e-4, "batch": 64},
             "rounds": {"train_steps": 400, "lr": 2e-4, "batch": 64}},
    samplers=("ddpm", "ddim", "accel-ddim", "accel-ddpm", "dpm-solver++2m", "dpm-solver++3m", "unipc-2", "unipc-3",
              "ipndm"),
    strides=("linear", "quadratic", "logsnr", "karras", "leading", "linspace"),  # trailing = linear when K divides 1000
    t_maxes=protocol.T_MAX, clips=(True, False), val_seeds=protocol.VALIDATION_SEEDS, val_samples=250,
    test_seeds=protocol.TEST_SEEDS, search_seeds=(0, 1),
)

ACCELERATED = ("accel-ddim", "accel-ddpm")  # Li et al. 2024; the other training-free samplers are baselines
