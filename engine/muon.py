"""Muon (Jordan et al. 2024): momentum orthogonalised by a Newton-Schulz iteration, for the
transformer blocks' 2-D weight matrices. Everything else keeps AdamW (engine/adamw.py).

Reference: K. Jordan et al., "Muon: An optimizer for hidden layers in neural networks" (2024),
https://kellerjordan.github.io/posts/muon/, and its code (github.com/KellerJordan/Muon, muon.py,
`zeropower_via_newtonschulz5` and `muon_update`), which this follows step by step:
  momentum = beta * momentum + (1 - beta) * g          (the reference's momentum.lerp_(g, 1 - beta))
  u        = (1 - beta) * g + beta * momentum          (Nesterov: g.lerp_(momentum, beta))
  O        = NewtonSchulz5(u)                          (close to the polar factor U V^T of u)
  p        = p - lr * weight_decay * p - lr * sqrt(max(1, rows / cols)) * O
Shape-dependent scale: the reference's max(1, rows/cols)**0.5 with rows the output dimension
(our weights are (OC, C), as torch.nn.Linear's): the MLP's fc (4C, C) steps 2x, square and
wide matrices 1x. The rate is in spectral-norm units, so muon_lr (0.02) is not AdamW's rate.

Newton-Schulz: the quintic X <- a X + (b A + c A^2) X with A = X X^T and (a, b, c) = (3.4445,
-4.7750, 2.0315), on X = u / ||u||_F (spectral norm <= 1), transposed so that X is m x n with
m <= n (A is then the smaller Gram matrix). It keeps the singular vectors and maps each singular
value x = sigma / ||u||_F through p(x) = a x + b x^3 + c x^5 once a step. The coefficients push
small values up fast (slope 3.4 at 0) rather than converge to exactly 1: after 5 steps every
singular value with x >= 0.0016 lies in [0.68, 1.21] (the band p oscillates in; tests check it),
which the reference found does not hurt training. Smaller ones stay below it: 3 steps lift only
x >= 0.018 into the band, 4 steps x >= 0.0052. It runs in float32 through numba's np.dot (SciPy's
sgemm), the matmul kernels' BLAS path; the caller holds BLAS to one thread.

In the Gram domain for a wide matrix (`newton_schulz_gram`). Each step multiplies X by
Q = a I + b A + c A^2, a polynomial in A = X X^T, so the next A is Q A Q (Q commutes with A) and
the result is P X0 with P the product of the steps' Q: the iteration can run on m x m matrices
only, from A0 = X0 X0^T, with one m x n product at each end. That costs 4 m^2 n + (8 steps - 6)
m^3 flops against steps (4 m^2 n + 2 m^3): for the MLP's (C, 4C) matrices at 5 steps, 50 C^3
against 90 C^3, 44 % less; for a square one it costs more, so `gram_cheaper` chooses per shape
(and only up to GRAM_MAX_STEPS steps: P's rounding grows with the steps).
It is the same polynomial of X0 in exact arithmetic; in float32 the m x m products carry the
rounding of A into P, so the result differs from the direct iteration by about 1e-4 of its
largest entry where the direct one differs from float64 by about 5e-6 (measured on the momentum
of a trained model's MLP matrices; their singular values agree to 5e-5; on matrices of a handful
of rows whose singular values fall to 1e-4, up to 1.4e-3: fewer terms in each sum of A = X X^T
average less rounding out). Newton-Schulz is an
approximation by design (the band above), so that error is far inside what it already allows.
A is made symmetric again after each update, so its rounding stays symmetric.

Which matrices: the query, key and value blocks of qkvw are orthogonalised as three (C, C)
matrices (they are three linear maps; the speedrun's batched Muon treats its (4, C, C) qkvo
weight the same way), attprojw (C, C), fcw (H, C) and fcprojw (C, H), per layer. The momentum
lives in the matrices' slots of AdamW's first-moment buffer `m` (both are exponential averages of
the gradient), so checkpoints, cool-down copies and resume carry it unchanged; their slots of
`v` stay unused. Knows nothing of threads: parallel.update_plan hands each worker whole matrices.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .kernels import KERNEL
from .layout import Table

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NORM_EPS = 1e-7
# P, the product of the steps' Q, grows as a^steps (3.4445^steps) along the directions of small
# singular values, and its float32 rounding with it: about 1e-4 of the result at 5 steps, 1e-1
# at 8. Beyond this many steps the direct iteration runs whatever the shape.
GRAM_MAX_STEPS = 5
# (tensor, number of row blocks it is cut into): tensors of shape (L, rows, cols) in the table
MUON_TENSORS = (("qkvw", 3), ("attprojw", 1), ("fcw", 1), ("fcprojw", 1))


def muon_matrices(table: Table) -> np.ndarray:
    """The matrices Muon updates, as an int64 array of (offset, rows, cols) rows into the flat
    parameter buffer, in table order. A tensor the table lacks is skipped."""
    found = []
    for name, blocks in MUON_TENSORS:
        if name not in table.offsets:
            continue
        L, rows, cols = table.shapes[name]
        rows //= blocks
        offset = table.offsets[name].offset
        for _ in range(L * blocks):
            found.append((offset, rows, cols))
            offset += rows * cols
    return np.array(found, dtype=np.int64).reshape(-1, 3)


def direct_flops(m: int, n: int, steps: int) -> int:
    """Flops of `steps` direct Newton-Schulz steps on an m x n matrix, m <= n."""
    return steps * (4 * m * m * n + 2 * m**3)  # A = X X^T, A A, B X


def gram_flops(m: int, n: int, steps: int) -> int:
    """Flops of newton_schulz_gram on an m x n matrix, m <= n: X X^T and P X, then per step
    A A, and but for the last step Q (Q A) and Q P (the first step's P is its Q)."""
    return 4 * m * m * n + 2 * m**3 * steps + 6 * m**3 * max(steps - 1, 0)


@njit(**KERNEL)
def gram_cheaper(m: int, n: int, steps: int) -> bool:
    """Whether muon_update takes the Gram domain for an m x n matrix (m <= n): at most
    GRAM_MAX_STEPS steps, and fewer flops than the direct iteration."""
    return steps <= GRAM_MAX_STEPS and (
        4 * m * m * n + 2 * m**3 * steps + 6 * m**3 * max(steps - 1, 0) < steps * (4 * m * m * n + 2 * m**3))


def orthogonalisation_flops(rows: int, cols: int, steps: int) -> int:
    """Floating-point operations of orthogonalising a rows x cols matrix as muon_update does:
    `steps` Newton-Schulz steps, in the Gram domain where gram_cheaper says so, else directly."""
    m, n = min(rows, cols), max(rows, cols)
    return gram_flops(m, n, steps) if gram_cheaper(m, n, steps) else direct_flops(m, n, steps)


def scratch_size(matrices: np.ndarray) -> int:
    """float32 elements of one worker's working memory for muon_update: X, Y (m, n) and A, B, Q, P
    (m, m) (the direct iteration uses A and B only)."""
    sizes = [2 * r * c + 4 * min(r, c) ** 2 for _, r, c in matrices]
    return max(sizes, default=0)


# ---------------------------------------------------------------------------------------------
# kernels


@njit(**KERNEL)
def newton_schulz(X, A, B, Y, steps):
    """X (m, n), m <= n and ||X||_F <= 1, is overwritten with NewtonSchulz5(X); A, B (m, m) and
    Y (m, n) are scratch."""
    a = np.float32(NS_COEFFICIENTS[0])
    b = np.float32(NS_COEFFICIENTS[1])
    c = np.float32(NS_COEFFICIENTS[2])
    m, n = X.shape
    for _ in range(steps):
        # pass 1: A = X X^T, then B = b A + c A A
        np.dot(X, X.T, A)
        np.dot(A, A, B)
        for i in range(m):
            for j in range(m):
                B[i, j] = b * A[i, j] + c * B[i, j]
        # pass 2: X = a X + B X
        np.dot(B, X, Y)
        for i in range(m):
            for j in range(n):
                X[i, j] = a * X[i, j] + Y[i, j]


@njit(**KERNEL)
def newton_schulz_gram(X, A, B, Q, P, Y, steps):
    """As newton_schulz, in the Gram domain (the module's docstring): X (m, n), m <= n and
    ||X||_F <= 1, is overwritten with P X0, P the product of the steps' Q = a I + b A + c A^2;
    A, B, Q, P (m, m) and Y (m, n) are scratch."""
    a = np.float32(NS_COEFFICIENTS[0])
    b = np.float32(NS_COEFFICIENTS[1])
    c = np.float32(NS_COEFFICIENTS[2])
    half = np.float32(0.5)
    m = X.shape[0]
    np.dot(X, X.T, A)  # A0 = X0 X0^T
    for k in range(steps):
        np.dot(A, A, B)
        for i in range(m):
            for j in range(m):
                Q[i, j] = b * A[i, j] + c * B[i, j]
            Q[i, i] += a
        if k == 0:
            P[:, :] = Q
        else:
            np.dot(Q, P, B)
            P[:, :] = B
        if k + 1 < steps:  # the next A = Q A Q, made symmetric again
            np.dot(Q, A, B)
            np.dot(Q, B, A)
            for i in range(m):
                for j in range(i + 1, m):
                    s = half * (A[i, j] + A[j, i])
                    A[i, j] = s
                    A[j, i] = s
    np.dot(P, X, Y)
    X[:, :] = Y


@njit(**KERNEL)
def muon_update(params, grads, momentum, matrices, scratch, lr, beta, weight_decay, grad_scale, steps):
    """Update each matrix of `matrices` (k, 3) int64 rows (offset, rows, cols) in place in the flat
    params, from grads (scaled by grad_scale) and momentum; zero the matrices' gradient.
    scratch is flat float32 of at least scratch_size(matrices) elements."""
    bt = np.float32(beta)
    one_minus = np.float32(1.0) - bt
    s = np.float32(grad_scale)
    shrink = np.float32(1.0 - lr * weight_decay)
    for k in range(matrices.shape[0]):
        offset, R, C = matrices[k, 0], matrices[k, 1], matrices[k, 2]
        transpose = R > C  # X is u^T, so that X is m x n with m <= n
        m, n = min(R, C), max(R, C)
        X = scratch[: m * n].reshape((m, n))
        Y = scratch[m * n : 2 * m * n].reshape((m, n))
        A = scratch[2 * m * n : 2 * m * n + m * m].reshape((m, m))
        B = scratch[2 * m * n + m * m : 2 * m * n + 2 * m * m].reshape((m, m))
        Q = scratch[2 * m * n + 2 * m * m : 2 * m * n + 3 * m * m].reshape((m, m))
        P = scratch[2 * m * n + 3 * m * m : 2 * m * n + 4 * m * m].reshape((m, m))
        # pass 1: momentum, the Nesterov look-ahead u into X, and ||u||_F
        norm2 = 0.0
        for i in range(R):
            for j in range(C):
                idx = offset + i * C + j
                g = grads[idx] * s
                mom = bt * momentum[idx] + one_minus * g
                momentum[idx] = mom
                u = one_minus * g + bt * mom
                if transpose:
                    X[j, i] = u
                else:
                    X[i, j] = u
                norm2 += np.float64(u) * np.float64(u)
                grads[idx] = np.float32(0.0)
        # pass 2: scale to Frobenius norm 1, so the spectral norm is at most 1
        inv = np.float32(1.0 / (math.sqrt(norm2) + NORM_EPS))
        for i in range(m):
            for j in range(n):
                X[i, j] *= inv
        # pass 3: orthogonalise, in the Gram domain where that costs less (wide matrices)
        if gram_cheaper(m, n, steps):
            newton_schulz_gram(X, A, B, Q, P, Y, steps)
        else:
            newton_schulz(X, A, B, Y, steps)
        # pass 4: decoupled decay, then the step of size lr * sqrt(max(1, rows/cols))
        step = np.float32(lr * math.sqrt(max(1.0, R / C)))
        for i in range(R):
            for j in range(C):
                idx = offset + i * C + j
                o = X[j, i] if transpose else X[i, j]
                params[idx] = params[idx] * shrink - step * o


# ---------------------------------------------------------------------------------------------
# numpy references (float64)


def newton_schulz_reference(G: np.ndarray, steps: int) -> np.ndarray:
    """NewtonSchulz5 of G (any shape (rows, cols)), as the reference's zeropower_via_newtonschulz5."""
    a, b, c = NS_COEFFICIENTS
    X = G.T if G.shape[0] > G.shape[1] else G
    X = X / (np.linalg.norm(X) + NORM_EPS)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if G.shape[0] > G.shape[1] else X


def muon_update_reference(param, grad, momentum, lr, beta, weight_decay, steps):
    """One Muon step on one matrix; returns new (param, momentum)."""
    momentum = beta * momentum + (1 - beta) * grad
    u = (1 - beta) * grad + beta * momentum
    rows, cols = param.shape
    update = newton_schulz_reference(u, steps) * max(1.0, rows / cols) ** 0.5
    return param * (1 - lr * weight_decay) - lr * update, momentum
