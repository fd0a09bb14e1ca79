"""tensorflow-gan's KID (+ standard error) and FID of the stored activation pairs, written as
reference values for tests/test_metrics.py. Runs under the tfgan venv:

    .venv-tfgan/bin/python scripts/tfgan_reference.py              # -> tests/data/tfgan/reference.json
    .venv-tfgan/bin/python scripts/tfgan_reference.py --generate   # (re)write the activation files first

The activations are random, non-negative like Inception pool3 features, with a fixed seed;
one pair has more than 1024 rows and is also evaluated with a block size that splits it
unevenly, so tensorflow-gan's block split matters.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # pipeline is not installed in the tfgan venv

from pipeline.distributed.tfgan.worker import tfgan_kid_fid  # noqa: E402  (numpy + tensorflow only)
from pipeline.io import atomic_write_text  # noqa: E402  (standard library only)

DATA = ROOT / "tests" / "data" / "tfgan"
SEED = 20240611
DIM = 64
# (name, rows of a, rows of b, mean shift of b, scale of b, block sizes to evaluate)
PAIRS = [
    ("pair0", 600, 500, 0.05, 1.1, [1024]),
    ("pair1", 1537, 1103, 0.1, 0.95, [1024, 300]),
]


def generate(data_dir: Path):
    """Write <name>_a.npy, <name>_b.npy (float32) for each pair."""
    rng = np.random.default_rng(SEED)
    mix = rng.normal(size=(DIM, DIM)) / np.sqrt(DIM)  # correlated features
    for name, n_a, n_b, shift, scale, _ in PAIRS:
        a = np.maximum(rng.normal(size=(n_a, DIM)) @ mix + 0.3, 0.0)
        b = np.maximum(scale * (rng.normal(size=(n_b, DIM)) @ mix) + 0.3 + shift, 0.0)
        np.save(data_dir / f"{name}_a.npy", a.astype(np.float32))
        np.save(data_dir / f"{name}_b.npy", b.astype(np.float32))


def references(data_dir: Path) -> dict:
    """{"versions": ..., "cases": [{"a", "b", "block_size", "kid", "kid_std" (null: one block), "fid"}]}."""
    import tensorflow as tf
    import tensorflow_gan as tfgan

    cases = []
    for name, *_, block_sizes in PAIRS:
        a, b = np.load(data_dir / f"{name}_a.npy"), np.load(data_dir / f"{name}_b.npy")
        for bs in block_sizes:
            r = tfgan_kid_fid(a, b, bs)
            std = None if np.isnan(r["kid_std"]) else r["kid_std"]
            cases.append({"a": f"{name}_a.npy", "b": f"{name}_b.npy", "block_size": bs,
                          "kid": r["kid"], "kid_std": std, "fid": r["fid"]})
    versions = {"tensorflow": tf.__version__, "tensorflow_gan": tfgan.__version__, "numpy": np.__version__}
    return {"source": "scripts/tfgan_reference.py", "computed_in": "float64", "versions": versions, "cases": cases}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA, help="directory of the activation .npy files")
    p.add_argument("--out", type=Path, default=None, help="output JSON (default: DATA/reference.json)")
    p.add_argument("--generate", action="store_true", help="write the activation files first")
    args = p.parse_args(argv)
    if args.generate:
        args.data.mkdir(parents=True, exist_ok=True)
        generate(args.data)
    out = args.out or args.data / "reference.json"
    atomic_write_text(out, json.dumps(references(args.data), indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
