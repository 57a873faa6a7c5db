"""Finite differences and a float64 comparison, shared by the kernel tests (imported by name:
pytest puts this folder on sys.path for the test modules in it)."""

import numpy as np

RTOL, ATOL = 1e-4, 1e-5


def numeric_grad(f, x, eps=1e-6):
    """Central differences of the scalar f at float64 x."""
    x = x.astype(np.float64).copy()
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f(x)
        flat[i] = old - eps
        down = f(x)
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return g


def close(a, b, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol)
