"""The architecture options' kernel pairs (RMSNorm, rotary positions, QK-norm, ReLU^2, soft-capped
logits, the token-only embedding) against their numpy references and central finite differences.

Sizes are odd on purpose: T is never a power of two, heads are one and several, channels are not
multiples of the vector width. Backward kernels documented to accumulate are called on gradients
that already hold ones; those documented to overwrite are called on buffers full of garbage.
Tolerances: float32 kernels against float64 references at rtol 1e-4 / atol 1e-5 (the soft cap
at 15: atol 1e-5 for tanh's 3.5e-7 times the cap); finite differences on the float64 references
at eps 1e-6.
"""

import numpy as np
import pytest

from engine.kernels.encoder import token_encoder_backward, token_encoder_forward
from engine.kernels.qknorm import qknorm_backward, qknorm_backward_reference, qknorm_forward, qknorm_forward_reference
from engine.kernels.relu2 import (
    matmul_relu2_forward, matmul_relu2_forward_reference, relu2_backward, relu2_backward_reference, relu2_forward,
    relu2_forward_reference,
)
from engine.kernels.rmsnorm import rmsnorm_backward, rmsnorm_backward_reference, rmsnorm_forward, rmsnorm_forward_reference
from engine.kernels.rope import (
    rope_backward, rope_backward_reference, rope_forward, rope_forward_reference, rope_tables,
)
from engine.kernels.softcap import softcap_backward, softcap_backward_reference, softcap_forward, softcap_forward_reference

from gradcheck import close, numeric_grad  # a helper beside this file

rng = np.random.default_rng(4321)


