"""The metrics package as a whole: bad input is one line, KID and FD agree with tensorflow-gan's
own values (reference.json, written by scripts/tfgan_reference.py under the tfgan venv), and
importing it imports neither JAX nor Ray nor TensorFlow."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import metrics
from pipeline.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "tfgan"
TFGAN_PYTHON = ROOT / ".venv-tfgan" / "bin" / "python"
REFERENCE = json.loads((DATA / "reference.json").read_text())


@pytest.mark.parametrize("call,match", [
    (lambda: metrics.kid(np.zeros((10, 3)), np.zeros((10, 4))), "feature dimensions differ"),
    (lambda: metrics.kid(np.zeros(10), np.zeros((10, 1))), r"\[N, F\]"),
    (lambda: metrics.kid(np.zeros((3, 2)), np.zeros((2050, 2))), "at least 2 samples"),
    (lambda: metrics.frechet_distance(np.zeros((1, 2)), np.zeros((5, 2))), "at least 2 samples"),
    (lambda: metrics.frechet_distance(np.full((4, 2), np.nan), np.zeros((5, 2))), "non-finite"),
])
def test_bad_input_is_one_line(call, match):
    with pytest.raises(UserError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=lambda c: f"{c['a'][:5]}-bs{c['block_size']}")
def test_agrees_with_tensorflow_gan(case):
    a, b = np.load(DATA / case["a"]), np.load(DATA / case["b"])
    kid, std = metrics.kid_with_std(a, b, block_size=case["block_size"])
    assert kid == pytest.approx(case["kid"], rel=1e-4)
    if case["kid_std"] is None:  # one block: tensorflow-gan gives NaN
        assert std is None
    else:
        assert std == pytest.approx(case["kid_std"], rel=1e-4)
    assert metrics.frechet_distance(a, b) == pytest.approx(case["fid"], rel=1e-4)


def test_reference_data_is_small_and_splits_blocks():
    assert sum(p.stat().st_size for p in DATA.iterdir()) < 2_000_000
    assert any(c["kid_std"] is not None for c in REFERENCE["cases"])  # some case has several blocks


@pytest.mark.tfgan
def test_reference_json_is_reproduced_by_tensorflow_gan(tmp_path):
    """Regenerate the activations from their seed and re-run tensorflow-gan: same files, same numbers."""
    if not TFGAN_PYTHON.exists():
        pytest.skip(f"tensorflow-gan venv missing ({TFGAN_PYTHON}): run `make tfgan-venv`")
    out = tmp_path / "reference.json"
    subprocess.run([str(TFGAN_PYTHON), str(ROOT / "scripts" / "tfgan_reference.py"), "--generate",
                    "--data", str(tmp_path), "--out", str(out)], check=True, capture_output=True, timeout=300)
    for p in DATA.glob("*.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / p.name), np.load(p))
    fresh = json.loads(out.read_text())
    assert len(fresh["cases"]) == len(REFERENCE["cases"])
    for new, old in zip(fresh["cases"], REFERENCE["cases"]):
        assert (new["a"], new["b"], new["block_size"]) == (old["a"], old["b"], old["block_size"])
        for key in ("kid", "kid_std", "fid"):
            assert (new[key] is None) == (old[key] is None)
            assert new[key] == (None if old[key] is None else pytest.approx(old[key], rel=1e-9))


def test_import_is_light():
    code = "import sys, pipeline.metrics; print(sorted(m for m in ('jax', 'ray', 'tensorflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
