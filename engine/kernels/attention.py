"""Causal multi-head self-attention over a fused QKV buffer (Vaswani et al. 2017; GPT-2), with
only the blocks on or below the diagonal computed.

qkv (B, T, 3C) holds q, k, v as consecutive C-wide slices, and each head's hs = C/NH slice is
contiguous inside them. Per (batch, head) the kernel gathers Q, K, V into contiguous (T, hs)
blocks, then walks the queries in blocks of `tile` rows. Query block [i0, i1) sees keys
[0, i1) only, so its scores are one BLAS product Q[i0:i1] K[:i1]^T of shape (tile, i1): the
key tiles left of and on the diagonal taken together in one call, none of those above it. Over
all blocks that is T^2/2 + T*tile/2 of the T^2 scores, about half the flops of the full
product. A block's row of scores fits in cache, so its softmax is exact in one pass over it
(no running rescale as in FlashAttention's online softmax, Dao et al. 2022, which splits the
keys into tiles only because a row does not fit on chip).

The forward keeps only each row's log-normaliser lse = max + log(sum exp) in `lse`
(B, NH, T); the backward recomputes a block's probabilities as exp(scale * s - lse) with one
more product. Caching the probabilities of the computed blocks instead (T^2/2 + T*tile/2 floats
per head and layer, against T) measured no faster at S and M and slower at L
(bench/attention.py, docs/BENCHMARKS.md), so the activations lose their (L, B, NH, T, T) cache.
The full (T, T) product that this replaces wasted the masked half of its flops.

Relies on numba's np.dot (BLAS) for the products; the softmax and the gathers are plain loops.
Each call allocates its scratch: 8 (T, hs) blocks and two (tile, T) strips of scores.
"""

import math

import numpy as np
from numba import njit

from . import KERNEL
from .fastmath import fast_exp
from .heads import qkv_sizes


@njit(**KERNEL)
def default_tile(hs: int) -> int:
    """Query rows per block for head size hs: 32, or 64 from hs = 64 on. Measured by
    bench/attention.py at the bench sizes (hs 32 and 64): the tile equal to hs was the fastest,
    and tile 32 at hs 64 or 64 at hs 32 ran slower than the full product (docs/BENCHMARKS.md)."""
    return 64 if hs >= 64 else 32


@njit(inline="always", **KERNEL)
def gather_head(dst, src, b, offset, hs):
    """dst (T, hs) = src[b, :, offset:offset + hs]: one head's slice as a contiguous block."""
    for t in range(dst.shape[0]):
        for i in range(hs):
            dst[t, i] = src[b, t, offset + i]


@njit(inline="always", **KERNEL)
def scatter_head(dst, src, b, offset, hs):
    """dst[b, :, offset:offset + hs] = src (T, hs): the inverse of gather_head."""
    for t in range(src.shape[0]):
        for i in range(hs):
            dst[b, t, offset + i] = src[t, i]


@njit(inline="always", **KERNEL)
def add_rows(dst, src, n, hs):
    """dst[:n] += src[:n], both (T, hs)."""
    for t in range(n):
        for i in range(hs):
            dst[t, i] += src[t, i]


@njit(inline="always", **KERNEL)
def gather_qkv(Q, K, Vv, qkv, b, h, C, hs):
    """Q, K, Vv (T, hs) = head h's q, k and v in row b of qkv (B, T, 3C)."""
    gather_head(Q, qkv, b, h * hs, hs)
    gather_head(K, qkv, b, C + h * hs, hs)
    gather_head(Vv, qkv, b, 2 * C + h * hs, hs)


@njit(inline="always", **KERNEL)
def scatter_qkv(dqkv, dQ, dK, dV, b, h, C, hs):
    """Head h's q, k and v in row b of dqkv (B, T, 3C) = dQ, dK, dV (T, hs): gather_qkv's inverse."""
    scatter_head(dqkv, dQ, b, h * hs, hs)
    scatter_head(dqkv, dK, b, C + h * hs, hs)
    scatter_head(dqkv, dV, b, 2 * C + h * hs, hs)


