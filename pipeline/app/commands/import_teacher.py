"""`ddss import-teacher`: a model trained elsewhere (Flax msgpack or orbax weights) as a teacher run directory."""
from __future__ import annotations

import json
import sys

NAME = "import-teacher"
HELP = ("Import a pretrained Flax model as a teacher run directory (config.yaml, teacher.json, an orbax "
        "checkpoint of its weights as the EMA weights) that every command reads like a trained one: "
        "--module names its flax.linen.Module (called apply({'params': p}, x, t, y, w=None, train=False) -> eps, "
        "t in [0, 1]), --params its weights (a Flax msgpack file or an orbax checkpoint directory), checked "
        "entry by entry against the module's init for --data-shape. Without a data set (--set data.name=npz "
        "--set data.path=...) the teacher samples but cannot be evaluated, searched or distilled.")
EXAMPLE = ("ddss import-teacher --module pkg.mod:Class --params weights.msgpack --schedule cosine --data-shape 32,32,3 "
           "--kwargs '{ch: 64}' --run-dir runs/teacher-imported")


def add_arguments(p):
    p.add_argument("--module", required=True, metavar="PKG.MOD:CLASS", help="the Flax module (pipeline's, or from a package allowed by --allow-module)")
    p.add_argument("--params", required=True, metavar="PATH",
                   help="the weights: a Flax msgpack file (flax.serialization.to_bytes) or an orbax checkpoint directory, "
                        "of the params or of a tree holding them under 'params'")
    p.add_argument("--schedule", required=True, choices=["cosine", "linear"], help="the noise schedule it was trained on")
    p.add_argument("--data-shape", metavar="H,W,C", help="the image shape it takes (default: the data set's, if one is given)")
    p.add_argument("--num-classes", type=int, metavar="N",
                   help="its classes, the label N being the null class (default: --kwargs' num_classes, else the module's "
                        "default, else 0: unconditional)")
    p.add_argument("--kwargs", metavar="YAML", help="the module's constructor arguments, a YAML mapping, e.g. '{ch: 64, ch_mult: [1, 2]}'")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="another teacher config key, e.g. data.name=npz, data.path=train.npz, sample.guidance=1.0 (repeatable)")
    p.add_argument("--run-dir", metavar="D", help="the run directory (default runs/teacher-<time>-<id>); must be new or empty")


def parse_kwargs(text):
    """--kwargs as a mapping (None: {})."""
    import yaml

    from pipeline.config import yaml_where
    from pipeline.errors import UserError

    if text is None:
        return {}
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"--kwargs is not valid YAML{yaml_where(e, lines=chr(10) in text)}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"--kwargs must be a YAML mapping of argument names to values, e.g. '{{ch: 64}}', got {text!r}")
    return value


def run(args) -> int:
    from pipeline.config import parse_sets
    from pipeline.teacher.importer import import_teacher, parse_shape

    overrides = parse_sets(args.set)
    kwargs = parse_kwargs(args.kwargs)
    shape = parse_shape(args.data_shape) if args.data_shape is not None else None
    run_dir, out = import_teacher(args.module, args.params, schedule=args.schedule, data_shape=shape,
                                  num_classes=args.num_classes, kwargs=kwargs, overrides=overrides, run_dir=args.run_dir)
    print(json.dumps({"run_dir": run_dir, **out}, indent=2, sort_keys=True))
    print(f"teacher imported to {run_dir}", file=sys.stderr)
    return 0
