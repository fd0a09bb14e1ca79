"""The tensorflow-gan side of the metrics backend: runs under the tfgan venv's interpreter
(TensorFlow 2.15, NumPy < 2), so it imports neither jax nor any pipeline module that does.

Arrays cross between the two interpreters as raw bytes + shape + dtype string (`to_wire`,
`from_wire`): a pickled NumPy 2 array does not load under NumPy 1. TensorFlow is imported
on first use, so the driver can import this module to encode arrays.
"""
from __future__ import annotations

import os

import numpy as np


def to_wire(a) -> dict:
    """{"data": bytes, "shape": [...], "dtype": "<f4"}: a C-contiguous copy's raw bytes."""
    a = np.ascontiguousarray(a)
    return {"data": a.tobytes(), "shape": list(a.shape), "dtype": a.dtype.str}


def from_wire(w: dict) -> np.ndarray:
    """The array `to_wire` encoded (a writable copy)."""
    return np.frombuffer(w["data"], dtype=np.dtype(w["dtype"])).reshape(w["shape"]).copy()


def _tf():
    """tensorflow and tensorflow_gan, imported on first use, their logs quieted to errors."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tensorflow_gan as tfgan

    tf.get_logger().setLevel("ERROR")  # tensorflow-gan's own map_fn deprecation notices

    return tf, tfgan


def tfgan_kid_fid(feats_a: np.ndarray, feats_b: np.ndarray, block_size: int = 1024) -> dict:
    """tensorflow-gan's KID (+ standard error; NaN for one block) and FID of two [N, F]
    activation sets, both computed in float64 (KID through its `dtype` argument; FID casts
    to float64 itself). Plain floats."""
    tf, tfgan = _tf()
    a = tf.constant(np.asarray(feats_a, np.float64))
    b = tf.constant(np.asarray(feats_b, np.float64))
    kid, kid_std = tfgan.eval.kernel_classifier_distance_and_std_from_activations(
        a, b, max_block_size=int(block_size), dtype=tf.float64
    )
    fid = tfgan.eval.frechet_classifier_distance_from_activations(a, b)
    return {"kid": float(kid.numpy()), "kid_std": float(kid_std.numpy()), "fid": float(fid.numpy())}


def inception_pool3(inception_path: str, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Pool3 activations [N, 2048] of images [N, H, W, C] (C = 1 or 3, values in [-1, 1]) from
    the TF-Hub Inception module in the local directory `inception_path` (tensorflow-gan's
    `INCEPTION_TFHUB` module, downloaded beforehand; nothing is fetched here). Images are
    resized bilinearly to 299 x 299, as tensorflow-gan's Inception expects, and run in batches
    through `run_classifier_fn`."""
    if not os.path.isdir(inception_path):
        raise FileNotFoundError(f"Inception TF-Hub module directory not found: {inception_path}")
    tf, tfgan = _tf()
    import tensorflow_hub as tfhub

    module = tfhub.load(inception_path)  # loaded once, not per batch as classifier_fn_from_tfhub would

    def pool3(x):
        return tf.compat.v1.layers.flatten(module(x)[tfgan.eval.INCEPTION_FINAL_POOL])

    size = tfgan.eval.INCEPTION_DEFAULT_IMAGE_SIZE
    out = []
    for start in range(0, len(images), batch_size):
        x = tf.image.resize(tf.constant(np.asarray(images[start:start + batch_size], np.float32)), (size, size))
        if x.shape[-1] == 1:
            x = tf.tile(x, [1, 1, 1, 3])
        out.append(tfgan.eval.run_classifier_fn(x, classifier_fn=pool3).numpy())
    return np.concatenate(out).astype(np.float32)


class TfganWorker:
    """The Ray actor's code (the driver wraps it with ray.remote and the venv's interpreter)."""

    def metrics(self, wire_a: dict, wire_b: dict, block_size: int = 1024) -> dict:
        return tfgan_kid_fid(from_wire(wire_a), from_wire(wire_b), block_size)

    def inception(self, inception_path: str, wire_images: dict, batch_size: int = 64) -> dict:
        return to_wire(inception_pool3(inception_path, from_wire(wire_images), batch_size))
