"""ReLU squared, out = max(x, 0)^2 (So et al. 2021, "Primer"; the NanoGPT speedrun's MLP).

A drop-in for gelu.py: the same shapes and argument order.
"""

import numpy as np
from numba import njit

from . import KERNEL


@njit(**KERNEL)
def relu2_forward(out, inp):
    """out, inp (N, H); out is written."""
    N, H = inp.shape
    for i in range(N):
        x = inp[i]
        o = out[i]
        for j in range(H):
            r = x[j] if x[j] > np.float32(0.0) else np.float32(0.0)  # a select, so it vectorises
            o[j] = r * r


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


def relu2_backward_reference(inp, dout):
    return 2.0 * np.maximum(inp, 0.0) * dout
