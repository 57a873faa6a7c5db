"""Causal attention, the blocked kernel against the full-product kernel it replaced, side by side.

Three measurements, each interleaving the variants round by round in one process so that a busy
machine slows them alike, and each reported as a ratio:

- `kernels`: one layer's attention forward + backward (median of --rounds) at the model sizes of
  `crystalline bench` (S, which is also the daemon's default size, M and L; the whole batch on
  one thread, BLAS held to one thread as in a worker), for the full-product kernel (`full`), the
  blocked kernel with the probabilities cached for the blocks it computes (`cached`) and the
  engine's blocked kernel that keeps each row's log-normaliser and recomputes (`lse`), both
  blocked ones at each of --tiles query rows per block.
- `step`: whole training steps (tokens/s, median step) of two Trainers on the same batches, one
  on the full-product kernel with its (L, B, NH, T, T) cache, one on the engine as it is.

    python bench/attention.py kernels [--configs S,M,L] [--tiles 16,32,64] [--rounds 15]
    python bench/attention.py step [--configs S,M,L] [--threads 2] [--steps 10]

Not a test; nothing here asserts a speed. The full-product and cached kernels live only here.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time

import numpy as np
from numba import njit

import engine.model
from crawler.bench.throughput import CONFIGS, random_batches
from engine import BYTE_VOCAB_SIZE, Trainer
from engine.kernels import KERNEL
from engine.kernels.attention import attention_backward, attention_forward, gather_head, scatter_head
from engine.kernels.fastmath import fast_exp
from engine.layout import Table

# ---------------------------------------------------------------------------------------------
# the kernel before the blocked one: full (T, T) products, probabilities cached in att
# (B, NH, T, T) with zeros above the diagonal


@njit(**KERNEL)
def _full_attention_forward(out, att, qkv, NH):
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
def _full_attention_backward(dqkv, dout, qkv, att, NH):
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


# ---------------------------------------------------------------------------------------------
# the blocked kernel with its probabilities cached: block [i0, i1) keeps its (i1 - i0, i1)
# probabilities packed one after another in att (B, NH, T * T), of which cache_size(T, tile)
# floats are used


def cache_size(T: int, tile: int) -> int:
    """Floats per (batch, head) that the packed probability blocks take."""
    return sum((min(i0 + tile, T) - i0) * min(i0 + tile, T) for i0 in range(0, T, tile))


@njit(**KERNEL)
def _cached_attention_forward(out, att, qkv, NH, tile):
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
            gather_head(Q, qkv, b, h * hs, hs)
            gather_head(K, qkv, b, C + h * hs, hs)
            gather_head(Vv, qkv, b, 2 * C + h * hs, hs)
            packed = att[b, h]
            offset = 0
            for i0 in range(0, T, tile):
                i1 = min(i0 + tile, T)
                S = packed[offset : offset + (i1 - i0) * i1].reshape((i1 - i0, i1))
                offset += (i1 - i0) * i1
                np.dot(Q[i0:i1], K[:i1].T, S)
                for t in range(i1 - i0):
                    n = i0 + t + 1
                    row = S[t]
                    maxval = np.float32(-np.inf)
                    for t2 in range(n):
                        v = row[t2] * scale
                        row[t2] = v
                        maxval = v if v > maxval else maxval
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
                np.dot(S, Vv[:i1], Y[i0:i1])
            scatter_head(out, Y, b, h * hs, hs)


@njit(**KERNEL)
def _cached_attention_backward(dqkv, dout, qkv, att, NH, tile):
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // NH
    scale = np.float32(1.0 / math.sqrt(hs))
    Q = np.empty((T, hs), dtype=np.float32)
    K = np.empty((T, hs), dtype=np.float32)
    Vv = np.empty((T, hs), dtype=np.float32)
    dY = np.empty((T, hs), dtype=np.float32)
    dQ = np.empty((T, hs), dtype=np.float32)
    dK = np.empty((T, hs), dtype=np.float32)
    dV = np.empty((T, hs), dtype=np.float32)
    part = np.empty((T, hs), dtype=np.float32)
    dstrip = np.empty(min(tile, T) * T, dtype=np.float32)
    for b in range(B):
        for h in range(NH):
            gather_head(Q, qkv, b, h * hs, hs)
            gather_head(K, qkv, b, C + h * hs, hs)
            gather_head(Vv, qkv, b, 2 * C + h * hs, hs)
            gather_head(dY, dout, b, h * hs, hs)
            dK[:] = 0.0
            dV[:] = 0.0
            packed = att[b, h]
            offset = 0
            for i0 in range(0, T, tile):
                i1 = min(i0 + tile, T)
                P = packed[offset : offset + (i1 - i0) * i1].reshape((i1 - i0, i1))
                offset += (i1 - i0) * i1
                dP = dstrip[: (i1 - i0) * i1].reshape((i1 - i0, i1))
                np.dot(P.T, dY[i0:i1], part[:i1])
                for t in range(i1):
                    for i in range(hs):
                        dV[t, i] += part[t, i]
                np.dot(dY[i0:i1], Vv[:i1].T, dP)
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
                np.dot(dP, K[:i1], dQ[i0:i1])
                np.dot(dP.T, Q[i0:i1], part[:i1])
                for t in range(i1):
                    for i in range(hs):
                        dK[t, i] += part[t, i]
            scatter_head(dqkv, dQ, b, h * hs, hs)
            scatter_head(dqkv, dK, b, C + h * hs, hs)
            scatter_head(dqkv, dV, b, 2 * C + h * hs, hs)


# ---------------------------------------------------------------------------------------------
# per kernel


def time_once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def kernels(args) -> None:
    from threadpoolctl import threadpool_limits

    tiles = [int(t) for t in args.tiles.split(",")]
    rng = np.random.default_rng(0)
    with threadpool_limits(limits=1, user_api="blas"):
        for name in args.configs.split(","):
            bench = CONFIGS[name]
            B, T, C, NH = bench.batch_size, bench.seq_len, bench.d_model, bench.n_head
            hs = C // NH
            qkv = rng.standard_normal((B, T, 3 * C)).astype(np.float32)
            dout = rng.standard_normal((B, T, C)).astype(np.float32)
            out = np.zeros((B, T, C), np.float32)
            dqkv = np.zeros((B, T, 3 * C), np.float32)
            att = np.zeros((B, NH, T, T), np.float32)
            packed = np.zeros((B, NH, T * T), np.float32)
            lse = np.zeros((B, NH, T), np.float32)

            def full():
                _full_attention_forward(out, att, qkv, NH)
                _full_attention_backward(dqkv, dout, qkv, att, NH)

            variants = {"full": full}
            for tile in tiles:
                def cached(tile=tile):
                    _cached_attention_forward(out, packed, qkv, NH, tile)
                    _cached_attention_backward(dqkv, dout, qkv, packed, NH, tile)

                def recompute(tile=tile):
                    attention_forward(out, lse, qkv, NH, tile)
                    attention_backward(dqkv, dout, qkv, lse, NH, tile)

                variants[f"cached tile={tile}"] = cached
                variants[f"lse tile={tile}"] = recompute
            # every variant's gradient agrees with the full product's before anything is timed
            full()
            want = dqkv.copy()
            for label, fn in variants.items():
                fn()
                np.testing.assert_allclose(dqkv, want, rtol=1e-3, atol=1e-4, err_msg=label)
            times = {label: [] for label in variants}
            for _ in range(args.rounds):
                for label, fn in variants.items():
                    times[label].append(time_once(fn))
            base = statistics.median(times["full"])
            print(f"{name}: B={B} T={T} C={C} NH={NH} hs={hs}, one layer fwd+bwd on 1 thread, "
                  f"{args.rounds} rounds; cache per layer: full {4 * B * NH * T * T / 1e6:.2f} MB")
            best = min(times["full"])
            for label in variants:
                median = statistics.median(times[label])
                extra = f"  min {min(times[label]) * 1e3:7.2f} ms, full/this {best / min(times[label]):5.2f}x"
                if label.startswith("cached"):
                    extra += f", cache {4 * B * NH * cache_size(T, int(label.split('=')[1])) / 1e6:.2f} MB"
                elif label.startswith("lse"):
                    extra += f", cache {4 * B * NH * T / 1e6:.3f} MB"
                print(f"  {label:16s} median {median * 1e3:7.2f} ms, full/this {base / median:5.2f}x;{extra}")


# ---------------------------------------------------------------------------------------------
# whole steps


FULL = [False]  # set while the full-product trainer is built and steps


def _activation_table(config, B, T, table=engine.model.activation_table):
    """The engine's activation table; while FULL, its attention cache is (L, B, NH, T, T)."""
    built = table(config, B, T)
    if not FULL[0]:
        return built
    L, NH = config.n_layer, config.n_head
    entries = [(n, (L, B, NH, T, T) if n == "att_lse" else s) for n, s in built.entries]
    return Table(entries, built.views_type)


