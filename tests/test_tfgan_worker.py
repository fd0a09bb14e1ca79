"""The tensorflow-gan actor's code (pipeline/distributed/tfgan/worker.py): arrays cross between
interpreters as raw bytes + shape + dtype, and the module imports without jax, also under the
tfgan venv's interpreter (NumPy 1), the one its Ray actor runs in."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from pipeline.distributed.tfgan import worker
from pipeline.distributed.tfgan.backend import DEFAULT_VENV, PACKAGE

VENV_PYTHON = DEFAULT_VENV / "bin" / "python"


def test_wire_round_trip():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)[:, ::2]  # not contiguous
    w = worker.to_wire(a)
    assert isinstance(w["data"], bytes) and w["shape"] == [2, 2, 4] and w["dtype"] == "<f4"
    np.testing.assert_array_equal(worker.from_wire(w), a)


def test_worker_module_imports_without_jax():
    """The worker runs under NumPy 1 without jax: importing it must not pull in jax."""
    code = "import sys, pipeline.distributed.tfgan.worker; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "False"


@pytest.mark.tfgan
@pytest.mark.skipif(not VENV_PYTHON.exists(), reason=f"tensorflow-gan venv missing ({DEFAULT_VENV}): make tfgan-venv")
def test_the_tfgan_venv_decodes_this_interpreters_arrays(tmp_path):
    """Under the venv's interpreter (NumPy < 2, pipeline only on PYTHONPATH, as the actor runs),
    the worker module imports and from_wire gives back an array encoded here under NumPy 2."""
    a = np.linspace(-1.0, 1.0, 12, dtype=np.float64).reshape(3, 4)
    code = ("import json, pickle, sys, numpy as np\n"
            "from pipeline.distributed.tfgan.worker import from_wire\n"
            "x = from_wire(pickle.load(sys.stdin.buffer))\n"
            "print(json.dumps([np.__version__.split('.')[0], x.dtype.str, list(x.shape), float(x[2, 3]), float(x.sum())]))\n")
    out = subprocess.run([str(VENV_PYTHON), "-c", code], input=pickle.dumps(worker.to_wire(a), protocol=4),
                         capture_output=True, check=True, timeout=120, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=str(PACKAGE.parent))).stdout
    assert json.loads(out) == ["1", "<f8", [3, 4], float(a[2, 3]), float(a.sum())]
