"""Frechet distance between Gaussians fitted to features (Heusel et al. 2017, eq. 6; FID on
Inception features), in float64 with unbiased covariances as tensorflow-gan's
`frechet_classifier_distance_from_activations`, and the mergeable moments that let sharded
workers compute it (Chan, Golub and LeVeque 1979, pairwise update)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import UserError
from pipeline.metrics._checks import as_features


@dataclass(frozen=True)
class FeatureMoments:
    """count n, mean [F] and scatter M2 = sum_i (f_i - mean)(f_i - mean)^T [F, F], float64."""

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def from_features(cls, feats) -> "FeatureMoments":
        """Moments of a [N, F] feature array (N may be 0)."""
        f = as_features(feats, "features")
        if len(f) == 0:
            dim = f.shape[1]
            return cls(0, np.zeros(dim), np.zeros((dim, dim)))
        mean = f.mean(axis=0)
        c = f - mean
        return cls(len(f), mean, c.T @ c)

    def merge(self, other: "FeatureMoments") -> "FeatureMoments":
        """Moments of the union: n = n_a + n_b, delta = mean_b - mean_a,
        mean = mean_a + delta n_b / n, M2 = M2_a + M2_b + delta delta^T n_a n_b / n (Chan et al. 1979)."""
        if self.mean.shape != other.mean.shape:
            raise UserError(f"cannot merge moments of {self.mean.shape[0]} and {other.mean.shape[0]} features")
        n = self.count + other.count
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.count * other.count / n)
        return FeatureMoments(n, mean, m2)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance M2 / (n - 1)."""
        if self.count < 2:
            raise UserError(f"a covariance needs at least 2 samples, got {self.count}")
        return self.m2 / (self.count - 1)

    def to_dict(self) -> dict:
        """Plain JSON-able data: {"count": int, "mean": [F], "m2": [[F] * F]}."""
        return {"count": int(self.count), "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureMoments":
        """Inverse of to_dict (lists or arrays); shapes are checked."""
        try:
            count, mean, m2 = int(data["count"]), np.asarray(data["mean"], np.float64), np.asarray(data["m2"], np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"feature moments need count, mean and m2: {e}") from None
        if count < 0 or mean.ndim != 1 or m2.shape != (mean.shape[0],) * 2:
            raise UserError(f"bad feature moments: count {count}, mean shape {mean.shape}, m2 shape {m2.shape}")
        return cls(count, mean, m2)


def _sqrt_psd(mat: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (eigenvalues clipped at 0)."""
    w, v = np.linalg.eigh((mat + mat.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma_a: np.ndarray, sigma_b: np.ndarray) -> float:
    """tr sqrt(Sigma_a Sigma_b) = tr sqrt(A Sigma_b A), A = Sigma_a^(1/2) (same eigenvalues)."""
    root = _sqrt_psd(sigma_a)
    w = np.linalg.eigvalsh(root @ sigma_b @ root)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance_from_moments(m_a: FeatureMoments, m_b: FeatureMoments) -> float:
    """||mu_a - mu_b||^2 + tr(Sigma_a + Sigma_b - 2 (Sigma_a Sigma_b)^(1/2)) (Heusel et al. 2017, eq. 6)."""
    if m_a.dim != m_b.dim:
        raise UserError(f"feature dimensions differ: {m_a.dim} vs {m_b.dim}")
    sa, sb = m_a.cov, m_b.cov
    diff = m_a.mean - m_b.mean
    return float(diff @ diff + np.trace(sa) + np.trace(sb) - 2.0 * trace_sqrt_product(sa, sb))


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between two feature sets [N, F] (either may also be FeatureMoments)."""
    moments = []
    for name, f in (("feats_a", feats_a), ("feats_b", feats_b)):
        moments.append(f if isinstance(f, FeatureMoments) else FeatureMoments.from_features(as_features(f, name)))
    return frechet_distance_from_moments(*moments)
