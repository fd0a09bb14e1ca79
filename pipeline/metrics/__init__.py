"""Sample-quality metrics: KID and the Frechet distance (float64 NumPy, matching
tensorflow-gan), mergeable feature moments for sharded FID, and a differentiable JAX KID
(`kid_jax`, loaded on first use so that importing the metrics does not import jax).
The tensorflow-gan backend itself lives in pipeline.distributed.tfgan.backend."""
from pipeline.metrics.frechet import FeatureMoments, frechet_distance, frechet_distance_from_moments
from pipeline.metrics.kid import jackknife_std as kid_jackknife_std
from pipeline.metrics.kid import kid, kid_with_std

__all__ = ["FeatureMoments", "frechet_distance", "frechet_distance_from_moments", "kid", "kid_jackknife_std", "kid_with_std", "kid_jax"]


def __getattr__(name):
    if name == "kid_jax":
        from pipeline.metrics.jax_kid import kid_jax

        return kid_jax
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
