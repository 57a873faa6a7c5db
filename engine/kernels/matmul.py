"""Linear layer out = inp @ weight.T + bias on contiguous 2-D views, through BLAS (numba's np.dot
calls SciPy's sgemm). The caller holds BLAS to one thread: the worker pool is the parallelism.
"""

import numpy as np
from numba import njit

from . import KERNEL


@njit(**KERNEL)
def matmul_forward(out, inp, weight, bias):
    """out (N, OC) is written; inp (N, C); weight (OC, C); bias (OC,)."""
    np.dot(inp, weight.T, out)
    N, OC = out.shape
    for i in range(N):
        o = out[i]
        for j in range(OC):
            o[j] += bias[j]


@njit(**KERNEL)
def matmul_residual_forward(out, inp, weight, bias, residual):
    """out = residual + (inp @ weight.T + bias): a residual branch's output projection and the
    residual add in one pass over out, so the branch's output is never stored on its own (its
    backward needs only the gradient, which is the residual stream's: matmul_backward with dres).
    out, residual (N, OC); out is written and must not be residual."""
    np.dot(inp, weight.T, out)
    N, OC = out.shape
    for i in range(N):
        o = out[i]
        r = residual[i]
        for j in range(OC):
            o[j] = r[j] + (o[j] + bias[j])


@njit(**KERNEL)
def matmul_backward(dinp, dweight, dbias, scratch, dout, inp, weight):
    """dinp (N, C) is overwritten (each activation gradient has one producer); dweight (OC, C)
    and dbias (OC,) accumulate; scratch is (OC, C) working memory; dout (N, OC)."""
    # forward: out = inp @ weight.T + bias
    np.dot(dout, weight, dinp)
    np.dot(dout.T, inp, scratch)
    OC, C = dweight.shape
    for j in range(OC):
        dw = dweight[j]
        sc = scratch[j]
        for c in range(C):
            dw[c] += sc[c]
    N = dout.shape[0]
    for i in range(N):
        g = dout[i]
        for j in range(OC):
            dbias[j] += g[j]


# ---------------------------------------------------------------------------------------------
# numpy references


def matmul_forward_reference(inp, weight, bias):
    return inp @ weight.T + bias


def matmul_residual_forward_reference(inp, weight, bias, residual):
    return residual + (inp @ weight.T + bias)


def matmul_backward_reference(dout, inp, weight):
    return dout @ weight, dout.T @ inp, dout.sum(axis=0)