def _forward(out, cache, qkv, NH):
    if cache.ndim == 4:
        _full_attention_forward(out, cache, qkv, NH)
    else:
        attention_forward(out, cache, qkv, NH)


def _backward(dqkv, dout, qkv, cache, NH):
    if cache.ndim == 4:
        _full_attention_backward(dqkv, dout, qkv, cache, NH)
    else:
        attention_backward(dqkv, dout, qkv, cache, NH)


@contextlib.contextmanager
def full_kernel():
    FULL[0] = True
    try:
        yield
    finally:
        FULL[0] = False


def step(args) -> None:
    engine.model.activation_table = _activation_table
    engine.model.attention_forward = _forward
    engine.model.attention_backward = _backward
    for name in args.configs.split(","):
        bench = CONFIGS[name]
        batches = random_batches(BYTE_VOCAB_SIZE, bench.batch_size, bench.seq_len, count=4)
        model, train = bench.model_config(), bench.train_config(args.threads)
        with full_kernel():
            old = Trainer(model, train)
        new = Trainer(model, train)
        trainers = {"full": old, "blocked": new}
        times = {label: [] for label in trainers}
        try:
            for i in range(args.warmup + args.steps):
                for label, trainer in trainers.items():
                    with full_kernel() if label == "full" else contextlib.nullcontext():
                        seconds = time_once(lambda: trainer.step(*batches[i % len(batches)]))
                    if i >= args.warmup:
                        times[label].append(seconds)
            memory = {label: trainer.memory_per_thread_mb for label, trainer in trainers.items()}
        finally:
            old.close()
            new.close()
        tokens = bench.batch_size * bench.seq_len
        base = statistics.median(times["full"])
        print(f"{name}: {args.threads} threads, median of {args.steps} steps")
        for label in trainers:
            median = statistics.median(times[label])
            print(f"  {label:16s} {tokens / median:9.0f} tokens/s  this/full {base / median:5.3f}x  "
                  f"{memory[label]:7.1f} MB/thread")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("kernels", "step"))
    parser.add_argument("--configs", default="S,M,L")
    parser.add_argument("--tiles", default="16,32,64")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    kernels(args) if args.what == "kernels" else step(args)


if __name__ == "__main__":
    main()
