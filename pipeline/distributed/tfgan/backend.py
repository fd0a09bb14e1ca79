"""KID, FID and Inception activations by tensorflow-gan itself, in a Ray actor whose
interpreter is the tfgan venv (`make tfgan-venv`): TensorFlow 2.15 and tensorflow-gan need
NumPy < 2, which cannot live beside JAX, so the actor runs with
runtime_env={"py_executable": <venv>/bin/python}. Arrays cross as raw bytes + shape + dtype.

The venv is `venv=` if given, else $DDSS_TFGAN_VENV, else .venv-tfgan at the repository
root; on a cluster it must exist at that path on the node that runs the actor.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import numpy as np

from pipeline.distributed.tfgan import worker
from pipeline.errors import UserError

VENV_ENV = "DDSS_TFGAN_VENV"
PACKAGE = Path(__file__).resolve().parents[2]  # the pipeline package directory
DEFAULT_VENV = PACKAGE.parent / ".venv-tfgan"
CHUNK = 1024  # images sent to the actor per call


def _venv(venv=None) -> Path:
    return Path(venv or os.environ.get(VENV_ENV) or DEFAULT_VENV)


_FIX = f"run `make tfgan-venv` (or set {VENV_ENV} to the venv's path)"


def check_venv(venv=None) -> str:
    """The tfgan venv's interpreter, checked before any work is done (well under a second, no
    TensorFlow, no Ray import there): it exists, runs, and has this driver's Ray version installed
    (read from its package metadata); else a one-line UserError saying how to create the venv."""
    from importlib.metadata import version

    driver = version("ray")
    venv = _venv(venv)
    python = venv / "bin" / "python"
    if not os.access(python, os.X_OK):
        raise UserError(f"tensorflow-gan venv not found: {python} does not exist; {_FIX}")
    try:
        probe = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('ray'))"],
                               capture_output=True, text=True, timeout=60)
        found = probe.stdout.strip() if probe.returncode == 0 else "none"
    except (OSError, subprocess.TimeoutExpired):
        found = "none"
    if found != driver:
        raise UserError(f"tensorflow-gan venv {venv} has ray {found}, the driver has ray {driver}; {_FIX}")
    return str(python)


def tfgan_python(venv=None) -> str:
    """The tfgan venv's interpreter (check_venv), checked to import this driver's Ray version (a
    worker that cannot start makes Ray retry for ever), or a UserError saying how to create the venv."""
    import ray

    python = check_venv(venv)
    venv = _venv(venv)
    probe = subprocess.run([python, "-c", "import ray; print(ray.__version__)"],
                           capture_output=True, text=True, timeout=300)
    found = probe.stdout.strip() if probe.returncode == 0 else "none"
    if found != ray.__version__:
        raise UserError(f"tensorflow-gan venv {venv} has ray {found}, the driver has ray {ray.__version__}; {_FIX}")
    return python


@contextlib.contextmanager
def tfgan_actor(venv=None):
    """A TfganWorker actor under the tfgan venv's interpreter (Ray started locally if it is
    not yet initialised); killed on exit."""
    python = tfgan_python(venv)
    import ray
    import ray.cloudpickle

    from pipeline.distributed.ray_init import ensure_ray

    ensure_ray()
    # The venv does not hold this package: the actor's class travels by value, so the worker
    # needs nothing from it; a source checkout also goes on the worker's path, for a job-level
    # worker_process_setup_hook that names a pipeline module (ray_init's, on a local Ray).
    ray.cloudpickle.register_pickle_by_value(worker)
    env_vars = {"TF_CPP_MIN_LOG_LEVEL": "3"}
    if (PACKAGE.parent / "pyproject.toml").is_file():
        env_vars["PYTHONPATH"] = str(PACKAGE.parent)
    actor = ray.remote(num_cpus=1)(worker.TfganWorker).options(
        runtime_env={"py_executable": python, "env_vars": env_vars}
    ).remote()
    try:
        yield actor
    finally:
        ray.kill(actor)


def tfgan_metrics(feats_a, feats_b, venv=None, block_size: int = 1024) -> dict:
    """{"kid", "kid_std", "fid"} of two [N, F] feature sets by tensorflow-gan
    (kernel_classifier_distance_and_std_from_activations, frechet_classifier_distance_from_activations)."""
    a, b = np.asarray(feats_a), np.asarray(feats_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise UserError(f"tfgan metrics need [N, F] feature arrays of equal F, got {a.shape} and {b.shape}")
    import ray

    with tfgan_actor(venv) as actor:
        return ray.get(actor.metrics.remote(worker.to_wire(a), worker.to_wire(b), int(block_size)))


def tfgan_inception_activations(images, inception_path, venv=None, batch_size: int = 64) -> np.ndarray:
    """Pool3 activations [N, 2048] of images [N, H, W, C] in [-1, 1] by tensorflow-gan's
    Inception from a local TF-Hub module directory (nothing is downloaded)."""
    path = Path(inception_path).expanduser()
    if not path.is_dir():
        raise UserError(f"Inception TF-Hub module directory not found: {path} (download "
                        "tensorflow-gan's Inception module beforehand; nothing is fetched at run time)")
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise UserError(f"Inception needs images [N, H, W, C] with C = 1 or 3, got shape {images.shape}")
    import ray

    with tfgan_actor(venv) as actor:
        out = [
            worker.from_wire(ray.get(actor.inception.remote(
                str(path.resolve()), worker.to_wire(images[s:s + CHUNK]), int(batch_size))))
            for s in range(0, len(images), CHUNK)
        ]
    return np.concatenate(out)
