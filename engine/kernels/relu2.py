"""ReLU squared, out = max(x, 0)^2 (So et al. 2021, "Primer"; the NanoGPT speedrun's MLP).

A drop-in for gelu.py: the same shapes and argument order, and like it the maths of one float32
(relu2, relu2_grad) inside activation.py's loops.
"""

import numpy as np
from numba import njit

from . import KERNEL
from .activation import activation_backward, activation_forward, matmul_activation_forward


@njit(inline="always", **KERNEL)
def relu2(x):
    """max(x, 0)^2 of one float32."""
    r = x if x > np.float32(0.0) else np.float32(0.0)  # a select, so it vectorises
    return r * r


@njit(inline="always", **KERNEL)
def relu2_grad(x):
    """d relu2(x) / dx of one float32."""
    # forward: out = max(x, 0)^2  ->  dx = 2 max(x, 0)
    r = x if x > np.float32(0.0) else np.float32(0.0)
    return np.float32(2.0) * r


@njit(**KERNEL)
def relu2_forward(out, inp):
    """out, inp (N, H); out is written. The same bits as matmul_relu2_forward's out for its pre."""
    activation_forward(out, inp, relu2)


@njit(**KERNEL)
def matmul_relu2_forward(pre, out, inp, weight, bias):
    """The MLP's first layer and its activation in one pass: pre = inp @ weight.T + bias (kept
    for the backward) and out = max(pre, 0)^2, both (N, H) and written; inp (N, C), weight
    (H, C), bias (H,). The backward is relu2_backward, then matmul.matmul_backward."""
    matmul_activation_forward(pre, out, inp, weight, bias, relu2)


@njit(**KERNEL)
def relu2_backward(dinp, inp, dout):
    """dinp (N, H) is overwritten (one producer); inp, dout (N, H)."""
    activation_backward(dinp, inp, dout, relu2_grad)


# ---------------------------------------------------------------------------------------------
# numpy references


def relu2_forward_reference(inp):
    return np.maximum(inp, 0.0) ** 2


def matmul_relu2_forward_reference(inp, weight, bias):
    pre = inp @ weight.T + bias
    return pre, relu2_forward_reference(pre)


def relu2_backward_reference(inp, dout):
    return 2.0 * np.maximum(inp, 0.0) * dout
