"""ReLU squared, out = max(x, 0)^2 (So et al. 2021, "Primer"; the NanoGPT speedrun's MLP).

A drop-in for gelu.py: the same shapes and argument order.
"""

import numpy as np
from numba import njit

from . import KERNEL


@njit(inline="always", **KERNEL)
def relu2(x):
    """max(x, 0)^2 of one float32."""
    r = x if x > np.float32(0.0) else np.float32(0.0)  # a select, so it vectorises
    return r * r


@njit(**KERNEL)
def relu2_forward(out, inp):
    """out, inp (N, H); out is written. The same bits as matmul_relu2_forward's out for its pre."""
    N, H = inp.shape
    for i in range(N):
        x = inp[i]
        o = out[i]
        for j in range(H):
            o[j] = relu2(x[j])


@njit(**KERNEL)
def matmul_relu2_forward(pre, out, inp, weight, bias):
    """The MLP's first layer and its activation in one pass: pre = inp @ weight.T + bias (kept
    for the backward) and out = max(pre, 0)^2, both (N, H) and written; inp (N, C), weight
    (H, C), bias (H,). The backward is relu2_backward, then matmul.matmul_backward."""
    np.dot(inp, weight.T, pre)
    N, H = pre.shape
    for i in range(N):
        p = pre[i]
        o = out[i]
        for j in range(H):
            x = p[j] + bias[j]
            p[j] = x
            o[j] = relu2(x)


@njit(**KERNEL)
def relu2_backward(dinp, inp, dout):
    """dinp (N, H) is overwritten (one producer); inp, dout (N, H)."""
    N, H = inp.shape
    for i in range(N):
        x = inp[i]
        g = dout[i]
        d = dinp[i]
        for j in range(H):
            # forward: out = max(x, 0)^2  ->  dx = 2 max(x, 0) dout
            r = x[j] if x[j] > np.float32(0.0) else np.float32(0.0)
            d[j] = np.float32(2.0) * r * g[j]


# ---------------------------------------------------------------------------------------------
# numpy references


def relu2_forward_reference(inp):
    return np.maximum(inp, 0.0) ** 2


def matmul_relu2_forward_reference(inp, weight, bias):
    pre = inp @ weight.T + bias
    return pre, relu2_forward_reference(pre)


def relu2_backward_reference(inp, dout):
    return 2.0 * np.maximum(inp, 0.0) * dout
