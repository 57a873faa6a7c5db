"""QK-norm: each head's query and key RMS-normalised, without a gain, before their dot product
(Dehghani et al. 2023; the NanoGPT speedrun). |q . k| / sqrt(hs) is then at most sqrt(hs), so the
attention logits cannot grow without bound.

    out = x * rstd,  rstd = 1 / sqrt(mean(x^2) + eps) over each hs-wide head slice

Works on the fused (B, T, 3C) buffer of attention.py (heads.py), like rope.py: the 2*NH heads of
q and k are normalised, v is copied through. The forward caches rstd (B, T, 2*NH); the backward
reads the forward's input, so `out` must be a different array from `inp`.
"""

import numpy as np
from numba import njit

from ..maths import NORM_EPS
from . import KERNEL
from .heads import qkv_sizes

EPS = NORM_EPS


@njit(**KERNEL)
def qknorm_forward(out, rstd, inp, NH):
    """out (B, T, 3C) and rstd (B, T, 2*NH) are written; inp (B, T, 3C), not the same as out."""
    B, T, C, hs = qkv_sizes(inp, NH)
    for b in range(B):
        for t in range(T):
            x = inp[b, t]
            o = out[b, t]
            for h in range(2 * NH):
                base = h * hs
                # pass 1: mean square of this head's slice
                ms = np.float32(0.0)
                for i in range(hs):
                    ms += x[base + i] * x[base + i]
                s = np.float32(1.0) / np.sqrt(ms / hs + np.float32(EPS))
                # pass 2: normalise
                for i in range(hs):
                    o[base + i] = x[base + i] * s
                rstd[b, t, h] = s
            # pass 3: v goes through unchanged
            for c in range(2 * C, x.shape[0]):
                o[c] = x[c]


@njit(**KERNEL)
def qknorm_backward(dinp, dout, inp, rstd, NH):
    """dinp (B, T, 3C) is overwritten (one producer) and may be the same array as dout;
    inp (B, T, 3C) and rstd (B, T, 2*NH) as in the forward."""
    B, T, C, hs = qkv_sizes(inp, NH)
    for b in range(B):
        for t in range(T):
            x = inp[b, t]
            g = dout[b, t]
            d = dinp[b, t]
            for h in range(2 * NH):
                base = h * hs
                s = rstd[b, t, h]
                # forward: norm = x * rstd  ->  dx = rstd * (dout - norm * mean(dout * norm))
                dot = np.float32(0.0)
                for i in range(hs):
                    dot += g[base + i] * x[base + i] * s
                dot = dot / hs
                for i in range(hs):
                    d[base + i] = s * (g[base + i] - x[base + i] * s * dot)
            for c in range(2 * C, x.shape[0]):
                d[c] = g[c]


# ---------------------------------------------------------------------------------------------
# numpy references


def qknorm_forward_reference(inp, NH):
    B, T, C3 = inp.shape
    C = C3 // 3
    heads = inp[..., : 2 * C].reshape(B, T, 2 * NH, C // NH)
    rstd = 1.0 / np.sqrt((heads**2).mean(axis=-1, keepdims=True) + EPS)  # (B, T, 2NH, 1)
    out = np.concatenate([(heads * rstd).reshape(B, T, 2 * C), inp[..., 2 * C :]], axis=-1)
    return out, rstd[..., 0]


def qknorm_backward_reference(dout, inp, NH):
    B, T, C3 = inp.shape
    C = C3 // 3
    heads = inp[..., : 2 * C].reshape(B, T, 2 * NH, C // NH)
    g = dout[..., : 2 * C].reshape(B, T, 2 * NH, C // NH)
    rstd = 1.0 / np.sqrt((heads**2).mean(axis=-1, keepdims=True) + EPS)
    norm = heads * rstd
    d = rstd * (g - norm * (g * norm).mean(-1, keepdims=True))
    return np.concatenate([d.reshape(B, T, 2 * C), dout[..., 2 * C :]], axis=-1)
