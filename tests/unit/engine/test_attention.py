"""The blocked causal attention kernel against its numpy reference and finite differences.

The kernel computes query blocks of `tile` rows against the keys up to each block's last row,
so the sizes below put T below one tile, at a multiple of it and between multiples, with one
head and many. Tolerances as in test_kernels.py: float32 kernel against float64 reference at
rtol 1e-4 / atol 1e-5; finite differences on the float64 reference.
"""

import numpy as np
import pytest

from engine.kernels.attention import (
    attention_backward, attention_backward_reference, attention_forward,
    attention_forward_reference, attention_lse_reference, default_tile,
)

from gradcheck import close, numeric_grad  # a helper beside this file

rng = np.random.default_rng(4321)

# (B, T, C, NH, tile)
SIZES = [
    (2, 1, 8, 2, 4),  # a single position
    (2, 3, 8, 2, 4),  # T below one tile
    (1, 8, 6, 1, 4),  # one head, T a multiple of the tile
    (2, 11, 8, 2, 4),  # T between multiples of the tile
    (1, 13, 24, 8, 5),  # many heads (hs 3), an odd tile
    (1, 37, 16, 4, 0),  # the engine's default tile (32), T above it and not a multiple
    (1, 70, 128, 2, 0),  # hs 64: the default tile is 64
]


def run(qkv, NH, tile, dout, start=7.0):
    B, T, C3 = qkv.shape
    out = np.zeros((B, T, C3 // 3), np.float32)
    lse = np.zeros((B, NH, T), np.float32)
    attention_forward(out, lse, qkv, NH, tile)
    dqkv = np.full(qkv.shape, start, np.float32)  # overwritten, whatever was there
    attention_backward(dqkv, dout, qkv, lse, NH, tile)
    return out, lse, dqkv


@pytest.mark.parametrize("B, T, C, NH, tile", SIZES)
def test_attention_matches_reference(B, T, C, NH, tile):
    qkv = rng.standard_normal((B, T, 3 * C)).astype(np.float32)
    dout = rng.standard_normal((B, T, C)).astype(np.float32)
    out, lse, dqkv = run(qkv, NH, tile, dout)
    q64 = qkv.astype(np.float64)
    close(out, attention_forward_reference(q64, NH)[0])
    close(lse, attention_lse_reference(q64, NH))
    close(dqkv, attention_backward_reference(dout.astype(np.float64), q64, NH))


@pytest.mark.parametrize("B, T, C, NH, tile", [SIZES[1], SIZES[3], SIZES[4]])
def test_attention_finite_differences(B, T, C, NH, tile):
    qkv = rng.standard_normal((B, T, 3 * C)).astype(np.float32)
    dout = rng.standard_normal((B, T, C)).astype(np.float32)
    _, _, dqkv = run(qkv, NH, tile, dout)
    fd = numeric_grad(lambda v: (attention_forward_reference(v, NH)[0] * dout).sum(), qkv)
    close(dqkv, fd, atol=2e-5)
    rd = attention_backward_reference(dout.astype(np.float64), qkv.astype(np.float64), NH)
    close(rd, fd, atol=1e-6)


def test_attention_is_causal():
    """Changing the future (q, k, v at positions > t) leaves out[:, :t + 1] alone, bit for bit."""
    B, T, C, NH, tile = 2, 11, 8, 2, 4
    qkv = rng.standard_normal((B, T, 3 * C)).astype(np.float32)
    dout = rng.standard_normal((B, T, C)).astype(np.float32)
    out, _, _ = run(qkv, NH, tile, dout)
    changed = qkv.copy()
    changed[:, 6:] = rng.standard_normal((B, T - 6, 3 * C))
    out2, _, _ = run(changed, NH, tile, dout)
    assert np.array_equal(out[:, :6], out2[:, :6])
    assert not np.allclose(out[:, 6:], out2[:, 6:])


def test_attention_tile_does_not_change_the_maths():
    """Every tile gives the same output and gradient to float32 rounding."""
    B, T, C, NH = 2, 23, 16, 4
    qkv = rng.standard_normal((B, T, 3 * C)).astype(np.float32)
    dout = rng.standard_normal((B, T, C)).astype(np.float32)
    want = run(qkv, NH, T, dout)
    for tile in (1, 2, 7, 16, 64):
        got = run(qkv, NH, tile, dout)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_default_tile():
    assert [default_tile(hs) for hs in (3, 32, 63, 64, 128)] == [32, 32, 32, 64, 64]


def test_attention_is_deterministic():
    """Two runs on the same input are bit-identical (no reduction order depends on timing)."""
    B, T, C, NH = 2, 40, 16, 2
    qkv = rng.standard_normal((B, T, 3 * C)).astype(np.float32)
    dout = rng.standard_normal((B, T, C)).astype(np.float32)
    first, second = run(qkv, NH, 0, dout), run(qkv, NH, 0, dout)
    for a, b in zip(first, second):
        assert np.array_equal(a, b)
