"""A small CNN digit classifier for 8x8x1 images in [-1, 1]; its penultimate layer is the feature
space of KID and FD on the digits testbed ("Frechet distance in digit-classifier features").

Trained on the digits train split only, with one-pixel random shifts. Saved as flax msgpack bytes
(`feature_net.msgpack`) plus a JSON sidecar (`feature_net.json`); no pickle.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from pipeline.errors import UserError
from pipeline.io import atomic_write_bytes, atomic_write_json

FEATURE_DIM = 64
FORMAT = "ddss-digit-classifier-v1"


class DigitCNN(nn.Module):
    """Conv(32)-Conv(32)-pool-Conv(64)-pool-Dense(64) features (SiLU, differentiable) -> 10 logits."""

    features: int = FEATURE_DIM

    @nn.compact
    def __call__(self, x, return_features: bool = False):
        h = nn.silu(nn.Conv(32, (3, 3))(x))
        h = nn.avg_pool(nn.silu(nn.Conv(32, (3, 3))(h)), (2, 2), (2, 2))
        h = nn.avg_pool(nn.silu(nn.Conv(64, (3, 3))(h)), (2, 2), (2, 2))
        f = nn.silu(nn.Dense(self.features)(h.reshape(h.shape[0], -1)))
        return f if return_features else nn.Dense(10)(f)


def _shift(key, x):
    """Random one-pixel shifts (background -1 fills the border): light augmentation."""
    B, H, W, _ = x.shape
    pad = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-1.0)
    dy, dx = jax.random.randint(key, (2, B), 0, 3)
    crop = lambda im, i, j: jax.lax.dynamic_slice(im, (i, j, 0), (H, W, im.shape[-1]))  # noqa: E731
    return jax.vmap(crop)(pad, dy, dx)


def accuracy(params, images, labels) -> float:
    """Fraction of images whose argmax logit is the label."""
    logits = jax.jit(DigitCNN().apply)(params, jnp.asarray(images))
    return float(np.mean(np.argmax(np.asarray(logits), -1) == labels))


def train_digit_classifier(seed: int = 0, steps: int = 1000, batch: int = 128, lr: float = 3e-3, progress: bool = True):
    """Train on the digits train split; returns (params, accuracy on the held-out test split)."""
    from pipeline.data.digits import load_digits
    from pipeline.progress import bar

    images, labels = load_digits("train")
    model = DigitCNN()
    key = jax.random.key(seed)
    params = model.init(jax.random.fold_in(key, 0), jnp.zeros((1, 8, 8, 1)))
    opt = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=1e-4)
    state = opt.init(params)

    @jax.jit
    def step(params, state, i):
        k_idx, k_aug = jax.random.split(jax.random.fold_in(key, i + 1))
        idx = jax.random.choice(k_idx, len(labels), (batch,), replace=False)
        x, y = _shift(k_aug, jnp.asarray(images)[idx]), jnp.asarray(labels)[idx]

        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    for i in bar(range(steps), desc="digit classifier", disable=not progress, leave=False):
        params, state, _ = step(params, state, i)
    test_images, test_labels = load_digits("test")
    return params, accuracy(params, test_images, test_labels)


def feature_fn(params):
    """f(x [B, 8, 8, 1] in [-1, 1]) -> penultimate features [B, 64]; pure JAX, differentiable."""
    model = DigitCNN()

    def f(x):
        return model.apply(params, jnp.asarray(x), return_features=True)

    return f


def _paths(path):
    path = os.fspath(path)
    stem = path[: -len(".msgpack")] if path.endswith(".msgpack") else path
    return stem + ".msgpack", stem + ".json"


def save_feature_net(path, params, meta: dict):
    """Write params as msgpack bytes and meta as a JSON sidecar, each atomically (bytes first)."""
    bin_path, json_path = _paths(path)
    atomic_write_bytes(bin_path, serialization.to_bytes(jax.device_get(params)))
    atomic_write_json(json_path, {"format": FORMAT, **meta})


def load_feature_net(path):
    """(params, meta) saved by save_feature_net; a missing or corrupt file raises a one-line UserError."""
    bin_path, json_path = _paths(path)
    template = DigitCNN().init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    try:
        with open(json_path) as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        with open(bin_path, "rb") as f:
            params = serialization.from_bytes(template, f.read())
        ok = jax.tree.map(lambda a, b: np.shape(a) == np.shape(b), params, template)
        if not all(jax.tree_util.tree_leaves(ok)):
            raise ValueError("parameter shapes differ from the digit classifier's")
    except FileNotFoundError as e:
        raise UserError(f"feature net file missing: {e.filename}") from None
    except Exception as e:  # msgpack/JSON decoding errors have many types
        msg = " ".join(str(e).split())[:120]
        raise UserError(f"feature net at {bin_path} is corrupt ({type(e).__name__}: {msg}); delete it to retrain") from None
    return jax.tree.map(jnp.asarray, params), meta


def feature_net_path(cache_dir, seed: int = 0) -> str:
    """Where load_or_train_feature_net caches the classifier of `seed`."""
    return os.path.join(os.fspath(cache_dir), "feature_net", f"digits-seed{seed}.msgpack")


@contextlib.contextmanager
def _creation_lock(path):
    """An exclusive flock on path's ".lock" sibling: one process trains a cache entry, the others wait."""
    lock = _paths(path)[0][: -len(".msgpack")] + ".lock"
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_or_train_feature_net(cache_dir, seed: int = 0, progress: bool = True):
    """The digit classifier's params, cached under cache_dir/feature_net/ (trained once, then reused).

    Processes sharing the cache (evaluation actors, parallel test workers) train it once: the first
    trains under a lock, the others wait for it and read its file."""
    path = feature_net_path(cache_dir, seed)
    complete = lambda: os.path.exists(_paths(path)[1])  # noqa: E731  the sidecar is written last
    if not complete():
        with _creation_lock(path):
            if not complete():
                params, acc = train_digit_classifier(seed=seed, progress=progress)
                save_feature_net(path, params, {"seed": seed, "test_accuracy": acc, "feature_dim": FEATURE_DIM,
                                                "data": "sklearn-digits train split"})
                return params
    return load_feature_net(path)[0]
