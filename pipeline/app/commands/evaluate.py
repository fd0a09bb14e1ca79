"""`ddss evaluate`: KID and FD of a sampler's samples, computed by a pool of Ray actors."""
from __future__ import annotations

import json

NAME = "evaluate"
HELP = ("Evaluate a sampler on a teacher: W Ray actors generate and featurize their ranges of "
        "sample indices (sample i from fold_in(seed, i): the result does not depend on W); KID "
        "and FD against the reference features are appended to the run's results.json.")
EXAMPLE = "ddss evaluate --teacher runs/teacher-digits --sampler ddim --steps 10 --num-samples 2000 --workers 2"

# flag -> EvaluateConfig key
_FLAGS = {
    "teacher": "teacher", "sampler": "sampler", "steps": "steps", "num_samples": "num_samples",
    "workers": "workers", "seed": "seed", "stride": "stride", "w": "w", "metrics_backend": "metrics_backend",
    "inception_path": "inception_path", "batch_size": "batch_size", "kid_samples": "kid_samples",
    "results_dir": "results_dir", "cache_dir": "cache_dir", "worker_gpus": "worker_gpus",
    "t_max": "t_max", "clip_x0": "clip_x0", "seeds": "seeds", "tune": "tune", "val_seeds": "val_seeds",
    "val_samples": "val_samples", "reference": "reference", "reference_steps": "reference_steps",
    "reference_samples": "reference_samples",
}


def add_arguments(p):
    p.add_argument("--config", help="a YAML config (e.g. configs/evaluate.yaml, shipped with the package, which lists "
                                    "every key); --set and flags override it")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. max_failures=1 (repeatable)")
    p.add_argument("--teacher", metavar="RUN_DIR", help="the teacher's run directory")
    p.add_argument("--sampler", metavar="NAME[:ARTEFACT]",
                   help="ddim, ddpm, dpm-solver++2m, ...; ggdm:PATH (a DDSS artefact), student-ddim:RUN_DIR")
    p.add_argument("--steps", type=int, metavar="K")
    p.add_argument("--num-samples", type=int, metavar="N")
    p.add_argument("--workers", type=int, metavar="W", help="evaluation actors (default 2)")
    p.add_argument("--seed", type=int)
    from pipeline import schedules

    p.add_argument("--stride", choices=schedules.STRIDES, help="the time grid (default quadratic; schedules.time_grid)")
    p.add_argument("--t-max", type=float, metavar="T", help="the grid's first time, in (0, 1] (default 1.0: pure noise)")
    p.add_argument("--no-clip-x0", dest="clip_x0", action="store_const", const=False, default=None,
                   help="do not clip the model's data prediction to [-1, 1] (clipped by default)")
    p.add_argument("--w", type=float, metavar="GUIDANCE", help="classifier-free guidance weight")
    p.add_argument("--seeds", type=int, nargs="+", metavar="S",
                   help="the fair protocol: evaluate on each of these test seeds (>= 3) and report mean ± std")
    p.add_argument("--tune", action="store_const", const=True, default=None,
                   help="first choose stride, t_max and clipping on --val-seeds (lowest mean FD), then report on "
                        "--seeds (default 0 1 2)")
    p.add_argument("--val-seeds", type=int, nargs="+", metavar="S", help="--tune's validation seeds (default 1000 1001)")
    p.add_argument("--val-samples", type=int, metavar="N", help="samples per validation evaluation (default --num-samples)")
    p.add_argument("--reference", choices=["test", "teacher"],
                   help="FD/KID against the test split (default) or the teacher's own converged samples (no floor)")
    p.add_argument("--reference-steps", type=int, metavar="K", help="--reference teacher: its DDIM steps (default 512)")
    p.add_argument("--reference-samples", type=int, metavar="N", help="--reference teacher: how many (default 1000)")
    p.add_argument("--metrics-backend", choices=["jax", "tfgan"])
    p.add_argument("--inception-path", metavar="P", help="TF-Hub Inception module directory (real data)")
    p.add_argument("--batch-size", type=int, help="samples per jitted block (default 100)")
    p.add_argument("--kid-samples", type=int, help="KID on the first N samples (default: all)")
    p.add_argument("--results-dir", "--run-dir", dest="results_dir", metavar="D",
                   help="the run directory whose results.json gets the row (default: the teacher's run)")
    p.add_argument("--cache-dir", help="feature-network cache (default .cache)")
    p.add_argument("--worker-gpus", type=float, help="GPUs per actor (0.5: two actors per GPU)")
    from pipeline import accelerator

    accelerator.add_arguments(p)  # gpu/tpu: --devices-per-worker GPUs / TPU chips per actor (worker_gpus / worker_tpus)
    p.add_argument("--address", help="a Ray cluster to join (default RAY_ADDRESS, else a local Ray on 127.0.0.1)")


def actor_resources(args) -> dict:
    """--accelerator and --devices-per-worker as EvaluateConfig's worker_gpus / worker_tpus."""
    from pipeline import accelerator
    from pipeline.errors import UserError

    if args.tpu_topology or args.tpu_type:
        raise UserError("--tpu-topology and --tpu-type are for SPMD jobs; evaluation actors take --devices-per-worker")
    acc = accelerator.from_args(args)
    if acc is None:
        return {}
    n = acc.devices_per_worker
    return {"worker_gpus": n if acc.accelerator == "gpu" else 0.0, "worker_tpus": n if acc.accelerator == "tpu" else 0.0}


def run(args) -> int:
    from pipeline import config
    from pipeline.config import parse_sets
    from pipeline.app.evaluate_job import EvaluateConfig, run_evaluation

    overrides = parse_sets(args.set)
    overrides.update({key: getattr(args, flag) for flag, key in _FLAGS.items() if getattr(args, flag) is not None})
    overrides.update(actor_resources(args))
    cfg = config.load(EvaluateConfig, args.config, overrides)
    # every check that needs no computation first, then Ray, then the teacher and artefact loaded
    # and checked here: a bad input fails before any actor starts (run_evaluations)
    if cfg.seeds or cfg.tune:
        from pipeline.app.protocol_job import run_protocol

        summary = run_protocol(cfg, address=args.address)
        print(json.dumps({k: summary.get(k) for k in ("sampler", "steps", "label", "test_seeds", "fd", "kid",
                                                       "fd_per_seed", "errors")}, indent=2))
        return 0
    row = run_evaluation(cfg, address=args.address)
    print(json.dumps({k: row[k] for k in ("sampler", "steps", "nfe", "num_samples", "workers", "kid", "fd",
                                         "wall_s", "samples_per_s")}, indent=2))
    return 0
