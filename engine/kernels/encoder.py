"""Token + position embedding. Reference: GPT-2 (Radford et al. 2019), llm.c `encoder_forward`.

`token_encoder_*` is the variant without a position table, for positions = "rope" (the
positions then enter through rope.py, inside attention). Both pairs are the loops of `embed` and
`embed_backward`, with the position table's term switched on or off by a constant.
"""

import numpy as np
from numba import njit

from . import KERNEL


@njit(inline="always", **KERNEL)
def embed(out, inp, wte, wpe, positions):
    """out (B, T, C) = wte[inp], plus wpe[:T] when `positions` (a constant at each call, so the
    branch compiles away; without it wpe is not read)."""
    B, T, C = out.shape
    for b in range(B):
        for t in range(T):
            ix = inp[b, t]
            for c in range(C):
                x = wte[ix, c]
                if positions:
                    x = x + wpe[t, c]
                out[b, t, c] = x


@njit(inline="always", **KERNEL)
def embed_backward(dwte, dwpe, dout, inp, positions):
    """dwte (and dwpe when `positions`) accumulate the gradient of embed; dout (B, T, C)."""
    B, T, C = dout.shape
    for b in range(B):
        for t in range(T):
            ix = inp[b, t]
            # forward: out[b, t, c] = wte[ix, c] (+ wpe[t, c])
            for c in range(C):
                dwte[ix, c] += dout[b, t, c]
                if positions:
                    dwpe[t, c] += dout[b, t, c]


@njit(**KERNEL)
def encoder_forward(out, inp, wte, wpe):
    """out (B, T, C) = wte[inp] + wpe[:T]; inp (B, T) int token ids; wte (V, C); wpe (maxT, C)."""
    embed(out, inp, wte, wpe, True)


@njit(**KERNEL)
def encoder_backward(dwte, dwpe, dout, inp):
    """dwte (V, C) and dwpe (maxT, C) accumulate; dout (B, T, C); inp (B, T)."""
    embed_backward(dwte, dwpe, dout, inp, True)


@njit(**KERNEL)
def token_encoder_forward(out, inp, wte):
    """out (B, T, C) = wte[inp]; inp (B, T) int token ids; wte (V, C)."""
    embed(out, inp, wte, wte, False)  # no position table: the fourth argument is not read


@njit(**KERNEL)
def token_encoder_backward(dwte, dout, inp):
    """dwte (V, C) accumulates; dout (B, T, C); inp (B, T)."""
    embed_backward(dwte, dwte, dout, inp, False)  # no position table: the second is not written


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
