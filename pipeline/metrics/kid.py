"""Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs", eq. 4 with the
cubic kernel), computed in float64 with tensorflow-gan's block estimator: the samples are cut
into the same contiguous blocks as `kernel_classifier_distance_and_std_from_activations`,
each block gives an unbiased MMD^2, and the KID is their mean with a standard error."""
from __future__ import annotations

import math

import numpy as np

from pipeline.errors import UserError
from pipeline.metrics._checks import as_features, same_dim


def cubic_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3, the polynomial kernel of KID (Binkowski et al. 2018, sec. 4)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3): kernel means with the diagonals of k(x, x)
    and k(y, y) left out, minus twice the cross mean."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = cubic_kernel(x, x), cubic_kernel(y, y), cubic_kernel(x, y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2.0 * kxy.mean()
    )


def block_bounds(n: int, n_blocks: int) -> np.ndarray:
    """Boundaries [n_blocks + 1] of tensorflow-gan's split of n rows: n_blocks - r blocks of
    n // n_blocks rows, then r = n mod n_blocks blocks of one row more."""
    v, r = divmod(n, n_blocks)
    sizes = [v] * (n_blocks - r) + [v + 1] * r
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def block_estimates(feats_a, feats_b, block_size: int = 1024) -> np.ndarray:
    """The unbiased MMD^2 of each block; ceil(max(N_a, N_b) / block_size) blocks."""
    a, b = as_features(feats_a, "feats_a"), as_features(feats_b, "feats_b")
    same_dim(a, b)
    if int(block_size) < 2:
        raise UserError(f"KID block_size must be at least 2, got {block_size}")
    n_blocks = math.ceil(max(len(a), len(b)) / int(block_size))
    if n_blocks == 0 or min(len(a), len(b)) < 2 * n_blocks:
        raise UserError(
            f"KID needs at least 2 samples of each set per block: got {len(a)} and {len(b)} "
            f"samples for {max(n_blocks, 1)} block(s) of at most {block_size}"
        )
    ia, ib = block_bounds(len(a), n_blocks), block_bounds(len(b), n_blocks)
    return np.array([mmd2_unbiased(a[ia[i]:ia[i + 1]], b[ib[i]:ib[i + 1]]) for i in range(n_blocks)])


def kid_with_std(feats_a, feats_b, block_size: int = 1024) -> tuple[float, float | None]:
    """(KID, its standard error) = (mean of the block estimates, their Bessel-corrected std
    / sqrt(blocks)). With at most block_size samples there is one block and no spread to
    estimate the error from: the std is None (tensorflow-gan divides by blocks - 1 = 0 and
    returns NaN, which JSON results cannot hold)."""
    ests = block_estimates(feats_a, feats_b, block_size)
    if len(ests) < 2:
        return float(ests.mean()), None
    return float(ests.mean()), float(np.sqrt(ests.var(ddof=1) / len(ests)))


def jackknife_std(feats_a, feats_b) -> float:
    """The two-sample jackknife standard error of the unbiased MMD^2 (Efron & Stein 1981), each
    leave-one-out estimate from the kernel sums less that row's terms: the error of a KID whose
    samples make one block, where the block estimator has no spread to measure."""
    a, b = as_features(feats_a, "feats_a"), as_features(feats_b, "feats_b")
    same_dim(a, b)
    m, n = len(a), len(b)
    if min(m, n) < 3:
        raise UserError(f"the jackknife KID error needs at least 3 samples of each set, got {m} and {n}")
    kxx, kyy, kxy = cubic_kernel(a, a), cubic_kernel(b, b), cubic_kernel(a, b)
    rxx, ryy = kxx.sum(1) - np.diag(kxx), kyy.sum(1) - np.diag(kyy)  # off-diagonal row sums
    sxx, syy, sxy = rxx.sum(), ryy.sum(), kxy.sum()
    # leave x_i out: (m - 1) rows of a; leave y_j out: (n - 1) rows of b
    loo_a = (sxx - 2 * rxx) / ((m - 1) * (m - 2)) + syy / (n * (n - 1)) - 2 * (sxy - kxy.sum(1)) / ((m - 1) * n)
    loo_b = sxx / (m * (m - 1)) + (syy - 2 * ryy) / ((n - 1) * (n - 2)) - 2 * (sxy - kxy.sum(0)) / (m * (n - 1))
    var = (m - 1) / m * np.sum((loo_a - loo_a.mean()) ** 2) + (n - 1) / n * np.sum((loo_b - loo_b.mean()) ** 2)
    return float(np.sqrt(var))


def kid(feats_a, feats_b, block_size: int = 1024) -> float:
    """KID between two feature sets [N_a, F] and [N_b, F] (mean of block MMD^2 estimates)."""
    return kid_with_std(feats_a, feats_b, block_size)[0]
