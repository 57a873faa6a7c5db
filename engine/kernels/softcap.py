"""Tanh soft-capped logits, out = cap * tanh(inp / cap) (Gemma 2; the NanoGPT speedrun).

The cap bounds every logit to (-cap, cap) and is the identity near zero. It sits between the
head's matmul and the cross-entropy: the matmul writes the raw logits into their own activation
buffer, and the capped ones go to `probs`, which the cross-entropy turns into probabilities.
tanh comes from fastmath.fast_tanh (|error| <= 3.5e-7, so <= cap * 3.5e-7 on a logit).
"""

import numpy as np
from numba import njit

from . import KERNEL
from .fastmath import fast_tanh


@njit(**KERNEL)
def softcap_forward(out, inp, cap):
    """out (N, V) is written; inp (N, V); cap > 0."""
    N, V = inp.shape
    c = np.float32(cap)
    inv = np.float32(1.0 / cap)
    for i in range(N):
        x = inp[i]
        o = out[i]
        for j in range(V):
            o[j] = c * fast_tanh(x[j] * inv)


@njit(**KERNEL)
def softcap_backward(dinp, dout, inp, cap):
    """dinp (N, V) is overwritten (one producer) and may be the same array as dout (N, V);
    inp (N, V) is the forward's input."""
    N, V = inp.shape
    inv = np.float32(1.0 / cap)
    for i in range(N):
        x = inp[i]
        g = dout[i]
        d = dinp[i]
        for j in range(V):
            # forward: out = cap * tanh(x / cap)  ->  dx = (1 - tanh(x / cap)^2) dout
            th = fast_tanh(x[j] * inv)
            d[j] = (np.float32(1.0) - th * th) * g[j]


# ---------------------------------------------------------------------------------------------
# numpy references


def softcap_forward_reference(inp, cap):
    return cap * np.tanh(inp / cap)


def softcap_backward_reference(dout, inp, cap):
    return (1.0 - np.tanh(inp / cap) ** 2) * dout
