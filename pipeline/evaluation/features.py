"""Feature spaces of KID/FD: the digit classifier's penultimate layer (digits), the flattened
samples (.npz data without Inception, Gaussian mixtures)."""
from __future__ import annotations

import numpy as np


def pixel_features(x):
    """The flattened samples [B, prod(shape)]: the feature space of .npz data without Inception
    and of Gaussian mixtures."""
    return x.reshape(x.shape[0], -1)


def data_features(data_name: str, cache_dir) -> tuple:
    """(feature_fn, label) of a teacher's data set: the digit classifier's penultimate layer for
    digits (trained once into cache_dir), the flattened pixels otherwise."""
    if data_name != "digits":
        return pixel_features, "pixels"
    from pipeline.models import classifier

    return classifier.feature_fn(classifier.load_or_train_feature_net(cache_dir)), "digit-classifier"


def features_in_batches(feature_fn, images, batch_size: int = 500) -> np.ndarray:
    """jit(feature_fn) of images [N, ...] in batches of batch_size, concatenated as NumPy."""
    import jax

    embed = jax.jit(feature_fn)
    return np.concatenate([np.asarray(embed(images[i:i + batch_size])) for i in range(0, len(images), batch_size)])
