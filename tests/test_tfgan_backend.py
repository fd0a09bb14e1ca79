"""The tensorflow-gan backend on a real local Ray: an actor under the tfgan venv's interpreter
computes KID/FID with tensorflow-gan's own functions (agreeing with pipeline.metrics) and
pool3 activations through a TF-Hub module directory; bad venv / module paths are one line."""
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from pipeline import metrics
from pipeline.distributed.tfgan.backend import DEFAULT_VENV, check_venv, tfgan_inception_activations, tfgan_metrics
from pipeline.errors import UserError

DATA = Path(__file__).resolve().parent / "data" / "tfgan"
HAVE_VENV = (DEFAULT_VENV / "bin" / "python").exists()
needs_venv = pytest.mark.skipif(not HAVE_VENV, reason=f"tensorflow-gan venv missing ({DEFAULT_VENV}): run `make tfgan-venv`")

# A stand-in for tensorflow-gan's Inception TF-Hub module (we have no Inception weights): a
# SavedModel mapping images [B, H, W, 3] to {"pool_3": [B, 1, 1, 4]} = per-channel means and H.
FAKE_MODULE = """
import sys, tensorflow as tf
class Fake(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, x):
        h = tf.fill([tf.shape(x)[0], 1], tf.cast(tf.shape(x)[1], tf.float32))
        return {"pool_3": tf.concat([tf.reduce_mean(x, axis=[1, 2]), h], 1)[:, None, None, :]}
tf.saved_model.save(Fake(), sys.argv[1])
"""


@pytest.fixture(scope="module")
def ray_local():
    """A private local Ray (2 CPUs, no dashboard), or the one this session already runs."""
    import ray

    started = not ray.is_initialized()
    if started:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="os.fork\\(\\) was called")  # fork+exec, see conftest
            # with a job-level setup hook naming a pipeline module, as ray_init.ensure_ray sets
            ray.init(address="local", num_cpus=2, include_dashboard=False,
                     runtime_env={"worker_process_setup_hook": "pipeline.distributed.ray_init.quiet_loggers"})
    yield ray
    if started:
        ray.shutdown()


def test_missing_venv_is_one_line(tmp_path):
    a = np.zeros((4, 2), np.float32)
    with pytest.raises(UserError, match="make tfgan-venv") as e:
        tfgan_metrics(a, a, venv=tmp_path / "no-venv")
    assert "\n" not in str(e.value) and "no-venv" in str(e.value)


def test_venv_without_ray_is_one_line(tmp_path):
    """A venv whose interpreter lacks Ray would make Ray retry the worker for ever: refused first."""
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')  # no site-packages: no ray
    python.chmod(0o755)
    a = np.zeros((4, 2), np.float32)
    with pytest.raises(UserError, match="has ray none") as e:
        tfgan_metrics(a, a, venv=tmp_path)
    assert "\n" not in str(e.value) and "make tfgan-venv" in str(e.value)


def test_check_venv_is_cheap_and_one_line(tmp_path, monkeypatch):
    """check_venv runs before any work (ddss evaluate --metrics-backend tfgan): no Ray, no
    TensorFlow, well under a few seconds; the venv named by DDSS_TFGAN_VENV is the one checked."""
    import time

    import ray

    before = ray.is_initialized()
    monkeypatch.setenv("DDSS_TFGAN_VENV", str(tmp_path / "no-venv"))
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="tensorflow-gan venv not found: .*no-venv/bin/python does not exist; run `make "
                                        "tfgan-venv` \\(or set DDSS_TFGAN_VENV") as e:
        check_venv()
    assert "\n" not in str(e.value)
    python = tmp_path / "bare" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')  # runs, but has no ray
    python.chmod(0o755)
    with pytest.raises(UserError, match="bare has ray none, the driver has ray .*make tfgan-venv"):
        check_venv(tmp_path / "bare")
    assert time.perf_counter() - t0 < 20 and ray.is_initialized() == before
    if HAVE_VENV:
        assert check_venv(DEFAULT_VENV) == str(DEFAULT_VENV / "bin" / "python")


def test_missing_inception_path_is_one_line_before_any_actor(tmp_path):
    import ray

    before = ray.is_initialized()
    with pytest.raises(UserError, match="Inception TF-Hub module directory not found") as e:
        tfgan_inception_activations(np.zeros((2, 8, 8, 3)), tmp_path / "inception")
    assert "\n" not in str(e.value)
    assert ray.is_initialized() == before  # checked on the driver: no Ray, no actor


@needs_venv
@pytest.mark.ray
@pytest.mark.tfgan
def test_tfgan_metrics_agree_with_ours(ray_local):
    a, b = np.load(DATA / "pair1_a.npy"), np.load(DATA / "pair1_b.npy")  # > 1024 rows: 2 blocks
    got = tfgan_metrics(a, b)
    assert set(got) == {"kid", "kid_std", "fid"} and all(type(v) is float for v in got.values())
    kid, std = metrics.kid_with_std(a, b)
    assert got["kid"] == pytest.approx(kid, rel=1e-4)
    assert got["kid_std"] == pytest.approx(std, rel=1e-4)
    assert got["fid"] == pytest.approx(metrics.frechet_distance(a, b), rel=1e-4)


@needs_venv
@pytest.mark.ray
@pytest.mark.tfgan
def test_inception_activations_through_a_tfhub_directory(ray_local, tmp_path):
    module = tmp_path / "fake-inception"
    subprocess.run([str(DEFAULT_VENV / "bin" / "python"), "-c", FAKE_MODULE, str(module)],
                   check=True, capture_output=True, timeout=300)
    levels = np.array([-1.0, -0.5, 0.0, 0.25, 1.0], np.float32)  # dyadic: float32 sums stay exact
    images = np.broadcast_to(levels[:, None, None, None], (5, 8, 8, 1))  # grey, constant per image
    got = tfgan_inception_activations(images, module, batch_size=2)  # 3 batches, the last one short
    assert got.shape == (5, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got[:, :3], np.repeat(levels[:, None], 3, 1), atol=1e-5)  # grey -> 3 channels, order kept
    np.testing.assert_array_equal(got[:, 3], 299.0)  # resized to Inception's 299 x 299
