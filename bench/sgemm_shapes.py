"""sgemm rate on one BLAS thread for the products one worker multiplies at size S (its 1,024
rows of a 16 x 128 batch on 2 threads), against the 2,048-square peak that MFU is measured by.

    python bench/sgemm_shapes.py

Not a test: the machine should otherwise be quiet.
"""

from __future__ import annotations

import time

import numpy as np
from threadpoolctl import threadpool_limits

# (rows, inner, columns, what): out (rows, columns) = a (rows, inner) @ b (inner, columns)
SHAPES = (
    (1024, 128, 384, "qkv forward"),
    (1024, 128, 512, "fc forward"),
    (1024, 512, 128, "fcproj forward, fc's input gradient"),
    (1024, 128, 128, "attproj forward"),
    (128, 1024, 512, "fc's weight gradient"),
    (512, 1024, 128, "fcproj's weight gradient"),
)


def gflops(rows: int, inner: int, columns: int, repeats: int, rounds: int = 5) -> float:
    """The best of `rounds` rounds of `repeats` products, in GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((rows, inner), dtype=np.float32)
    b = rng.standard_normal((inner, columns), dtype=np.float32)
    out = np.empty((rows, columns), np.float32)
    np.matmul(a, b, out=out)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            np.matmul(a, b, out=out)
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2.0 * rows * inner * columns / best / 1e9


def main() -> None:
    with threadpool_limits(limits=1, user_api="blas"):
        peak = gflops(2048, 2048, 2048, repeats=2)
        print(f"peak, 2048 x 2048 x 2048: {peak:.1f} GFLOP/s")
        for rows, inner, columns, what in SHAPES:
            rate = gflops(rows, inner, columns, repeats=50)
            print(f"{what:38s} {rows} x {inner} x {columns}: {rate:6.1f} GFLOP/s, {100 * rate / peak:.0f} % of peak")


if __name__ == "__main__":
    main()
