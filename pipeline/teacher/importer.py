"""A teacher trained elsewhere, brought in: `import_teacher(module, params_path, ...)` writes a
teacher run directory that `load_teacher` reads like one `ddss train-teacher` wrote.

    RUN_DIR/checkpoints/0/   orbax: {"ema": the imported params, "step": 0} (with its checksum)
    RUN_DIR/teacher.json     the data shape and class count
    RUN_DIR/config.yaml      a TeacherConfig: model.import_path/kwargs, schedule, data, sample

PARAMS is a Flax msgpack file (flax.serialization.to_bytes of the params) or an orbax
directory: a PyTree checkpoint of the params (ocp.StandardCheckpointer / PyTreeCheckpointer),
a CheckpointManager step (STEP/default) or its root (the newest step). A tree holding the
params under "params" (Flax variables, a train state) is read for its "params". Every entry
must have the shape the module's init gives for the data shape (one line naming the first
that does not), floats are cast to the module's dtypes, and all must be finite; all of it is
checked before the run directory is made. Without a data set (data.name: none, the default)
the teacher samples (`ddss sample`) but cannot be evaluated, searched or distilled; give one
with data.* overrides (its image shape and labels must fit).
"""
from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from pipeline import checkpoint, rundir
from pipeline.data.loading import check_data
from pipeline.errors import UserError
from pipeline.models.build import build_model, import_object
from pipeline.teacher.config import load_config
from pipeline.teacher.model import init_params, load_teacher, write_record

PARAMS = "params"  # the entry of a stored tree (Flax variables, a train state) that holds the params
MAX_DIM = 16384  # --data-shape: each dimension at most this
METADATA = "_METADATA"  # the file an orbax PyTree checkpoint directory holds


def parse_shape(text: str) -> tuple[int, ...]:
    """--data-shape "H,W,C" (1 to 4 positive integers) as a tuple."""
    parts = [p.strip() for p in str(text).split(",")]
    if not 1 <= len(parts) <= 4 or not all(p.isdigit() and 1 <= int(p) <= MAX_DIM for p in parts):
        raise UserError(f"--data-shape must be 1 to 4 comma-separated sizes in [1, {MAX_DIM}], e.g. 32,32,3; got {text!r}")
    return tuple(int(p) for p in parts)


def _show(shape) -> str:
    return ",".join(map(str, shape))


def _flat(tree, prefix: str = "") -> dict:
    """{"a/b/c": leaf} of a tree of nested mappings."""
    if not hasattr(tree, "items"):
        return {prefix: tree}
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}/{k}" if prefix else str(k)))
    return out


def _select(tree, expected: dict):
    """The params inside a stored tree: the tree itself, or its "params" entry (when the module's
    own params have no entry of that name)."""
    if hasattr(tree, "items") and PARAMS in tree and PARAMS not in expected:
        return tree[PARAMS], f"[{PARAMS!r}]"
    return tree, ""


def check_fits(stored: dict, expected: dict, where: str):
    """One line naming the first entry (in sorted order) of the flat `stored` that is missing,
    extra, or of another shape than in the flat `expected`, or of a non-float dtype where a
    float is expected."""
    for key in sorted(set(stored) | set(expected)):
        if key not in stored:
            raise UserError(f"{where}: it lacks {key!r} (shape {_shape(expected[key])})")
        if key not in expected:
            raise UserError(f"{where}: it has {key!r}, which the module does not")
        have, want = _shape(stored[key]), _shape(expected[key])
        if have != want:
            raise UserError(f"{where}: {key!r} has shape {have}, the module expects {want}")
        h, w = np.dtype(getattr(stored[key], "dtype", np.float32)), np.dtype(expected[key].dtype)
        if h != w and not (jnp.issubdtype(w, jnp.floating) and jnp.issubdtype(h, jnp.floating)):  # bfloat16 too
            raise UserError(f"{where}: {key!r} has dtype {h}, the module expects {w}")


def _shape(leaf) -> tuple:
    return tuple(int(d) for d in getattr(leaf, "shape", np.shape(leaf)))


