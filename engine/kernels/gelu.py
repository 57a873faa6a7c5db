"""GELU, tanh approximation (GPT-2; PyTorch's gelu(approximate='tanh')).

np.tanh inside numba is a scalar libm call that blocks vectorisation, so tanh comes from
fastmath.fast_tanh (max abs error 3.5e-7, within float32 rounding). This file holds the maths of
one float32, gelu and gelu_grad; the kernels are activation.py's loops around them.
"""

import numpy as np
from numba import njit

from ..maths import GELU_CUBIC, GELU_SCALE
from . import KERNEL
from .activation import activation_backward, activation_forward, matmul_activation_forward
from .fastmath import fast_tanh


@njit(inline="always", **KERNEL)
def gelu(x):
    """GELU of one float32."""
    u = np.float32(GELU_SCALE) * (x + np.float32(GELU_CUBIC) * x * x * x)
    return np.float32(0.5) * x * (np.float32(1.0) + fast_tanh(u))


@njit(inline="always", **KERNEL)
def gelu_grad(x):
    """d gelu(x) / dx of one float32."""
    # forward: out = 0.5 * x * (1 + tanh(u)), u = s * (x + 0.044715 x^3)
    s = np.float32(GELU_SCALE)
    u = s * (x + np.float32(GELU_CUBIC) * x * x * x)
    th = fast_tanh(u)
    sech2 = np.float32(1.0) - th * th
    du = s * (np.float32(1.0) + np.float32(3.0 * GELU_CUBIC) * x * x)
    return np.float32(0.5) * (np.float32(1.0) + th) + np.float32(0.5) * x * sech2 * du


@njit(**KERNEL)
def gelu_forward(out, inp):
    """out, inp (N, H); out is written. The same bits as matmul_gelu_forward's out for its pre:
    the backward's recompute (TrainConfig.recompute_activation) relies on it."""
    activation_forward(out, inp, gelu)


@njit(**KERNEL)
def matmul_gelu_forward(pre, out, inp, weight, bias):
    """The MLP's first layer and its activation in one pass: pre = inp @ weight.T + bias (kept
    for the backward) and out = gelu(pre), both (N, H) and written; inp (N, C), weight (H, C),
    bias (H,). The backward is gelu_backward, then matmul.matmul_backward."""
    matmul_activation_forward(pre, out, inp, weight, bias, gelu)


@njit(**KERNEL)
def gelu_backward(dinp, inp, dout):
    """dinp (N, H) is overwritten (one producer); inp, dout (N, H)."""
    activation_backward(dinp, inp, dout, gelu_grad)


# ---------------------------------------------------------------------------------------------
# numpy references


def gelu_forward_reference(inp):
    return 0.5 * inp * (1.0 + np.tanh(GELU_SCALE * (inp + GELU_CUBIC * inp**3)))


def matmul_gelu_forward_reference(inp, weight, bias):
    pre = inp @ weight.T + bias
    return pre, gelu_forward_reference(pre)


def gelu_backward_reference(inp, dout):
    u = GELU_SCALE * (inp + GELU_CUBIC * inp**3)
    th = np.tanh(u)
    local = 0.5 * (1 + th) + 0.5 * inp * (1 - th**2) * GELU_SCALE * (1 + 3 * GELU_CUBIC * inp**2)
    return local * dout
