"""The fused (B, T, 3C) q, k, v buffer of attention.py, as the kernels that work on it see it.

q, k and v are consecutive C-wide slices of each position's 3C channels, and each of the NH
heads is a contiguous hs = C/NH slice inside them, so the heads of q and then of k are the
2*NH contiguous hs-wide slices of the first 2C channels. rope.py and qknorm.py change those and
copy v through; attention.py gathers each head into a contiguous (T, hs) block. The helper is
`inline="always"`: each kernel compiles as if it had written it out.
"""

from numba import njit

from . import KERNEL


@njit(inline="always", **KERNEL)
def qkv_sizes(qkv, NH):
    """(B, T, C, hs) of a fused buffer qkv (B, T, 3C) of NH heads."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    return B, T, C, C // NH
