"""A residual MLP eps-predictor for vectors (the d-dimensional Gaussian-mixture testbed), with the
same conditioning as the U-Net: time(t) + class(y) [+ guidance(w), zero-initialised, skipped when
w is None]."""
from __future__ import annotations

import flax.linen as nn

from pipeline.models.unet import conditioning


class MLPDenoiser(nn.Module):
    """eps(x [B, d], t [B], y [B] | None, w [B] | None) -> [B, d]."""

    hidden: int = 128
    depth: int = 3
    num_classes: int = 0

    @nn.compact
    def __call__(self, x, t, y=None, w=None, train: bool = False):
        emb = conditioning(self, t, y, w, x.shape[0], self.hidden, self.num_classes)
        h = nn.Dense(self.hidden)(x)
        for _ in range(self.depth):
            r = nn.silu(nn.LayerNorm()(h) + nn.Dense(self.hidden)(nn.silu(emb)))
            h = h + nn.Dense(self.hidden)(nn.silu(nn.Dense(self.hidden)(r)))
        return nn.Dense(x.shape[-1])(nn.silu(nn.LayerNorm()(h))).astype(x.dtype)