@njit(inline="always", **KERNEL)
def attention_sizes(qkv, NH, tile):
    """(B, T, C, hs, tile, scale) of qkv (B, T, 3C) with NH heads: tile 0 becomes
    default_tile(hs), and the scores are scaled by 1/sqrt(hs)."""
    B, T, C, hs = qkv_sizes(qkv, NH)
    return B, T, C, hs, (tile if tile > 0 else default_tile(hs)), np.float32(1.0 / math.sqrt(hs))


@njit(**KERNEL)
def attention_forward(out, lse, qkv, NH, tile=0):
    """out (B, T, C) and lse (B, NH, T) are written; qkv (B, T, 3C); tile query rows per block
    (0: default_tile(hs))."""
    B, T, C, hs, tile, scale = attention_sizes(qkv, NH, tile)
    Q = np.empty((T, hs), dtype=np.float32)
    K = np.empty((T, hs), dtype=np.float32)
    Vv = np.empty((T, hs), dtype=np.float32)
    Y = np.empty((T, hs), dtype=np.float32)
    strip = np.empty(min(tile, T) * T, dtype=np.float32)  # one block's (rows, i1) scores
    for b in range(B):
        for h in range(NH):
            # pass 1: gather this head's q, k, v into contiguous blocks
            gather_qkv(Q, K, Vv, qkv, b, h, C, hs)
            for i0 in range(0, T, tile):
                i1 = min(i0 + tile, T)
                S = strip[: (i1 - i0) * i1].reshape((i1 - i0, i1))
                # pass 2: this block's scores against every key it may see, S = Q[i0:i1] K[:i1]^T
                np.dot(Q[i0:i1], K[:i1].T, S)
                # pass 3: scaled, causal softmax per row; zeros right of the diagonal
                for t in range(i1 - i0):
                    n = i0 + t + 1  # query i0 + t sees keys 0..i0 + t
                    row = S[t]
                    maxval = np.float32(-np.inf)
                    for t2 in range(n):
                        v = row[t2] * scale
                        row[t2] = v
                        maxval = v if v > maxval else maxval  # a select, so the loop vectorises
                    total = np.float32(0.0)
                    for t2 in range(n):
                        e = fast_exp(row[t2] - maxval)
                        row[t2] = e
                        total += e
                    inv = np.float32(1.0) / total
                    for t2 in range(n):
                        row[t2] *= inv
                    for t2 in range(n, i1):
                        row[t2] = np.float32(0.0)
                    lse[b, h, i0 + t] = maxval + np.float32(math.log(total))
                # pass 4: Y[i0:i1] = P V[:i1]
                np.dot(S, Vv[:i1], Y[i0:i1])
            scatter_head(out, Y, b, h * hs, hs)


