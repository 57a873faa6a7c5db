"""Rotary position embeddings (Su et al. 2021, "RoFormer"), in the half-split layout of GPT-NeoX
and Llama: within each head, channel i pairs with channel i + hs/2 and the pair is turned by the
angle t * base^(-2i/hs) of its position t.

    out1 = x1 cos - x2 sin,  out2 = x2 cos + x1 sin

Only q and k turn: q . k then depends on the positions through their difference alone. The
kernels work on the fused (B, T, 3C) buffer of attention.py (heads.py): the heads of q and then
of k are the 2*NH contiguous hs-wide slices of its first 2C channels; v is copied through. A
rotation is linear and orthogonal, so the backward is the opposite turn and needs nothing
cached: both kernels are `rotate`, by the angle and by minus the angle.
"""

import numpy as np
from numba import njit

from ..maths import ROPE_BASE, rope_angles
from . import KERNEL
from .heads import qkv_sizes

BASE = ROPE_BASE


def rope_tables(maxT: int, hs: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (maxT, hs/2) float32: row t holds the angles t * BASE^(-2i/hs), computed in
    float64 and rounded once."""
    cos, sin = rope_angles(np.arange(maxT), hs)  # (maxT, hs/2) float64
    return cos.astype(np.float32), sin.astype(np.float32)


@njit(inline="always", **KERNEL)
def rotate(out, inp, cos, sin, NH, sign):
    """out = inp with each head of q and k turned by sign * its angles (sign 1 or -1, float32)
    and v copied; out may be the same array as inp. Shapes as rope_forward's."""
    B, T, C, hs = qkv_sizes(inp, NH)
    half = hs // 2
    for b in range(B):
        for t in range(T):
            x = inp[b, t]
            o = out[b, t]
            co = cos[t]
            si = sin[t]
            # pass 1: turn each head of q and of k (both values are read before either is written)
            for h in range(2 * NH):
                base = h * hs
                for i in range(half):
                    x1 = x[base + i]
                    x2 = x[base + half + i]
                    o[base + i] = x1 * co[i] - x2 * (sign * si[i])  # sign * si[i] = sin(sign * angle)
                    o[base + half + i] = x2 * co[i] + x1 * (sign * si[i])
            # pass 2: v goes through unchanged
            for c in range(2 * C, x.shape[0]):
                o[c] = x[c]


@njit(**KERNEL)
def rope_forward(out, inp, cos, sin, NH):
    """out (B, T, 3C) is written and may be the same array as inp (B, T, 3C); cos, sin
    (maxT, hs/2) with maxT >= T, row t for position t."""
    rotate(out, inp, cos, sin, NH, np.float32(1.0))


@njit(**KERNEL)
def rope_backward(dinp, dout, cos, sin, NH):
    """dinp (B, T, 3C) is overwritten (one producer) and may be the same array as dout."""
    # forward: out1 = x1 cos - x2 sin; out2 = x2 cos + x1 sin  ->  the transpose, the turn back:
    # dx1 = g1 cos + g2 sin; dx2 = g2 cos - g1 sin; v's gradient goes through
    rotate(dinp, dout, cos, sin, NH, np.float32(-1.0))


# ---------------------------------------------------------------------------------------------
# numpy references


def rope_rotate_reference(x, positions):
    """x (..., T, hs) turned by the angles of `positions` (T,), in float64."""
    hs = x.shape[-1]
    inv_freq = BASE ** (-np.arange(0, hs, 2, dtype=np.float64) / hs)
    angles = np.outer(np.asarray(positions, dtype=np.float64), inv_freq)  # (T, hs/2)
    cos, sin = np.cos(angles), np.sin(angles)
    x1, x2 = x[..., : hs // 2], x[..., hs // 2 :]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def rope_forward_reference(inp, NH):
    B, T, C3 = inp.shape
    C = C3 // 3
    hs = C // NH
    heads = inp[..., : 2 * C].reshape(B, T, 2 * NH, hs).transpose(0, 2, 1, 3)  # (B, 2NH, T, hs)
    turned = rope_rotate_reference(heads, np.arange(T)).transpose(0, 2, 1, 3).reshape(B, T, 2 * C)
    return np.concatenate([turned, inp[..., 2 * C :]], axis=-1)


def rope_backward_reference(dout, NH):
    B, T, C3 = dout.shape
    C = C3 // 3
    hs = C // NH
    heads = dout[..., : 2 * C].reshape(B, T, 2 * NH, hs).transpose(0, 2, 1, 3)
    back = rope_rotate_reference(heads, -np.arange(T)).transpose(0, 2, 1, 3).reshape(B, T, 2 * C)
    return np.concatenate([back, dout[..., 2 * C :]], axis=-1)
