"""A small conditional U-Net eps-predictor (Ho et al. 2020, appendix B; Dhariwal & Nichol 2021)
with class labels for classifier-free guidance (Ho & Salimans 2022) and an optional guidance-weight
input for Meng et al. 2023's w-conditioned student.

Conditioning enters every residual block through one embedding vector:
emb = time(t) + class(y) [+ guidance(w)]. The label value `num_classes` is the null class (y=None
means all-null). The guidance branch ends in a zero-initialised Dense layer and is skipped when
w is None, so a student initialised from a teacher's parameters computes the teacher's eps.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def sinusoidal(v, dim: int, scale: float = 1000.0, max_period: float = 10000.0):
    """Transformer sinusoidal features of scale*v (Vaswani et al. 2017, sec. 3.5; Ho et al. 2020): [B] -> [B, dim]."""
    v = jnp.asarray(v)
    v = v.astype(jnp.promote_types(v.dtype, jnp.float32))
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=v.dtype) / half)
    arg = (scale * v)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


def conditioning(module: nn.Module, t, y, w, batch: int, emb_dim: int, num_classes: int):
    """The conditioning vector time(t) + class(y) [+ guidance(w)] [B, emb_dim], shared by the
    U-Net and the MLP; the guidance branch's parameters exist from init even when w is None."""
    t = jnp.broadcast_to(jnp.asarray(t), (batch,))
    emb = nn.Dense(emb_dim, name="time_dense_0")(sinusoidal(t, emb_dim // 4 * 2))
    emb = nn.Dense(emb_dim, name="time_dense_1")(nn.silu(emb))
    if num_classes > 0:
        y = jnp.full((batch,), num_classes, jnp.int32) if y is None else jnp.broadcast_to(jnp.asarray(y, jnp.int32), (batch,))
        emb = emb + nn.Embed(num_classes + 1, emb_dim, name="class_embed")(y)
    if w is not None or module.is_initializing():
        w_in = jnp.zeros((batch,)) if w is None else jnp.broadcast_to(jnp.asarray(w), (batch,))
        h = nn.Dense(emb_dim, name="w_dense_0")(sinusoidal(w_in, emb_dim // 4 * 2, scale=100.0))
        h = nn.Dense(emb_dim, kernel_init=nn.initializers.zeros, name="w_dense_1")(nn.silu(h))
        if w is not None:
            emb = emb + h
    return emb


def _groups(c: int) -> int:
    return math.gcd(8, c)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, the conditioning as a per-channel scale and shift of the second
    GroupNorm's output (Dhariwal & Nichol 2021; a bias added before a norm with one channel per
    group would be normalised away)."""

    out_ch: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, emb, train: bool):
        h = nn.Conv(self.out_ch, (3, 3))(nn.silu(nn.GroupNorm(_groups(x.shape[-1]))(x)))
        scale, shift = jnp.split(nn.Dense(2 * self.out_ch)(nn.silu(emb))[:, None, None, :], 2, axis=-1)
        h = nn.silu(nn.GroupNorm(_groups(self.out_ch))(h) * (1 + scale) + shift)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.out_ch, (3, 3), kernel_init=nn.initializers.zeros)(h)
        if x.shape[-1] != self.out_ch:
            x = nn.Conv(self.out_ch, (1, 1))(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the spatial positions, residual."""

    @nn.compact
    def __call__(self, x):
        B, H, W, C = x.shape
        h = nn.GroupNorm(_groups(C))(x).reshape(B, H * W, C)
        h = nn.MultiHeadDotProductAttention(num_heads=1, out_kernel_init=nn.initializers.zeros)(h)
        return x + h.reshape(B, H, W, C)


class UNet(nn.Module):
    """eps(x [B,H,W,C], t [B], y [B] | None, w [B] | None) -> [B,H,W,C]; t in [0, 1] continuous."""

    ch: int = 32
    ch_mult: tuple = (1, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple = ()
    num_classes: int = 10
    dropout: float = 0.0
    out_ch: int | None = None

    def __post_init__(self):
        """Sizes a network can be built with (a typo like ch: 2**31 would only fail, or hang, later)."""
        from pipeline.errors import UserError

        for name, value, low, high in (("ch", self.ch, 1, 4096), ("num_res_blocks", self.num_res_blocks, 0, 64),
                                       ("num_classes", self.num_classes, 0, 100_000)):
            if isinstance(value, int) and not low <= value <= high:  # other types fail where they are used
                raise UserError(f"config key 'model.kwargs.{name}': must be in [{low}, {high}], got {value}")
        mults = [m for m in self.ch_mult if isinstance(m, int)] if isinstance(self.ch_mult, (tuple, list)) else []
        if len(mults) > 8 or not all(1 <= m <= 64 for m in mults):
            raise UserError(f"config key 'model.kwargs.ch_mult': 1 to 8 multipliers in [1, 64], got {list(self.ch_mult)}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x, t, y=None, w=None, train: bool = False):
        B, H, _, C = x.shape
        emb = conditioning(self, t, y, w, B, 4 * self.ch, self.num_classes)

        def block(h, ch):
            h = ResBlock(ch, self.dropout)(h, emb, train)
            return AttnBlock()(h) if h.shape[1] in self.attn_resolutions else h

        h = nn.Conv(self.ch, (3, 3))(x)
        skips = []
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = block(h, self.ch * mult)
                skips.append(h)
            if level != len(self.ch_mult) - 1:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2))(h)
        h = block(h, h.shape[-1])
        for level, mult in reversed(list(enumerate(self.ch_mult))):
            for _ in range(self.num_res_blocks):
                h = block(jnp.concatenate([h, skips.pop()], axis=-1), self.ch * mult)
            if level != 0:
                h = nn.Conv(self.ch * self.ch_mult[level - 1], (1, 1))(h)
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        h = nn.silu(nn.GroupNorm(_groups(h.shape[-1]))(h))
        out = nn.Conv(self.out_ch or C, (3, 3), kernel_init=nn.initializers.zeros)(h)
        return out.astype(x.dtype)


def param_count(params) -> int:
    """Total number of parameters in a pytree."""
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))


def init_params(module: nn.Module, key, *args, **kwargs):
    """module.init(key, *args) jitted, with the non-partitionable threefry: XLA:CPU compiles the
    partitionable threefry of every parameter shape very slowly (47 s against 8 s for a small U-Net)."""
    with jax.threefry_partitionable(False):
        return jax.jit(module.init)(key, *args, **kwargs)