def f32(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def garbage(*shape):
    return np.full(shape, np.float32(7.5))


# ---------------------------------------------------------------------------------------------


def test_rmsnorm():
    N, C = 5, 7
    x, w = f32(N, C), f32(C) + 1
    out, rstd = np.zeros((N, C), np.float32), np.zeros(N, np.float32)
    rmsnorm_forward(out, rstd, x, w)
    ref, rrstd = rmsnorm_forward_reference(x.astype(np.float64), w)
    close(out, ref)
    close(rstd, rrstd)
    dout = f32(N, C)
    dinp, dw = np.ones((N, C), np.float32), np.ones(C, np.float32)  # both accumulate
    rmsnorm_backward(dinp, dw, dout, x, w, rstd)
    rdinp, rdw = rmsnorm_backward_reference(dout.astype(np.float64), x.astype(np.float64), w)
    close(dinp - 1, rdinp)
    close(dw - 1, rdw)
    loss_x = lambda v: (rmsnorm_forward_reference(v, w)[0] * dout).sum()  # noqa: E731
    close(rdinp, numeric_grad(loss_x, x), rtol=1e-4, atol=1e-6)
    loss_w = lambda v: (rmsnorm_forward_reference(x.astype(np.float64), v)[0] * dout).sum()  # noqa: E731
    close(rdw, numeric_grad(loss_w, w), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("NH", [1, 3])
def test_rope(NH):
    B, T, hs = 2, 7, 6
    C = NH * hs
    maxT = 9  # the tables may be longer than the batch: row t is position t
    cos, sin = rope_tables(maxT, hs)
    assert cos.shape == sin.shape == (maxT, hs // 2)
    assert np.array_equal(cos[0], np.ones(hs // 2)) and np.array_equal(sin[0], np.zeros(hs // 2))
    x = f32(B, T, 3 * C)
    out = garbage(B, T, 3 * C)
    rope_forward(out, x, cos, sin, NH)
    ref = rope_forward_reference(x.astype(np.float64), NH)
    close(out, ref)
    assert np.array_equal(out[..., 2 * C :], x[..., 2 * C :])  # v goes through untouched
    # a rotation keeps each pair's length
    close(np.linalg.norm(out[..., : 2 * C]), np.linalg.norm(x[..., : 2 * C]))
    inplace = x.copy()
    rope_forward(inplace, inplace, cos, sin, NH)  # the model runs it in place after QK-norm
    assert np.array_equal(inplace, out)

    dout = f32(B, T, 3 * C)
    dinp = garbage(B, T, 3 * C)  # overwritten
    rope_backward(dinp, dout, cos, sin, NH)
    rdinp = rope_backward_reference(dout.astype(np.float64), NH)
    close(dinp, rdinp)
    fd = numeric_grad(lambda v: (rope_forward_reference(v, NH) * dout).sum(), x)
    close(rdinp, fd, atol=1e-6)
    inplace = dout.copy()
    rope_backward(inplace, inplace, cos, sin, NH)
    assert np.array_equal(inplace, dinp)


def test_rope_scores_depend_on_the_distance_only():
    hs = 8
    cos, sin = rope_tables(20, hs)
    q, k = f32(1, 1, 3 * hs), f32(1, 1, 3 * hs)
    k[..., :hs] = k[..., hs : 2 * hs]  # put k's head where q's is read below

    def score(tq, tk):
        a = np.zeros((1, 1, 3 * hs), np.float32)
        b = np.zeros((1, 1, 3 * hs), np.float32)
        rope_forward(a, q, cos[tq : tq + 1], sin[tq : tq + 1], 1)
        rope_forward(b, k, cos[tk : tk + 1], sin[tk : tk + 1], 1)
        return float(a[0, 0, :hs] @ b[0, 0, :hs])

    assert score(5, 2) == pytest.approx(score(13, 10), rel=1e-4, abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 4), rel=1e-3)


@pytest.mark.parametrize("NH", [1, 3])
def test_qknorm(NH):
    B, T, hs = 2, 5, 7
    C = NH * hs
    x = f32(B, T, 3 * C)
    out, rstd = garbage(B, T, 3 * C), garbage(B, T, 2 * NH)
    qknorm_forward(out, rstd, x, NH)
    ref, rrstd = qknorm_forward_reference(x.astype(np.float64), NH)
    close(out, ref)
    close(rstd, rrstd)
    assert np.array_equal(out[..., 2 * C :], x[..., 2 * C :])
    heads = out[..., : 2 * C].reshape(B, T, 2 * NH, hs)
    close((heads.astype(np.float64) ** 2).mean(-1), np.ones((B, T, 2 * NH)), rtol=1e-3)  # unit RMS

    dout = f32(B, T, 3 * C)
    dinp = garbage(B, T, 3 * C)  # overwritten
    qknorm_backward(dinp, dout, x, rstd, NH)
    rdinp = qknorm_backward_reference(dout.astype(np.float64), x.astype(np.float64), NH)
    close(dinp, rdinp)
    fd = numeric_grad(lambda v: (qknorm_forward_reference(v, NH)[0] * dout).sum(), x)
    close(rdinp, fd, atol=1e-6)
    inplace = dout.copy()
    qknorm_backward(inplace, inplace, x, rstd, NH)  # the model runs it in place
    assert np.array_equal(inplace, dinp)


def test_relu2():
    N, H, C = 3, 13, 4
    inp, w, b = f32(N, C), f32(H, C), f32(H)
    pre, out = garbage(N, H), garbage(N, H)  # both written
    matmul_relu2_forward(pre, out, inp, w, b)
    rpre, rout = matmul_relu2_forward_reference(inp.astype(np.float64), w, b)
    close(pre, rpre)
    close(out, rout)
    assert (out[pre < 0] == 0).all()
    again = garbage(N, H)
    relu2_forward(again, pre)  # the backward's recompute: the forward's bits
    assert np.array_equal(again, out)
    x = pre.copy()
    x[np.abs(x) < 1e-3] = 0.5  # away from the kink, where central differences are exact
    dout = f32(N, H)
    dinp = garbage(N, H)  # overwritten
    relu2_backward(dinp, x, dout)
    rdinp = relu2_backward_reference(x.astype(np.float64), dout)
    close(dinp, rdinp)
    close(rdinp, numeric_grad(lambda v: (relu2_forward_reference(v) * dout).sum(), x), atol=1e-6)


@pytest.mark.parametrize("cap", [15.0, 2.5])
def test_softcap(cap):
    N, V = 5, 11
    x = f32(N, V, scale=10.0)  # logits on both sides of the cap
    out = garbage(N, V)
    softcap_forward(out, x, cap)
    close(out, softcap_forward_reference(x.astype(np.float64), cap))
    assert np.abs(out).max() <= cap
    dout = f32(N, V)
    dinp = garbage(N, V)  # overwritten
    softcap_backward(dinp, dout, x, cap)
    rdinp = softcap_backward_reference(dout.astype(np.float64), x.astype(np.float64), cap)
    close(dinp, rdinp)
    close(rdinp, numeric_grad(lambda v: (softcap_forward_reference(v, cap) * dout).sum(), x), atol=1e-6)
    inplace = dout.copy()
    softcap_backward(inplace, inplace, x, cap)  # the model turns dprobs into dlogits in place
    assert np.array_equal(inplace, dinp)


def test_token_encoder():
    B, T, C, V = 2, 5, 3, 7
    inp = rng.integers(0, V, (B, T)).astype(np.int32)
    wte = f32(V, C)
    out = garbage(B, T, C)
    token_encoder_forward(out, inp, wte)
    assert np.array_equal(out, wte[inp])
    dout = f32(B, T, C)
    dwte = np.ones((V, C), np.float32)  # accumulates
    token_encoder_backward(dwte, dout, inp)
    expected = np.zeros((V, C))
    np.add.at(expected, inp.reshape(-1), dout.reshape(-1, C))
    close(dwte - 1, expected)
