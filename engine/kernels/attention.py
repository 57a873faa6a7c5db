"""Causal multi-head self-attention over a fused QKV buffer (Vaswani et al. 2017; GPT-2).

qkv (B, T, 3C) holds q, k, v as consecutive C-wide slices, and each head's hs = C/NH slice is
contiguous inside them. Per (batch, head) the kernel gathers Q, K, V into contiguous (T, hs)
blocks and runs the products through BLAS (np.dot); the softmax, the causal mask and the gathers
are plain loops. The full (T, T) product wastes the masked half of the flops but runs at BLAS
speed, which measured faster than a triangular loop. The softmax probabilities are cached in
`att` (B, NH, T, T) with zeros above the diagonal, so the backward never recomputes them.
"""

import math

import numpy as np
from numba import njit

from . import KERNEL
from .fastmath import fast_exp


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


@njit(**KERNEL)
def attention_forward(out, att, qkv, NH):
    """out (B, T, C) and att (B, NH, T, T) are written; qkv (B, T, 3C)."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // NH
    scale = np.float32(1.0 / math.sqrt(hs))
    Q = np.empty((T, hs), dtype=np.float32)
    K = np.empty((T, hs), dtype=np.float32)
    Vv = np.empty((T, hs), dtype=np.float32)
    Y = np.empty((T, hs), dtype=np.float32)
    for b in range(B):
        for h in range(NH):
            # pass 1: gather this head's q, k, v into contiguous blocks
            gather_head(Q, qkv, b, h * hs, hs)
            gather_head(K, qkv, b, C + h * hs, hs)
            gather_head(Vv, qkv, b, 2 * C + h * hs, hs)
            # pass 2: scores = Q K^T
            A = att[b, h]
            np.dot(Q, K.T, A)
            # pass 3: scaled, causal softmax per row; zeros above the diagonal
            for t in range(T):
                row = A[t]
                maxval = np.float32(-np.inf)
                for t2 in range(t + 1):
                    v = row[t2] * scale
                    row[t2] = v
                    maxval = v if v > maxval else maxval  # a select, so the loop vectorises
                total = np.float32(0.0)
                for t2 in range(t + 1):
                    e = fast_exp(row[t2] - maxval)
                    row[t2] = e
                    total += e
                inv = np.float32(1.0) / total
                for t2 in range(t + 1):
                    row[t2] *= inv
                for t2 in range(t + 1, T):
                    row[t2] = np.float32(0.0)
            # pass 4: Y = P V, scattered back to this head's slice
            np.dot(A, Vv, Y)
            scatter_head(out, Y, b, h * hs, hs)


@njit(**KERNEL)
def attention_backward(dqkv, dout, qkv, att, NH):
    """dqkv (B, T, 3C) is overwritten (one producer); dout (B, T, C); qkv and att as forward."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // NH
    scale = np.float32(1.0 / math.sqrt(hs))
    Q = np.empty((T, hs), dtype=np.float32)
    K = np.empty((T, hs), dtype=np.float32)
    Vv = np.empty((T, hs), dtype=np.float32)
    dY = np.empty((T, hs), dtype=np.float32)
    dP = np.empty((T, T), dtype=np.float32)
    dX = np.empty((T, hs), dtype=np.float32)
    for b in range(B):
        for h in range(NH):
            gather_head(Q, qkv, b, h * hs, hs)
            gather_head(K, qkv, b, C + h * hs, hs)
            gather_head(Vv, qkv, b, 2 * C + h * hs, hs)
            gather_head(dY, dout, b, h * hs, hs)
            P = att[b, h]
            # forward: Y = P V  ->  dV = P^T dY, dP = dY V^T
            np.dot(P.T, dY, dX)
            scatter_head(dqkv, dX, b, 2 * C + h * hs, hs)
            np.dot(dY, Vv.T, dP)
            # forward: P = softmax(S * scale) row-wise  ->  dS = scale * P * (dP - sum(P * dP))
            for t in range(T):
                p = P[t]
                d = dP[t]
                dot = np.float32(0.0)
                for t2 in range(t + 1):
                    dot += p[t2] * d[t2]
                for t2 in range(t + 1):
                    d[t2] = scale * p[t2] * (d[t2] - dot)
                for t2 in range(t + 1, T):
                    d[t2] = np.float32(0.0)
            # forward: S = Q K^T  ->  dQ = dS K, dK = dS^T Q
            np.dot(dP, K, dX)
            scatter_head(dqkv, dX, b, h * hs, hs)
            np.dot(dP.T, Q, dX)
            scatter_head(dqkv, dX, b, C + h * hs, hs)


# ---------------------------------------------------------------------------------------------
# numpy references


def attention_forward_reference(qkv, NH):
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


def attention_backward_reference(dout, qkv, NH):
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
