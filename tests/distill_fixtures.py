"""What the tests/test_distill_*.py files share: the tiny teacher's U-Net, the short
distillation config, and the builders behind the session fixtures in conftest.py."""
import shutil

from pipeline import config, rundir
from pipeline.distill import config as dconfig
from pipeline.teacher import config as tconfig
from pipeline.teacher import train

TINY = {"ch": 8, "ch_mult": [1], "num_res_blocks": 1}


def distill_cfg(teacher, root, **kw):
    """A 4-step schedule: stage 1 for 80 steps, then rounds of 10 steps."""
    base = {"teacher": teacher, "dir": str(root), "start_steps": 4, "stage1": {"train_steps": 80, "lr": 1e-3, "batch": 32},
            "rounds": {"train_steps": 10, "lr": 1e-3, "batch": 16}, "checkpoint_every": 5, "log_every": 5}
    base.update(kw)
    return dconfig.load(base)


def train_tiny_teacher(d: str) -> str:
    """A tiny digits teacher (U-Net ch=8) trained for 80 steps in this process, in run dir d."""
    from pipeline.distributed.spmd import run_spmd

    cfg = tconfig.load_config({"model": {"kwargs": TINY}, "train": {"steps": 80, "batch_size": 64, "checkpoint_every": 80,
                                                                    "log_every": 80}, "sample": {"fd_samples": 0}})
    rundir.write_config(d, cfg)
    run_spmd(train.teacher_loop, {"config": config.to_dict(cfg)}, num_workers=0, run_dir=d)
    return d


def run_stage1(teacher: str, root) -> None:
    """Round 0 of distill_cfg's schedule, run in this process (no Ray)."""
    from pipeline.distill.run import run_round

    run_round(distill_cfg(teacher, root), 0, workers=0, log=lambda m: None)


def run_until_2(teacher: str, stage1_root, root):
    """A copy of stage1_root in root where run_until(cfg, 2) ran: (cfg, root, the records it returned)."""
    from pipeline.distill.run import run_until

    shutil.copytree(stage1_root, root, dirs_exist_ok=True)
    cfg = distill_cfg(teacher, root)
    return cfg, root, run_until(cfg, 2, log=lambda m: None)
