"""`ddss sample`: draw N samples of a teacher with any sampler (or a DDSS artefact or a distilled
student) into an .npz and a PNG grid, in this process."""
from __future__ import annotations

import os

NAME = "sample"
HELP = ("Draw N samples of a teacher with a sampler (ddim, ddpm, accel-ddim, dpm-solver++2m, ...), a DDSS "
        "artefact (ggdm:PATH) or a distilled student (student-ddim:DIR), in this process, and write them "
        "to OUT.npz (images [N, H, W, C] in [-1, 1], labels [N]) and a grid OUT.png. Sample i comes "
        "from fold_in(seed, i), as in `ddss evaluate`: the same flags give the samples it scores. "
        "Existing files are never overwritten.")
EXAMPLE = "ddss sample --teacher runs/teacher-digits --sampler ggdm:runs/ddss-k5/sampler --steps 5 --num-samples 100 --out k5.npz"


def add_arguments(p):
    p.add_argument("--teacher", metavar="RUN_DIR", required=True, help="the teacher's run directory")
    p.add_argument("--sampler", metavar="NAME[:ARTEFACT]", default="ddim",
                   help="ddim (default), ddpm, dpm-solver++2m, ...; ggdm:PATH (a DDSS artefact), student-ddim:DIR")
    p.add_argument("--steps", type=int, metavar="K", default=10, help="sampler steps (default 10)")
    p.add_argument("--num-samples", type=int, metavar="N", default=100, help="how many (default 100)")
    p.add_argument("--out", metavar="OUT.npz", required=True, help="the .npz to write; the grid goes to OUT.png")
    p.add_argument("--seed", type=int, default=0)
    from pipeline import schedules

    p.add_argument("--stride", choices=schedules.STRIDES, default="quadratic", help="the time grid (default quadratic)")
    p.add_argument("--t-max", type=float, metavar="T", default=1.0, help="the grid's first time, in (0, 1] (default 1.0)")
    p.add_argument("--no-clip-x0", dest="clip_x0", action="store_false",
                   help="do not clip the model's data prediction to [-1, 1] (clipped by default)")
    p.add_argument("--w", type=float, metavar="GUIDANCE", help="classifier-free guidance weight (default: the teacher's)")
    p.add_argument("--batch-size", type=int, default=100, help="samples per jitted block (default 100)")
    p.add_argument("--grid", type=int, default=100, metavar="G", help="samples in the PNG grid (default 100)")


def outputs(out: str) -> tuple[str, str]:
    """(the .npz path, the .png path) of --out."""
    from pipeline.errors import UserError

    if not out.endswith(".npz"):
        raise UserError(f"--out must name an .npz file, got {out!r}")
    npz = os.path.abspath(out)
    png = npz[: -len(".npz")] + ".png"
    for path in (npz, png):
        if os.path.exists(path):
            raise UserError(f"{path} already exists; choose another --out")
    if not os.path.isdir(os.path.dirname(npz)):
        raise UserError(f"--out: directory {os.path.dirname(npz)} does not exist")
    return npz, png


def check_flags(args):
    """One line for a flag out of its range, before anything is loaded (the bounds of `ddss evaluate`)."""
    import math

    from pipeline.app.evaluate_job import MAX_BATCH, MAX_SAMPLES, MAX_SEED, MAX_STEPS
    from pipeline.errors import UserError

    for flag, value, low, high in (("--steps", args.steps, 1, MAX_STEPS), ("--num-samples", args.num_samples, 2, MAX_SAMPLES),
                                   ("--batch-size", args.batch_size, 1, MAX_BATCH), ("--seed", args.seed, 0, MAX_SEED),
                                   ("--grid", args.grid, 1, MAX_SAMPLES)):
        if not low <= value <= high:
            raise UserError(f"{flag} must be in [{low}, {high}], got {value}")
    if args.w is not None and not math.isfinite(args.w):
        raise UserError(f"--w must be a finite guidance weight, got {args.w}")
    if not (math.isfinite(args.t_max) and 0.0 < args.t_max <= 1.0):
        raise UserError(f"--t-max must be in (0, 1], got {args.t_max}")


def run(args) -> int:
    import json

    from pipeline import progress, report
    from pipeline.app.artefacts import eval_spec
    from pipeline.evaluation import Evaluator, sampling_problem
    from pipeline.io import atomic_write_npz

    check_flags(args)
    npz, png = outputs(args.out)
    spec = eval_spec(sampling_problem(args.teacher), args.sampler, args.steps, args.num_samples, seed=args.seed,
                     stride=args.stride, t_max=args.t_max, clip_x0=args.clip_x0, w=args.w,
                     batch_size=min(args.batch_size, max(args.num_samples, 1)))
    ev = Evaluator(spec)  # loads and checks the teacher and the artefact
    with progress.bar(total=args.num_samples, desc=f"sample {args.sampler} K={args.steps}", unit="sample") as bar:
        images, labels = ev.generate(bar.update)
    arrays = {"images": images} if labels is None else {"images": images, "labels": labels}
    atomic_write_npz(npz, arrays)
    n = min(args.grid, len(images))
    report.save_grid(images[:n], png, title=f"{args.sampler}, {args.steps} steps, seed {args.seed}")
    print(json.dumps({"npz": npz, "png": png, "num_samples": len(images), "shape": list(images.shape[1:]),
                      "sampler": args.sampler, "steps": args.steps}, indent=2))
    return 0