def read_params(path, expected, what: str):
    """The params stored at `path` (a msgpack file or an orbax directory) in the structure and
    dtypes of `expected` (the module's init shapes), checked before the arrays are read (orbax)."""
    path = os.path.abspath(os.fspath(path))
    exp = _flat(expected)
    if os.path.isdir(path):
        stored, read = _orbax(path, expected)
    elif os.path.isfile(path):
        stored, read = _msgpack(path, expected)
    else:
        raise UserError(f"--params {path}: no such file or directory")
    check_fits(_flat(stored), exp, f"--params {path} does not fit {what}")
    arrays = _flat(read())
    out = {}
    for key, want in exp.items():
        a = np.asarray(arrays[key]).astype(want.dtype, copy=False)
        if not np.all(np.isfinite(a)):
            raise UserError(f"--params {path}: {key!r} holds non-finite values")
        out[key] = a
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(expected), [out[k] for k in _flat_keys(expected)])


def _flat_keys(tree) -> list[str]:
    """The "a/b/c" names of tree's leaves in the order of jax.tree_util's flattening."""
    paths, _ = jax.tree_util.tree_flatten_with_path(tree)
    return ["/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in p) for p, _ in paths]


def _msgpack(path: str, expected):
    from flax import serialization

    try:
        with open(path, "rb") as f:
            tree = serialization.msgpack_restore(f.read())
    except OSError as e:
        raise UserError(f"cannot read --params {path}: {e.strerror or type(e).__name__}") from None
    except Exception as e:  # not msgpack, truncated, or another file altogether
        raise UserError(f"--params {path} is neither an orbax checkpoint directory nor a Flax msgpack file "
                        f"(flax.serialization.to_bytes of the params): {type(e).__name__}") from None
    if not hasattr(tree, "items"):
        raise UserError(f"--params {path} holds a {type(tree).__name__}, not a tree of parameters")
    tree, _ = _select(tree, expected)
    return tree, lambda: tree


def _pytree_dir(path: str) -> str:
    """The orbax PyTree checkpoint directory at or under `path`: itself, STEP/default, or the
    newest step of a CheckpointManager root."""
    if os.path.isfile(os.path.join(path, METADATA)):
        return path
    if os.path.isfile(os.path.join(path, "default", METADATA)):
        return os.path.join(path, "default")
    steps = [int(n) for n in os.listdir(path) if n.isdigit() and os.path.isdir(os.path.join(path, n))]
    for step in sorted(steps, reverse=True)[:1]:
        return _pytree_dir(os.path.join(path, str(step)))
    raise UserError(f"--params {path} is not an orbax checkpoint directory (no {METADATA}, no STEP/default, "
                    "no numbered steps)")


def _orbax(path: str, expected):
    import orbax.checkpoint as ocp

    where = _pytree_dir(path)
    absl = logging.getLogger("absl")
    level, ckpt = absl.level, ocp.PyTreeCheckpointer()
    absl.setLevel(logging.ERROR)  # orbax warns about what it does not find
    try:
        meta = ckpt.metadata(where)
    except Exception as e:
        raise UserError(f"--params {where} is unreadable as an orbax checkpoint: {type(e).__name__}") from None
    finally:
        absl.setLevel(level)
    tree = getattr(getattr(meta, "item_metadata", meta), "tree", None)
    if not hasattr(tree, "items"):
        raise UserError(f"--params {where} is unreadable as an orbax checkpoint: no tree metadata")
    stored, sel = _select(tree, expected)
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # whatever topology saved it

    def read():
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=one), stored)
        item = {PARAMS: target} if sel else target
        args = ocp.args.PyTreeRestore(item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                                      partial_restore=True)
        try:
            out = ckpt.restore(where, args=args)
        except Exception as e:
            raise UserError(f"--params {where} is unreadable (corrupt): {type(e).__name__}") from None
        return jax.device_get(out[PARAMS] if sel else out)

    return stored, read


