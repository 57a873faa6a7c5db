"""Each kernel pair against its numpy reference and against central finite differences.

Tolerances: float32 kernels vs float64 references at rtol 1e-4 / atol 1e-5 unless stated;
finite differences are taken on the float64 references (eps 1e-6), so they check the maths of
the reference, and the reference checks the kernel.
"""

import numpy as np
import pytest

from engine.kernels.attention import (
    attention_backward, attention_backward_reference, attention_forward, attention_forward_reference,
    attention_lse_reference,
)
from engine.kernels.crossentropy import (
    crossentropy_backward, crossentropy_backward_reference, crossentropy_forward,
    crossentropy_forward_reference, crystalline_cost, crystalline_cost_reference,
    crystalline_cost_table, ulam_position,
)
from engine.kernels.encoder import encoder_backward, encoder_backward_reference, encoder_forward, encoder_forward_reference
from engine.kernels.gelu import (
    gelu_backward, gelu_backward_reference, gelu_forward, gelu_forward_reference, matmul_gelu_forward, matmul_gelu_forward_reference,
)
from engine.kernels.layernorm import layernorm_backward, layernorm_backward_reference, layernorm_forward, layernorm_forward_reference
from engine.kernels.matmul import (
    matmul_backward, matmul_backward_reference, matmul_forward, matmul_forward_reference, matmul_residual_forward,
    matmul_residual_forward_reference,
)

from gradcheck import close, numeric_grad  # a helper beside this file

rng = np.random.default_rng(1234)


