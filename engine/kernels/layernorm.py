"""LayerNorm over the last dimension, eps 1e-5, biased variance (PyTorch's nn.LayerNorm).

Rows are flattened: every kernel sees (N, C) with N = B*T, a free reshape of contiguous buffers.
Forward caches mean and rstd for the backward, so the backward never recomputes statistics.
"""

import numpy as np
from numba import njit

from ..maths import NORM_EPS
from . import KERNEL

EPS = NORM_EPS


@njit(**KERNEL)
def layernorm_forward(out, mean, rstd, inp, weight, bias):
    """out (N, C), mean (N,), rstd (N,) are written; inp (N, C); weight, bias (C,)."""
    N, C = inp.shape
    for i in range(N):
        x = inp[i]
        # pass 1: mean
        m = np.float32(0.0)
        for c in range(C):
            m += x[c]
        m = m / C
        # pass 2: biased variance
        v = np.float32(0.0)
        for c in range(C):
            d = x[c] - m
            v += d * d
        v = v / C
        s = np.float32(1.0) / np.sqrt(v + np.float32(EPS))
        # pass 3: normalize, scale, shift
        o = out[i]
        for c in range(C):
            o[c] = (x[c] - m) * s * weight[c] + bias[c]
        mean[i] = m
        rstd[i] = s


@njit(**KERNEL)
def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd):
    """dinp (N, C), dweight and dbias (C,) all accumulate (+=); dout, inp (N, C)."""
    N, C = inp.shape
    for i in range(N):
        x = inp[i]
        g = dout[i]
        m = mean[i]
        s = rstd[i]
        # pass 1: the two reductions of the LayerNorm backward
        # forward: norm = (x - mean) * rstd; out = norm * weight + bias
        dnorm_mean = np.float32(0.0)
        dnorm_norm_mean = np.float32(0.0)
        for c in range(C):
            norm = (x[c] - m) * s
            dnorm = weight[c] * g[c]
            dnorm_mean += dnorm
            dnorm_norm_mean += dnorm * norm
        dnorm_mean = dnorm_mean / C
        dnorm_norm_mean = dnorm_norm_mean / C
        # pass 2: accumulate the parameter and input gradients
        d = dinp[i]
        for c in range(C):
            norm = (x[c] - m) * s
            dnorm = weight[c] * g[c]
            dbias[c] += g[c]
            dweight[c] += norm * g[c]
            d[c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s


# ---------------------------------------------------------------------------------------------
# numpy references


def layernorm_forward_reference(inp, weight, bias):
    mean = inp.mean(axis=-1, keepdims=True)
    var = ((inp - mean) ** 2).mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + EPS)
    return (inp - mean) * rstd * weight + bias, mean[..., 0], rstd[..., 0]


def layernorm_backward_reference(dout, inp, weight):
    mean = inp.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((inp - mean) ** 2).mean(axis=-1, keepdims=True) + EPS)
    norm = (inp - mean) * rstd
    dnorm = dout * weight
    dinp = (dnorm - dnorm.mean(-1, keepdims=True) - norm * (dnorm * norm).mean(-1, keepdims=True)) * rstd
    return dinp, (dout * norm).sum(axis=0), dout.sum(axis=0)
