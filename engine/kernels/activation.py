"""The MLP activation's loops over (N, H) rows, written once for every activation.

gelu.py and relu2.py hold the maths of one float32 (the function and its derivative) and pass
it to these helpers; their kernels are one call each. The helpers are `inline="always"`, so
each kernel compiles to the loop it would have written out, with the scalar function inlined
in the inner loop (and the loop vectorised around it). Not kernels themselves: a function
passed as an argument to a cached kernel would be compiled again in every process.
"""

import numpy as np
from numba import njit

from . import KERNEL


@njit(inline="always", **KERNEL)
def activation_forward(out, inp, act):
    """out = act(inp) elementwise: out, inp (N, H); out is written."""
    N, H = inp.shape
    for i in range(N):
        x = inp[i]
        o = out[i]
        for j in range(H):
            o[j] = act(x[j])


@njit(inline="always", **KERNEL)
def matmul_activation_forward(pre, out, inp, weight, bias, act):
    """pre = inp @ weight.T + bias and out = act(pre) in one pass over pre: pre, out (N, H) are
    written; inp (N, C), weight (H, C), bias (H,). out holds the bits activation_forward would
    compute from pre, which the backward's recompute (TrainConfig.recompute_activation) relies on."""
    np.dot(inp, weight.T, pre)
    N, H = pre.shape
    for i in range(N):
        p = pre[i]
        o = out[i]
        for j in range(H):
            x = p[j] + bias[j]
            p[j] = x
            o[j] = act(x)


@njit(inline="always", **KERNEL)
def activation_backward(dinp, inp, dout, act_grad):
    """dinp = act_grad(inp) * dout elementwise: dinp (N, H) is overwritten (one producer);
    inp, dout (N, H)."""
    N, H = inp.shape
    for i in range(N):
        x = inp[i]
        g = dout[i]
        d = dinp[i]
        for j in range(H):
            # forward: out = act(x)  ->  dx = act'(x) dout
            d[j] = act_grad(x[j]) * g[j]
