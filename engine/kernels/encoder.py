"""Token + position embedding. Reference: GPT-2 (Radford et al. 2019), llm.c `encoder_forward`.

`token_encoder_*` is the variant without a position table, for positions = "rope" (the
positions then enter through rope.py, inside attention).
"""

import numpy as np
from numba import njit

from . import KERNEL


@njit(**KERNEL)
def encoder_forward(out, inp, wte, wpe):
    """out (B, T, C) = wte[inp] + wpe[:T]; inp (B, T) int token ids; wte (V, C); wpe (maxT, C)."""
    B, T, C = out.shape
    for b in range(B):
        for t in range(T):
            ix = inp[b, t]
            for c in range(C):
                out[b, t, c] = wte[ix, c] + wpe[t, c]


@njit(**KERNEL)
def encoder_backward(dwte, dwpe, dout, inp):
    """dwte (V, C) and dwpe (maxT, C) accumulate; dout (B, T, C); inp (B, T)."""
    B, T, C = dout.shape
    for b in range(B):
        for t in range(T):
            ix = inp[b, t]
            # forward: out[b, t, c] = wte[ix, c] + wpe[t, c]
            for c in range(C):
                dwte[ix, c] += dout[b, t, c]
                dwpe[t, c] += dout[b, t, c]


@njit(**KERNEL)
def token_encoder_forward(out, inp, wte):
    """out (B, T, C) = wte[inp]; inp (B, T) int token ids; wte (V, C)."""
    B, T, C = out.shape
    for b in range(B):
        for t in range(T):
            ix = inp[b, t]
            for c in range(C):
                out[b, t, c] = wte[ix, c]


@njit(**KERNEL)
def token_encoder_backward(dwte, dout, inp):
    """dwte (V, C) accumulates; dout (B, T, C); inp (B, T)."""
    B, T, C = dout.shape
    for b in range(B):
        for t in range(T):
            ix = inp[b, t]
            # forward: out[b, t, c] = wte[ix, c]
            for c in range(C):
                dwte[ix, c] += dout[b, t, c]


# ---------------------------------------------------------------------------------------------
# numpy references


def encoder_forward_reference(inp, wte, wpe):
    T = inp.shape[1]
    return wte[inp] + wpe[:T][None, :, :]


def encoder_backward_reference(dout, inp, V, maxT):
    dwte = np.zeros((V, dout.shape[2]), dtype=np.float64)
    np.add.at(dwte, inp.reshape(-1), dout.reshape(-1, dout.shape[2]))
    dwpe = np.zeros((maxT, dout.shape[2]), dtype=np.float64)
    dwpe[: dout.shape[1]] = dout.sum(axis=0)
    return dwte, dwpe