def f32(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ---------------------------------------------------------------------------------------------


def test_encoder():
    B, T, C, V, maxT = 2, 3, 4, 5, 6
    inp = rng.integers(0, V, (B, T)).astype(np.int32)
    wte, wpe = f32(V, C), f32(maxT, C)
    out = np.zeros((B, T, C), np.float32)
    encoder_forward(out, inp, wte, wpe)
    close(out, encoder_forward_reference(inp, wte, wpe))
    dout = f32(B, T, C)
    dwte, dwpe = np.ones((V, C), np.float32), np.ones((maxT, C), np.float32)  # accumulates
    encoder_backward(dwte, dwpe, dout, inp)
    rwte, rwpe = encoder_backward_reference(dout, inp, V, maxT)
    close(dwte - 1, rwte)
    close(dwpe - 1, rwpe)
    w64 = wte.astype(np.float64)
    fd = numeric_grad(lambda w: (encoder_forward_reference(inp, w, wpe) * dout).sum(), w64)
    close(rwte, fd)


def test_layernorm():
    N, C = 5, 8
    x, w, b = f32(N, C), f32(C) + 1, f32(C)
    out, mean, rstd = np.zeros((N, C), np.float32), np.zeros(N, np.float32), np.zeros(N, np.float32)
    layernorm_forward(out, mean, rstd, x, w, b)
    ref, rmean, rrstd = layernorm_forward_reference(x.astype(np.float64), w, b)
    close(out, ref)
    close(mean, rmean)
    close(rstd, rrstd)
    dout = f32(N, C)
    dinp, dw, db = np.full((N, C), 0.5, np.float32), np.zeros(C, np.float32), np.zeros(C, np.float32)
    layernorm_backward(dinp, dw, db, dout, x, w, mean, rstd)
    rdinp, rdw, rdb = layernorm_backward_reference(dout.astype(np.float64), x.astype(np.float64), w)
    close(dinp - 0.5, rdinp)
    close(dw, rdw)
    close(db, rdb)
    fd = numeric_grad(lambda v: (layernorm_forward_reference(v, w, b)[0] * dout).sum(), x)
    close(rdinp, fd, atol=1e-6)
    fdw = numeric_grad(lambda v: (layernorm_forward_reference(x.astype(np.float64), v, b)[0] * dout).sum(), w)
    close(rdw, fdw, atol=1e-6)


def test_matmul():
    N, C, OC = 6, 5, 7
    x, w, b = f32(N, C), f32(OC, C), f32(OC)
    out = np.zeros((N, OC), np.float32)
    matmul_forward(out, x, w, b)
    close(out, matmul_forward_reference(x.astype(np.float64), w, b))
    dout = f32(N, OC)
    dinp, dw, db = np.full((N, C), 9.0, np.float32), np.ones((OC, C), np.float32), np.ones(OC, np.float32)
    matmul_backward(dinp, dw, db, np.zeros((OC, C), np.float32), dout, x, w)
    rdinp, rdw, rdb = matmul_backward_reference(dout.astype(np.float64), x.astype(np.float64), w.astype(np.float64))
    close(dinp, rdinp)  # overwritten
    close(dw - 1, rdw)  # accumulated
    close(db - 1, rdb)
    fd = numeric_grad(lambda v: (matmul_forward_reference(x, v, b) * dout).sum(), w)
    close(rdw, fd, atol=1e-6)
    fdx = numeric_grad(lambda v: (matmul_forward_reference(v, w, b) * dout).sum(), x)
    close(rdinp, fdx, atol=1e-6)


@pytest.mark.parametrize("T", [1, 4, 7])
def test_attention(T):
    B, C, NH = 2, 8, 2
    qkv = f32(B, T, 3 * C)
    out, lse = np.zeros((B, T, C), np.float32), np.zeros((B, NH, T), np.float32)
    attention_forward(out, lse, qkv, NH)
    ref, _ = attention_forward_reference(qkv.astype(np.float64), NH)
    close(out, ref)
    close(lse, attention_lse_reference(qkv.astype(np.float64), NH))  # more in test_attention.py
    dout = f32(B, T, C)
    dqkv = np.full((B, T, 3 * C), 7.0, np.float32)
    attention_backward(dqkv, dout, qkv, lse, NH)
    rd = attention_backward_reference(dout.astype(np.float64), qkv.astype(np.float64), NH)
    close(dqkv, rd)
    fd = numeric_grad(lambda v: (attention_forward_reference(v, NH)[0] * dout).sum(), qkv)
    close(rd, fd, atol=1e-6)


def test_gelu():
    N, H, C = 4, 50, 3
    # the linear layer in front: pre-activations from -20 to 20, and some near 0
    inp, w, b = f32(N, C), f32(H, C), f32(H, scale=3.0)
    inp[0] = 0.0
    b[:6] = [-20, -8, -1e-4, 0, 1e-4, 20]
    pre, out = np.zeros((N, H), np.float32), np.zeros((N, H), np.float32)
    matmul_gelu_forward(pre, out, inp, w, b)
    rpre, rout = matmul_gelu_forward_reference(inp.astype(np.float64), w, b)
    close(pre, rpre)
    # the rational tanh is within 3.5e-7 of tanh; 0.5 * x * (1 + tanh) scales that by |x| / 2
    close(out, rout, atol=5e-6)
    again = np.zeros_like(out)
    gelu_forward(again, pre)  # the backward's recompute: the forward's bits
    assert np.array_equal(again, out)
    x = f32(N, H, scale=3.0)
    x[0, :6] = [-20, -8, -1e-4, 0, 1e-4, 20]
    dout = f32(N, H)
    dinp = np.zeros_like(x)
    gelu_backward(dinp, x, dout)
    rd = gelu_backward_reference(x.astype(np.float64), dout)
    close(dinp, rd, atol=2e-6)
    fd = numeric_grad(lambda v: (gelu_forward_reference(v) * dout).sum(), x)
    close(rd, fd, atol=1e-6)


def test_matmul_residual():
    """out = residual + inp @ w.T + b; its backward is matmul_backward with the residual stream's
    gradient, which is also the residual's own: checked here by finite differences of the
    reference in each input."""
    N, C, OC = 6, 5, 7
    x, w, b, r = f32(N, C), f32(OC, C), f32(OC), f32(N, OC)
    out = np.zeros((N, OC), np.float32)
    matmul_residual_forward(out, x, w, b, r)
    close(out, matmul_residual_forward_reference(x.astype(np.float64), w, b, r))
    dout = f32(N, OC)
    dinp, dw, db = np.zeros((N, C), np.float32), np.ones((OC, C), np.float32), np.ones(OC, np.float32)
    matmul_backward(dinp, dw, db, np.zeros((OC, C), np.float32), dout, x, w)

    ref = matmul_residual_forward_reference
    close(dinp, numeric_grad(lambda v: (ref(v, w, b, r) * dout).sum(), x))  # overwritten
    close(dw - 1, numeric_grad(lambda v: (ref(x, v, b, r) * dout).sum(), w))  # accumulated
    close(db - 1, numeric_grad(lambda v: (ref(x, w, v, r) * dout).sum(), b))
    # the residual's gradient is dout itself: model.backward keeps one buffer for both addends
    close(dout, numeric_grad(lambda v: (ref(x, w, b, v) * dout).sum(), r))


def test_ulam_spiral_and_cost():
    expected = {1: (0, 0), 2: (1, 0), 3: (1, 1), 4: (0, 1), 5: (-1, 1), 6: (-1, 0), 7: (-1, -1),
                8: (0, -1), 9: (1, -1), 10: (2, -1), 13: (2, 2), 17: (-2, 2), 21: (-2, -2), 25: (2, -2)}
    for n, pos in expected.items():
        assert tuple(ulam_position(n)) == pos, n
    for a in range(0, 40):
        for b in range(0, 300, 13):
            assert crystalline_cost(a, b) == pytest.approx(crystalline_cost_reference(a, b), abs=1e-12)
    # identical ids: gcd/max = 1 and distance 0, so s = 1 and the cost is 0
    assert crystalline_cost(5, 5) == pytest.approx(0.0, abs=1e-12)
    table = crystalline_cost_table(20)
    assert table.shape == (20, 20) and table[3, 7] == pytest.approx(crystalline_cost(3, 7), rel=1e-6)
    with pytest.raises(ValueError, match="vocab_size"):
        crystalline_cost_table(5000)


@pytest.mark.parametrize("weight", [0.0, 0.3])
def test_crossentropy(weight):
    N, V = 6, 9
    logits = f32(N, V, scale=2.0)
    inp = rng.integers(0, V, N).astype(np.int32)
    targets = rng.integers(0, V, N).astype(np.int32)
    cost = crystalline_cost_table(V)
    probs = logits.copy()
    losses, expected, crystal = np.zeros(N, np.float32), np.zeros(N, np.float32), np.zeros(N, np.float32)
    crossentropy_forward(losses, expected, crystal, probs, inp, targets, cost, weight)
    rl, rexp, rp = crossentropy_forward_reference(logits.astype(np.float64), inp, targets, cost.astype(np.float64), weight)
    close(losses, rl)
    close(expected, rexp)
    close(probs, rp)
    close(crystal, [crystalline_cost_reference(int(a), int(b)) for a, b in zip(inp, targets)])
    dloss = 0.25
    crossentropy_backward(probs, dloss, inp, targets, cost, weight)
    rd = crossentropy_backward_reference(logits.astype(np.float64), inp, targets, cost.astype(np.float64), weight, dloss)
    close(probs, rd)

    def objective(z):
        loss, exp_cost, _ = crossentropy_forward_reference(z, inp, targets, cost.astype(np.float64), weight)
        return dloss * (loss + weight * exp_cost).sum()

    close(rd, numeric_grad(objective, logits), atol=1e-6)


def test_fast_exp_and_tanh():
    from engine.kernels.fastmath import fast_exp_array, fast_tanh_array

    x = np.linspace(-87, 88, 200_001, dtype=np.float32)
    out = np.empty_like(x)
    fast_exp_array(out, x)
    np.testing.assert_allclose(out, np.exp(x.astype(np.float64)), rtol=2e-7)
    x = np.linspace(-12, 12, 200_001, dtype=np.float32)
    fast_tanh_array(out, x)
    np.testing.assert_allclose(out, np.tanh(x.astype(np.float64)), atol=4e-7)
    special = np.array([np.nan, 1e30, -1e30, 0.0], np.float32)
    res = np.empty_like(special)
    fast_exp_array(res, special)
    assert np.isnan(res[0]) and np.isfinite(res[1]) and 0 <= res[2] < 1e-37 and res[3] == 1.0
    fast_tanh_array(res, special)
    assert np.isnan(res[0]) and res[1] == 1.0 and res[2] == -1.0 and res[3] == 0.0
