"""`ddss search`: learn a K-step GGDM sampler for a teacher by DDSS (an SPMD Ray job)."""
from __future__ import annotations

import json

NAME = "search"
HELP = ("Learn a fast sampler for a teacher by DDSS (Watson et al. 2022): gradient descent on the "
        "GGDM sampler's parameters through the whole K-step chain, loss KID in the data's features "
        "(the digit classifier's on digits, the pixels on .npz data), the chains sharded over W Ray Train workers; the best parameters on held-out "
        "seeds are saved as RUN_DIR/sampler (evaluate it with --sampler ggdm:RUN_DIR/sampler).")
EXAMPLE = "ddss search --teacher runs/teacher-digits --steps 5 --variant ggdm+pred+time --workers 2"

# flag -> SearchConfig key
_FLAGS = {"teacher": "teacher", "gmm": "gmm", "steps": "steps", "variant": "variant", "workers": "workers",
          "init": "init", "reference": "reference", "stride": "stride", "t_max": "t_max", "clip_x0": "clip_x0",
          "lr_schedule": "lr_schedule", "select_by": "select_by",
          "train_steps": "train_steps", "batch_size": "batch_size", "learning_rate": "learning_rate",
          "seed": "seed", "cache_dir": "cache_dir", "accelerator": "accelerator",
          "devices_per_worker": "devices_per_worker", "tpu_topology": "tpu_topology", "tpu_type": "tpu_type"}


def add_arguments(p):
    from pipeline.samplers.ggdm import VARIANTS

    p.add_argument("--teacher", metavar="RUN_DIR", help="the teacher's run directory (ddss train-teacher)")
    p.add_argument("--gmm", metavar="PRESET", help="instead of a teacher: a Gaussian mixture with its exact denoiser (ring2d, mix16d)")
    p.add_argument("--steps", type=int, metavar="K", help="sampler steps (= model evaluations per sample)")
    p.add_argument("--variant", choices=VARIANTS, help="GGDM family (default ggdm+pred+time)")
    p.add_argument("--init", metavar="SAMPLER", help="the training-free sampler the search starts from, exactly (default "
                                                     "ddim; accel-ddim, dpm-solver++2m, dpm-solver++3m, unipc-2, unipc-3, ipndm)")
    p.add_argument("--stride", metavar="STRIDE", help="the grid it starts on (default quadratic; "
                                                       "linear, logsnr, karras, leading, trailing, linspace)")
    p.add_argument("--t-max", type=float, metavar="T", help="that grid's first time, in (0, 1] (default 1)")
    p.add_argument("--no-clip-x0", dest="clip_x0", action="store_const", const=False, default=None,
                   help="do not clip the teacher's x0 prediction to [-1, 1] in the chain (as ddss evaluate's --no-clip-x0)")
    p.add_argument("--reference", choices=("data", "teacher"),
                   help="what the KID loss matches: data (default: the training split, as Watson et al.) or teacher "
                        "(the teacher's own 512-step DDIM samples: the sampler's error, nothing of the training set to memorise)")
    p.add_argument("--config", help="a YAML config (e.g. configs/ddss_search.yaml, shipped with the package, which lists "
                                    "every key); --set and flags override it")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. eval_samples=500 (repeatable)")
    p.add_argument("--run-dir", metavar="D", help="the run directory (default runs/ddss-<time>-<id>); must be new or empty")
    p.add_argument("--resume", action="store_true",
                   help="continue --run-dir from its latest checkpoint with its config.yaml (only --workers and the accelerator flags may change)")
    p.add_argument("--workers", type=int, metavar="W", help="Ray Train workers (0: in this process, no Ray)")
    p.add_argument("--train-steps", type=int, metavar="N", help="gradient steps")
    p.add_argument("--batch-size", type=int, metavar="B", help="chains per step, global")
    p.add_argument("--learning-rate", type=float, metavar="LR", help="Adam's (peak) learning rate")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"),
                   help="cosine (default): warm-up over warmup_steps, cosine decay to 0 at --train-steps")
    p.add_argument("--select-by", choices=("fd", "kid"),
                   help="the validation metric (on the held-out reference) that picks the best parameters (default fd)")
    p.add_argument("--seed", type=int)
    p.add_argument("--cache-dir", help="feature-network cache (default .cache)")
    from pipeline import accelerator

    accelerator.add_arguments(p)
    p.add_argument("--address", help="a Ray cluster to join (default RAY_ADDRESS, else a local Ray on 127.0.0.1)")


def run(args) -> int:
    from pipeline import config, ddss, rundir
    from pipeline.teacher import model as tmodel
    from pipeline.config import parse_sets
    from pipeline.data.loading import require_data
    from pipeline.teacher.config import load_config
    from pipeline.errors import UserError

    overrides = parse_sets(args.set)
    overrides.update({key: getattr(args, flag) for flag, key in _FLAGS.items() if getattr(args, flag) is not None})
    if bool(args.teacher) != bool(args.gmm):  # one given on the command line replaces the config's other
        overrides.setdefault("teacher", "")
        overrides.setdefault("gmm", "")
    if args.resume:
        if not args.run_dir:
            raise UserError("--resume needs --run-dir naming the run to continue")
        stored = rundir.read_config(rundir.prepare(args.run_dir, resume=True))
        base = config.load_yaml(args.config) if args.config else stored
        cfg = ddss.load_config(base, overrides)
    else:
        cfg = ddss.load_config(args.config, overrides)
    if cfg.teacher:  # a missing, corrupt or mismatched teacher fails here, before the run directory is made
        rundir.require_run_dir(cfg.teacher)
        require_data(load_config(rundir.read_config(cfg.teacher)).data, "ddss search (its KID loss's reference)")
        if cfg.workers:  # Ray's processes start before JAX's threads do (no fork of a process running JAX)
            from pipeline.distributed.ray_init import ensure_ray

            ensure_ray(args.address)
        tmodel.load_teacher(cfg.teacher)
    result = ddss.search(cfg, run_dir=args.run_dir, resume=args.resume, address=args.address)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0
