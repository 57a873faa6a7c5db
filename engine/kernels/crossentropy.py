"""Fused softmax + cross-entropy, with the crystalline term.

The crystalline similarity between an input token id a and a target id b (both shifted by one so
that id 0 is the number 1) is

    s(a, b) = 0.7 * gcd(a+1, b+1) / max(a+1, b+1) + 0.3 / (1 + d(a+1, b+1))

with d the Euclidean distance between the two numbers' positions on the Ulam spiral. Its cost is
c(a, b) = -log(max(s, 1e-10)). It depends only on token ids, so as a loss it cannot train
anything; the engine reports it as the metric `crystalline_loss` (mean c(x_t, y_t)) and, with
weight w > 0, adds the differentiable term E_{y ~ p(.|x<=t)}[c(x_t, y)] to the cross-entropy:

    loss_t = -log p(y_t) + w * sum_j p_j c(x_t, j)
    dloss_t / dz_j = p_j - [j = y_t] + w * p_j * (c(x_t, j) - sum_k p_k c(x_t, k))

The logits arrive in `probs` and leave as probabilities; the backward turns them into dlogits in
place, so the (N, V) buffer is allocated once.
"""

import math

import numpy as np
from numba import njit

from ..config import MAX_CRYSTALLINE_VOCAB
from . import KERNEL
from .fastmath import fast_exp



@njit(cache=True, nogil=True)
def ulam_position(n):
    """(x, y) of the integer n >= 1 on the Ulam spiral: 1 at the origin, 2 at (1, 0), then
    counter-clockwise rings; ring k ends with (2k+1)^2 at (k, -k)."""
    if n <= 1:
        return 0, 0
    r = int(math.sqrt(n))
    while r * r > n:
        r -= 1
    if r * r < n:
        r += 1  # r = ceil(sqrt(n))
    k = r // 2
    side = 2 * k
    m = (2 * k + 1) * (2 * k + 1)
    if n >= m - side:
        return k - (m - n), -k
    m -= side
    if n >= m - side:
        return -k, -k + (m - n)
    m -= side
    if n >= m - side:
        return -k + (m - n), k
    return k, k - (m - n - side)


@njit(cache=True, nogil=True)
def _gcd(a, b):
    while b:
        a, b = b, a % b
    return a


@njit(cache=True, nogil=True)
def crystalline_cost(a, b):
    """-log(max(s(a, b), 1e-10)) for token ids a, b >= 0."""
    x = a + 1
    y = b + 1
    xa, ya = ulam_position(x)
    xb, yb = ulam_position(y)
    dist = math.sqrt((xa - xb) ** 2 + (ya - yb) ** 2)
    s = 0.7 * _gcd(x, y) / max(x, y) + 0.3 / (1.0 + dist)
    return -math.log(max(s, 1e-10))


@njit(cache=True)
def _cost_table(V):
    table = np.empty((V, V), dtype=np.float32)
    for a in range(V):
        for b in range(V):
            table[a, b] = crystalline_cost(a, b)
    return table


def crystalline_cost_table(V: int) -> np.ndarray:
    """The (V, V) float32 table c(a, b); refused above MAX_CRYSTALLINE_VOCAB."""
    if V > MAX_CRYSTALLINE_VOCAB:
        raise ValueError(f"crystalline cost table needs vocab_size <= {MAX_CRYSTALLINE_VOCAB}, got {V}")
    return _cost_table(V)


@njit(**KERNEL)
def crossentropy_forward(losses, expected, crystal, probs, inp, targets, cost, weight):
    """losses (N,) cross-entropy, expected (N,) E_p[c(x_t, .)] (0 when weight == 0) and crystal
    (N,) the metric c(x_t, y_t) are written; probs (N, V) holds logits on entry and probabilities
    on exit; inp, targets (N,) token ids; cost (V, V) table (unused when weight == 0).
    The training objective per position is losses + weight * expected."""
    N, V = probs.shape
    for i in range(N):
        row = probs[i]
        # pass 1: running max for a stable softmax
        maxval = np.float32(-np.inf)
        for j in range(V):
            maxval = row[j] if row[j] > maxval else maxval  # a select, so the loop vectorises
        # pass 2: exponentials and their sum
        total = np.float32(0.0)
        for j in range(V):
            e = fast_exp(row[j] - maxval)
            row[j] = e
            total += e
        y = targets[i]
        logit_y = np.log(row[y]) + maxval
        # loss = logsumexp(z) - z_y
        loss = np.log(total) + maxval - logit_y
        inv = np.float32(1.0) / total
        for j in range(V):
            row[j] *= inv
        # pass 3: the expected crystalline cost under p
        e_cost = np.float32(0.0)
        if weight > 0.0:
            c = cost[inp[i]]
            for j in range(V):
                e_cost += row[j] * c[j]
        expected[i] = e_cost
        losses[i] = loss
        crystal[i] = crystalline_cost(inp[i], y)


@njit(**KERNEL)
def crossentropy_backward(probs, dloss, inp, targets, cost, weight):
    """probs (N, V) holds probabilities on entry and dlogits on exit (overwritten); dloss is the
    scalar d(total loss)/d(loss_i), the same for every position (1 / tokens in the step)."""
    N, V = probs.shape
    g = np.float32(dloss)
    w = np.float32(weight)
    for i in range(N):
        row = probs[i]
        y = targets[i]
        if weight > 0.0:
            # forward: loss += w * sum_j p_j c_j  ->  dz_j += w * p_j * (c_j - cbar)
            c = cost[inp[i]]
            cbar = np.float32(0.0)
            for j in range(V):
                cbar += row[j] * c[j]
            for j in range(V):
                row[j] = g * (row[j] + w * row[j] * (c[j] - cbar))
        else:
            for j in range(V):
                row[j] = g * row[j]
        # forward: loss = -log p_y  ->  dz_j = p_j - [j = y]
        row[y] -= g


# ---------------------------------------------------------------------------------------------
# numpy references


def crossentropy_forward_reference(logits, inp, targets, cost, weight):
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    p = np.exp(logp)
    n = np.arange(len(targets))
    loss = -logp[n, targets]
    expected = (p * cost[inp]).sum(axis=-1) if weight > 0 else np.zeros_like(loss)
    return loss, expected, p


def crossentropy_backward_reference(logits, inp, targets, cost, weight, dloss):
    _, _, p = crossentropy_forward_reference(logits, inp, targets, cost, weight)
    d = p.copy()
    d[np.arange(len(targets)), targets] -= 1.0
    if weight > 0:
        c = cost[inp]
        d += weight * p * (c - (p * c).sum(-1, keepdims=True))
    return d * dloss


def crystalline_cost_reference(a: int, b: int) -> float:
    """The seed's definition, written out plainly, walking the spiral step by step."""
    def position(n):
        x = y = 0
        step, direction, k = 1, 0, 1
        moves = [(1, 0), (0, 1), (-1, 0), (0, -1)]
        while k < n:
            for _ in range(2):
                for _ in range(step):
                    if k == n:
                        return x, y
                    dx, dy = moves[direction]
                    x, y, k = x + dx, y + dy, k + 1
                direction = (direction + 1) % 4
            step += 1
        return x, y

    x, y = a + 1, b + 1
    (xa, ya), (xb, yb) = position(x), position(y)
    s = 0.7 * math.gcd(x, y) / max(x, y) + 0.3 / (1 + math.hypot(xa - xb, ya - yb))
    return -math.log(max(s, 1e-10))