@njit(**KERNEL)
def attention_backward(dqkv, dout, qkv, lse, NH, tile=0):
    """dqkv (B, T, 3C) is overwritten (one producer); dout (B, T, C); qkv, lse and tile as
    forward (the same tile is not needed: lse does not depend on it)."""
    B, T, C, hs, tile, scale = attention_sizes(qkv, NH, tile)
    Q = np.empty((T, hs), dtype=np.float32)
    K = np.empty((T, hs), dtype=np.float32)
    Vv = np.empty((T, hs), dtype=np.float32)
    dY = np.empty((T, hs), dtype=np.float32)
    dQ = np.empty((T, hs), dtype=np.float32)
    dK = np.empty((T, hs), dtype=np.float32)
    dV = np.empty((T, hs), dtype=np.float32)
    part = np.empty((T, hs), dtype=np.float32)  # one block's share of dK or dV
    rows = min(tile, T)
    pstrip = np.empty(rows * T, dtype=np.float32)
    dstrip = np.empty(rows * T, dtype=np.float32)
    for b in range(B):
        for h in range(NH):
            gather_qkv(Q, K, Vv, qkv, b, h, C, hs)
            gather_head(dY, dout, b, h * hs, hs)
            dK[:] = 0.0
            dV[:] = 0.0
            for i0 in range(0, T, tile):
                i1 = min(i0 + tile, T)
                P = pstrip[: (i1 - i0) * i1].reshape((i1 - i0, i1))
                dP = dstrip[: (i1 - i0) * i1].reshape((i1 - i0, i1))
                # pass 1: the forward's probabilities again, P = exp(scale * Q K^T - lse)
                np.dot(Q[i0:i1], K[:i1].T, P)
                for t in range(i1 - i0):
                    n = i0 + t + 1
                    row = P[t]
                    m = lse[b, h, i0 + t]
                    for t2 in range(n):
                        row[t2] = fast_exp(row[t2] * scale - m)
                    for t2 in range(n, i1):
                        row[t2] = np.float32(0.0)
                # forward: Y[i0:i1] = P V[:i1]  ->  dV[:i1] += P^T dY[i0:i1], dP = dY[i0:i1] V[:i1]^T
                np.dot(P.T, dY[i0:i1], part[:i1])
                add_rows(dV, part, i1, hs)
                np.dot(dY[i0:i1], Vv[:i1].T, dP)
                # forward: P = softmax(S * scale) row-wise  ->  dS = scale * P * (dP - sum(P * dP))
                for t in range(i1 - i0):
                    n = i0 + t + 1
                    p = P[t]
                    d = dP[t]
                    dot = np.float32(0.0)
                    for t2 in range(n):
                        dot += p[t2] * d[t2]
                    for t2 in range(n):
                        d[t2] = scale * p[t2] * (d[t2] - dot)
                    for t2 in range(n, i1):
                        d[t2] = np.float32(0.0)
                # forward: S = Q[i0:i1] K[:i1]^T  ->  dQ[i0:i1] = dS K[:i1], dK[:i1] += dS^T Q[i0:i1]
                np.dot(dP, K[:i1], dQ[i0:i1])
                np.dot(dP.T, Q[i0:i1], part[:i1])
                add_rows(dK, part, i1, hs)
            scatter_qkv(dqkv, dQ, dK, dV, b, h, C, hs)


# ---------------------------------------------------------------------------------------------
# numpy references


def attention_forward_reference(qkv, NH):
    """(out (B, T, C), att (B, NH, T, T) probabilities) of causal attention over qkv (B, T, 3C)."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // NH
    q, k, v = (qkv[..., i * C : (i + 1) * C].reshape(B, T, NH, hs).transpose(0, 2, 1, 3) for i in range(3))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs)  # (B, NH, T, T)
    scores = np.where(np.tril(np.ones((T, T), dtype=bool)), scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    att = np.exp(scores)
    att /= att.sum(axis=-1, keepdims=True)
    y = att @ v  # (B, NH, T, hs)
    return y.transpose(0, 2, 1, 3).reshape(B, T, C), att


def attention_lse_reference(qkv, NH):
    """(B, NH, T) log of each row's softmax normaliser, log sum_{t2 <= t} exp(q_t . k_t2 / sqrt(hs))."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // NH
    q, k = (qkv[..., i * C : (i + 1) * C].reshape(B, T, NH, hs).transpose(0, 2, 1, 3) for i in range(2))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs)
    scores = np.where(np.tril(np.ones((T, T), dtype=bool)), scores, -np.inf)
    top = scores.max(axis=-1)
    return top + np.log(np.exp(scores - top[..., None]).sum(axis=-1))


def attention_backward_reference(dout, qkv, NH):
    """dqkv (B, T, 3C): the gradient of sum(out * dout) with respect to qkv."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // NH
    q, k, v = (qkv[..., i * C : (i + 1) * C].reshape(B, T, NH, hs).transpose(0, 2, 1, 3) for i in range(3))
    _, att = attention_forward_reference(qkv, NH)
    dy = dout.reshape(B, T, NH, hs).transpose(0, 2, 1, 3)
    dv = att.transpose(0, 1, 3, 2) @ dy
    datt = dy @ v.transpose(0, 1, 3, 2)
    dscores = att * (datt - (att * datt).sum(-1, keepdims=True)) / math.sqrt(hs)
    dq = dscores @ k
    dk = dscores.transpose(0, 1, 3, 2) @ q
    parts = [x.transpose(0, 2, 1, 3).reshape(B, T, C) for x in (dq, dk, dv)]
    return np.concatenate(parts, axis=-1)