def _num_classes(cfg, given: int | None) -> int:
    """--num-classes, else model.kwargs' num_classes, else the module's own default, else 0."""
    import dataclasses

    if given is not None:
        if cfg.model.kwargs.get("num_classes", given) != given:
            raise UserError(f"--num-classes {given} and --kwargs' num_classes {cfg.model.kwargs['num_classes']} differ")
        return given
    if "num_classes" in cfg.model.kwargs:
        return int(cfg.model.kwargs["num_classes"])
    cls = import_object(cfg.model.import_path)
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    default = getattr(fields.get("num_classes"), "default", None)
    return int(default) if isinstance(default, int) else 0


def _expected(model, data_shape, what: str):
    try:
        return jax.eval_shape(lambda: init_params(model, data_shape, jax.random.key(0)))
    except Exception as e:  # whatever the module raises for inputs it cannot take
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise UserError(f"{what} cannot be initialised for --data-shape {_show(data_shape)}: "
                        f"{type(e).__name__}{': ' + first if first else ''}") from None


def import_teacher(module: str, params_path, *, schedule: str, data_shape=None, num_classes: int | None = None,
                   kwargs: dict | None = None, overrides: dict | None = None, run_dir=None,
                   root="runs") -> tuple[str, dict]:
    """Write a teacher run directory (RUN_DIR, default root/teacher-<time>-<id>, new or empty)
    for module "pkg.mod:Class"(**kwargs) with the params at params_path, on `schedule`, for
    images of data_shape (default: the data set's); overrides: other TeacherConfig keys (data.*,
    sample.*). Everything is checked before the directory is made. Returns (run_dir, summary)."""
    if num_classes is not None and not 0 <= num_classes <= 100_000:
        raise UserError(f"--num-classes must be in [0, 100000], got {num_classes}")
    for key in overrides or {}:
        if key in ("schedule", "model") or key.startswith("model."):
            raise UserError(f"--set {key}: give the model with --module and --kwargs, the schedule with --schedule")
    cfg = load_config({"schedule": schedule, "model": {"import_path": module, "kwargs": dict(kwargs or {})},
                       "data": {"name": "none"}}, overrides)
    if run_dir is not None:
        path = os.path.abspath(os.fspath(run_dir))
        if os.path.lexists(path) and (not os.path.isdir(path) or os.listdir(path)):
            raise UserError(f"run directory {path} is not empty; choose another --run-dir (nothing is overwritten)")
    num_classes = _num_classes(cfg, num_classes)
    if cfg.data.name != "none":
        shape, classes = check_data(cfg.data)
        if data_shape is not None and tuple(data_shape) != shape:
            raise UserError(f"--data-shape {_show(data_shape)} is not the data set's image shape {_show(shape)}")
        if classes > max(num_classes, 1):
            raise UserError(f"the data set has labels up to {classes - 1}, but the model has {num_classes} classes")
        data_shape = shape
    if data_shape is None:
        raise UserError("--data-shape H,W,C is needed: the image shape the model takes (without a data set)")
    data_shape = tuple(data_shape)
    model = build_model(cfg.model, num_classes)
    what = f"{cfg.model.import_path} with {num_classes} classes"
    params = read_params(params_path, _expected(model, data_shape, what), f"{what} for --data-shape {_show(data_shape)}")

    run_dir = rundir.prepare(run_dir, root=root, prefix="teacher")
    with rundir.lock(run_dir, "teacher import", new=True):  # one writer; a racing second import is refused
        with checkpoint.Checkpointer(rundir.checkpoint_dir(run_dir), max_to_keep=1, async_save=False) as ck:
            ck.save(0, {"ema": params, "step": np.zeros((), np.int32)})
        write_record(run_dir, data_shape, num_classes)
        rundir.write_config(run_dir, cfg)  # last: a run directory only once it is complete
    teacher = load_teacher(run_dir)  # read back as every command will
    return run_dir, {"module": cfg.model.import_path, "params": int(sum(np.size(a) for a in jax.tree.leaves(teacher.params))),
                     "data_shape": list(teacher.data_shape), "num_classes": teacher.num_classes,
                     "schedule": cfg.schedule, "data": cfg.data.name, "params_from": os.path.abspath(os.fspath(params_path))}
