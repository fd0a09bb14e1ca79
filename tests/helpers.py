"""Checks several test files share (imported as `helpers`: pytest puts tests/ on sys.path)."""
import json
import os

import jax


def model_calls(name, eps_fn, sched, x_T, K, **kw) -> int:
    """How many times samplers.sample(name, ...) evaluates eps_fn, counted at run time."""
    from pipeline import samplers

    calls = []

    def counted(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return eps_fn(x, t)

    jax.block_until_ready(samplers.sample(name, counted, sched, x_T, K, key=jax.random.key(0), **kw))
    jax.effects_barrier()
    return len(calls)


def one_line_exit_2(argv, capsys, *needles) -> str:
    """cli.main(argv) exits 2 with one line on stderr (no traceback) holding every needle."""
    from pipeline.app import cli

    rc = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err and "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def read_metrics(run_dir) -> list[dict]:
    """The records of RUN_DIR/metrics.jsonl; a torn last line (killed writer) is skipped."""
    from pipeline import rundir

    path = os.path.join(os.fspath(run_dir), rundir.METRICS)
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def perturb(params, seed, skip=()):
    """Random non-zero parameters (zero-initialised layers would make every output 0), except in the
    submodules named in skip. NumPy draws: no per-shape XLA compiles."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def leaf(path, a):
        if {getattr(p, "key", None) for p in path} & set(skip):
            return a
        return a + 0.1 * rng.standard_normal(a.shape).astype(a.dtype)

    return jax.tree_util.tree_map_with_path(leaf, params)
