"""Residual connection out = inp1 + inp2.

In the model's backward the residual stream's gradient buffer serves both branches in place
(the gradient of a sum is the same array for each addend), so `model.backward` needs no copy;
`residual_backward` states that rule as a kernel and is what the tests check it against.
"""

from numba import njit

from . import KERNEL


@njit(**KERNEL)
def residual_forward(out, inp1, inp2):
    """out, inp1, inp2 (N, C); out is written."""
    N, C = out.shape
    for i in range(N):
        for c in range(C):
            out[i, c] = inp1[i, c] + inp2[i, c]


@njit(**KERNEL)
def residual_backward(dinp1, dinp2, dout):
    """dinp1, dinp2 (N, C) accumulate dout."""
    N, C = dout.shape
    for i in range(N):
        for c in range(C):
            # forward: out = inp1 + inp2
            dinp1[i, c] += dout[i, c]
            dinp2[i, c] += dout[i, c]


def residual_forward_reference(inp1, inp2):
    return inp1 + inp2
