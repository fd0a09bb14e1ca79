"""Fixtures and checks the `ddss` command tests share (a pytest plugin: tests/conftest.py names
it in pytest_plugins). Session-scoped, so each is built once however many modules use it; the
pipeline is imported inside them, so that collecting other tests does not import JAX.

The teachers are untrained tiny U-Nets written as real orbax checkpoints (the plumbing is under
test, not sample quality); the search runs on the exact Gaussian-mixture denoiser."""
import os
import shutil

import numpy as np
import pytest

TINY = {"model": {"kwargs": {"ch": 8, "ch_mult": [1], "num_res_blocks": 1}}, "sample": {"fd_samples": 0}}
SEARCH = ["--gmm", "ring2d", "--steps", "2", "--workers", "0", "--train-steps", "2", "--batch-size", "16",
          "--set", "eval_samples=32", "--set", "eval_every=2", "--set", "checkpoint_every=1"]


def _write_teachers(root, **ema_transforms) -> dict:
    """Teacher run directories root/NAME: config.yaml and an orbax checkpoint of the initial state,
    its EMA parameters passed through ema_transforms[NAME]."""
    import jax

    from pipeline import checkpoint, rundir
    from pipeline.models import build
    from pipeline.teacher import config as tconfig
    from pipeline.teacher import train

    cfg = tconfig.load_config(TINY)
    state = train.init_state(build.build_model(cfg.model, 10), train.make_optimizer(cfg.train), (8, 8, 1), 0)
    out = {}
    for name, transform in ema_transforms.items():
        out[name] = str(root / name)
        os.makedirs(out[name])
        rundir.write_config(out[name], cfg)
        with checkpoint.Checkpointer(rundir.checkpoint_dir(out[name])) as ck:
            ck.save(0, {**state, "ema": jax.tree.map(transform, state["ema"])})
    return out


@pytest.fixture(scope="session")
def teachers(tmp_path_factory):
    """{"good", "missing" (no checkpoint), "corrupt" (garbled arrays), "mismatch" (config.yaml
    names a wider model than its checkpoint holds), "inf" (parameters +inf)}."""
    from pipeline import rundir

    root = tmp_path_factory.mktemp("teachers")
    out = _write_teachers(root, good=lambda a: a, inf=lambda a: np.full(a.shape, np.inf, a.dtype))
    for name in ("missing", "corrupt", "mismatch"):
        out[name] = str(shutil.copytree(out["good"], root / name))
    shutil.rmtree(rundir.checkpoint_dir(out["missing"]))
    for p in (root / "corrupt").rglob("*"):
        if p.is_file() and p.parent.name == "d":
            p.write_bytes(b"\x00garbage" * 3)
    cfg = rundir.read_config(out["mismatch"])
    cfg["model"]["kwargs"]["ch"] = 16
    rundir.write_config(out["mismatch"], cfg)
    return out


@pytest.fixture(scope="session")
def gmm_search(tmp_path_factory):
    """A finished 2-step DDSS search on the ring2d mixture (its artefact: RUN_DIR/sampler)."""
    from pipeline.app import cli

    run_dir = str(tmp_path_factory.mktemp("search") / "run")
    assert cli.main(["search", *SEARCH, "--run-dir", run_dir]) == 0
    return run_dir


@pytest.fixture(scope="session")
def npz_files(tmp_path_factory):
    """train.npz (300 images) and test.npz (120 images): sklearn's 8x8 digits as uint8 [N, 8, 8, 1]
    in [0, 255] with integer labels, as a user would save their own data."""
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    where = tmp_path_factory.mktemp("npz")
    np.savez(where / "train.npz", images=images[:300], labels=d.target[:300])
    np.savez(where / "test.npz", images=images[300:420], labels=d.target[300:420])
    return where / "train.npz", where / "test.npz"


def snapshot(*dirs) -> dict:
    """Every file under dirs with its bytes (to check that nothing was written or changed)."""
    out = {}
    for d in dirs:
        for base, _, files in os.walk(d):
            for f in files:
                with open(os.path.join(base, f), "rb") as fh:
                    out[os.path.join(base, f)] = fh.read()
    return out


def fails(argv, capsys, *needles) -> str:
    """cli.main(argv) exits 2 with one error line on stderr (besides any progress bar) containing
    every needle."""
    from pipeline.app import cli

    argv = [str(a) for a in argv]
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith(f"ddss {argv[0]}: error: ") and len(errors[0]) < 600, err
    for n in needles:
        assert n in errors[0], err
    return errors[0]
