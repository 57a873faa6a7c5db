"""RMSNorm over the last dimension, eps 1e-5, gain and no shift (Zhang and Sennrich 2019;
PyTorch's F.rms_norm with eps=1e-5).

    out = inp * rstd * weight,  rstd = 1 / sqrt(mean(inp^2) + eps)

Rows are flattened to (N, C) as in layernorm.py. Forward caches rstd for the backward; unlike
LayerNorm there is no mean to subtract and no bias.
"""

import numpy as np
from numba import njit

from ..maths import NORM_EPS
from . import KERNEL

EPS = NORM_EPS


@njit(**KERNEL)
def rmsnorm_forward(out, rstd, inp, weight):
    """out (N, C) and rstd (N,) are written; inp (N, C); weight (C,)."""
    N, C = inp.shape
    for i in range(N):
        x = inp[i]
        # pass 1: mean square
        ms = np.float32(0.0)
        for c in range(C):
            ms += x[c] * x[c]
        ms = ms / C
        s = np.float32(1.0) / np.sqrt(ms + np.float32(EPS))
        # pass 2: normalize and scale
        o = out[i]
        for c in range(C):
            o[c] = x[c] * s * weight[c]
        rstd[i] = s


@njit(**KERNEL)
def rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd):
    """dinp (N, C) and dweight (C,) accumulate (+=); dout, inp (N, C); rstd (N,) as forward."""
    N, C = inp.shape
    for i in range(N):
        x = inp[i]
        g = dout[i]
        s = rstd[i]
        # pass 1: the one reduction of the RMSNorm backward
        # forward: norm = x * rstd; out = norm * weight
        dnorm_norm_mean = np.float32(0.0)
        for c in range(C):
            dnorm_norm_mean += weight[c] * g[c] * x[c] * s
        dnorm_norm_mean = dnorm_norm_mean / C
        # pass 2: d rstd / dx = -rstd^3 x / C gives dx = rstd * (dnorm - norm * mean(dnorm * norm))
        d = dinp[i]
        for c in range(C):
            norm = x[c] * s
            dnorm = weight[c] * g[c]
            dweight[c] += norm * g[c]
            d[c] += (dnorm - norm * dnorm_norm_mean) * s


# ---------------------------------------------------------------------------------------------
# numpy references


def rmsnorm_forward_reference(inp, weight):
    rstd = 1.0 / np.sqrt((inp**2).mean(axis=-1, keepdims=True) + EPS)
    return inp * rstd * weight, rstd[..., 0]


def rmsnorm_backward_reference(dout, inp, weight):
    rstd = 1.0 / np.sqrt((inp**2).mean(axis=-1, keepdims=True) + EPS)
    norm = inp * rstd
    dnorm = dout * weight
    dinp = (dnorm - norm * (dnorm * norm).mean(-1, keepdims=True)) * rstd
    return dinp, (dout * norm).sum(axis=0)
