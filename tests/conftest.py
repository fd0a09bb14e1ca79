"""Shared fixtures: one private local Ray for the whole test session."""
import warnings

import pytest


@pytest.fixture(scope="session")
def local_ray():
    """A real local Ray on 127.0.0.1 (2 CPUs, no dashboard), shut down at the end of the session."""
    import ray

    from pipeline.distributed.ray_init import ensure_ray

    with warnings.catch_warnings():
        # Ray starts its processes with fork+exec; JAX (already imported by other tests)
        # warns about any fork although exec follows at once.
        warnings.filterwarnings("ignore", message="os.fork\\(\\) was called")
        ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()
