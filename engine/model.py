"""The model's forward and backward passes over all layers, for one worker's micro-batch.

Two straight-line functions that read like the architecture diagram: `forward` makes one kernel
call per line, `backward` the same calls in reverse. They work on named views (`ParameterViews`,
`ActivationViews`) and a `Workspace` of per-worker buffers. No threads here: `parallel.py` runs
one `Workspace` per worker. Knows nothing of files or storage.

The architecture options of ModelConfig choose between kernels at a few fixed points: the
embedding (with or without the position table), every norm (LayerNorm or RMSNorm), q and k
before attention (QK-norm, then the rotation), the MLP's nonlinearity (GELU or ReLU^2) and the
head (tied or its own matrix, then the soft cap). The small `*_forward` / `*_backward` helpers
below hold those choices, so the two passes still read as one line per layer.
"""

from __future__ import annotations

import numpy as np

from .config import ModelConfig
from .kernels.attention import attention_backward, attention_forward
from .kernels.crossentropy import crossentropy_backward, crossentropy_forward, crystalline_cost_table
from .kernels.encoder import encoder_backward, encoder_forward, token_encoder_backward, token_encoder_forward
from .kernels.gelu import gelu_backward, gelu_forward, matmul_gelu_forward
from .kernels.layernorm import layernorm_backward, layernorm_forward
from .kernels.matmul import matmul_backward, matmul_forward, matmul_residual_forward
from .kernels.qknorm import qknorm_backward, qknorm_forward
from .kernels.relu2 import matmul_relu2_forward, relu2_backward, relu2_forward
from .kernels.rmsnorm import rmsnorm_backward, rmsnorm_forward
from .kernels.rope import rope_backward, rope_forward, rope_tables
from .kernels.softcap import softcap_backward, softcap_forward
from .layout import ActivationViews, ParameterViews, Table, activation_table, parameter_table


class Workspace:
    """One worker's buffers, made once: activations for up to (B, T) and the activation gradients
    the backward needs for one layer at a time (they are reused layer after layer). With
    recompute_activation the MLP's activation output is not kept: the forward writes each
    layer's into `dfch`, free until the backward, which computes it there again."""

    def __init__(self, config: ModelConfig, B: int, T: int, recompute_activation: bool = False):
        self.config = config
        self.B, self.T = B, T
        self.recompute_activation = recompute_activation
        C, V = config.d_model, config.vocab_size
        H = config.mlp_ratio * C
        self.activations = activation_table(config, B, T, recompute_activation).allocate()
        self._views: dict[tuple[int, int], ActivationViews] = {}
        N = B * T
        self.dres = np.zeros((N, C), dtype=np.float32)  # gradient along the residual stream
        self.dln = np.zeros((N, C), dtype=np.float32)  # gradient at a LayerNorm's output
        self.datty = np.zeros((N, C), dtype=np.float32)
        self.dqkv = np.zeros((B, T, 3 * C), dtype=np.float32)
        self.dfch_gelu = np.zeros((N, H), dtype=np.float32)
        self.dfch = np.zeros((N, H), dtype=np.float32)
        self.scratch = np.zeros(max(3 * C * C, H * C, V * C), dtype=np.float32)
        self.zero_bias = np.zeros(V, dtype=np.float32)  # the head has no bias
        self.dzero_bias = np.zeros(V, dtype=np.float32)
        # (T, hs/2) angles of positions 0..T-1 for rope; (0, 0) without it
        hs = config.head_size
        self.rope_cos, self.rope_sin = rope_tables(T, hs) if config.rope else rope_tables(0, 0)

    def views(self, B: int, T: int) -> ActivationViews:
        """Activation views for a (B, T) batch within the (self.B, self.T) capacity."""
        if B > self.B or T > self.T:
            raise ValueError(f"batch ({B}, {T}) exceeds the workspace ({self.B}, {self.T})")
        key = (B, T)
        if key not in self._views:
            table = activation_table(self.config, B, T, self.recompute_activation)
            self._views[key] = table.views(self.activations[: table.size])
        return self._views[key]

    @property
    def nbytes(self) -> int:
        arrays = (self.activations, self.dres, self.dln, self.datty, self.dqkv, self.dfch_gelu,
                  self.dfch, self.scratch, self.zero_bias, self.dzero_bias, self.rope_cos, self.rope_sin)
        return sum(a.nbytes for a in arrays)

    def weight_scratch(self, shape: tuple[int, int]) -> np.ndarray:
        return self.scratch[: shape[0] * shape[1]].reshape(shape)


# ---------------------------------------------------------------------------------------------
# the architecture's choices, one kernel pair each


def embedding_forward(config, out, inputs, p: ParameterViews) -> None:
    if config.learned_positions:
        encoder_forward(out, inputs, p.wte, p.wpe)
    else:
        token_encoder_forward(out, inputs, p.wte)


def embedding_backward(config, g: ParameterViews, dout, inputs) -> None:
    if config.learned_positions:
        encoder_backward(g.wte, g.wpe, dout, inputs)
    else:
        token_encoder_backward(g.wte, dout, inputs)


def norm_forward(config, out, mean, rstd, inp, weight, bias) -> None:
    """LayerNorm, or RMSNorm (which leaves `mean` alone and has no bias)."""
    if config.norm == "rmsnorm":
        rmsnorm_forward(out, rstd, inp, weight)
    else:
        layernorm_forward(out, mean, rstd, inp, weight, bias)


def norm_backward(config, dinp, dweight, dbias, dout, inp, weight, mean, rstd) -> None:
    if config.norm == "rmsnorm":
        rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd)
    else:
        layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd)


def qk_forward(config, ws: Workspace, qkvr, qk_rstd, qkv):
    """The buffer attention reads: qkv itself (turned in place by rope, whose backward needs
    nothing cached), or with QK-norm qkvr, holding the normalised (then turned) q and k and v
    copied, since QK-norm's backward reads qkv as it was."""
    target = qkv
    if config.qk_norm:
        qknorm_forward(qkvr, qk_rstd, qkv, config.n_head)
        target = qkvr
    if config.rope:
        rope_forward(target, target, ws.rope_cos, ws.rope_sin, config.n_head)
    return target


def qk_backward(config, ws: Workspace, dqkv, qkv, qk_rstd) -> None:
    """Turns the gradient at attention's input into the gradient at qkv, in place."""
    if config.rope:
        rope_backward(dqkv, dqkv, ws.rope_cos, ws.rope_sin, config.n_head)
    if config.qk_norm:
        qknorm_backward(dqkv, dqkv, qkv, qk_rstd, config.n_head)


def mlp_in_forward(config, pre, out, inp, weight, bias) -> None:
    """The MLP's first layer and its nonlinearity (GELU or ReLU^2), one pass over the hidden."""
    if config.activation == "relu2":
        matmul_relu2_forward(pre, out, inp, weight, bias)
    else:
        matmul_gelu_forward(pre, out, inp, weight, bias)


def mlp_out(ws: Workspace, a: ActivationViews, l: int, N: int, H: int) -> np.ndarray:
    """Where layer l's activation output is: its own slice, or the one-layer buffer."""
    return ws.dfch[:N] if ws.recompute_activation else a.fch_gelu[l].reshape(N, H)


def activation_recompute(config, out, inp) -> None:
    """The activation again, from its input (the forward's bits: the same scalar function)."""
    if config.activation == "relu2":
        relu2_forward(out, inp)
    else:
        gelu_forward(out, inp)


def activation_backward(config, dinp, inp, dout) -> None:
    if config.activation == "relu2":
        relu2_backward(dinp, inp, dout)
    else:
        gelu_backward(dinp, inp, dout)


def head_weight(config, p: ParameterViews) -> np.ndarray:
    """The (V, C) output head: the token embedding when tied, else its own matrix."""
    return p.wte if config.tie_head else p.lm_head


def head_forward(config, ws: Workspace, probs, logits, lnf, p: ParameterViews) -> None:
    """Logits into `probs` (capped when logit_softcap > 0, the raw ones then kept in `logits`)."""
    if config.logit_softcap > 0:
        matmul_forward(logits, lnf, head_weight(config, p), ws.zero_bias)
        softcap_forward(probs, logits, config.logit_softcap)
    else:
        matmul_forward(probs, lnf, head_weight(config, p), ws.zero_bias)


def head_backward(config, ws: Workspace, dlnf, g: ParameterViews, dprobs, logits, lnf, p: ParameterViews) -> None:
    """dprobs holds d(capped logits) on entry and is consumed."""
    if config.logit_softcap > 0:
        softcap_backward(dprobs, dprobs, logits, config.logit_softcap)
    V, C = config.vocab_size, config.d_model
    matmul_backward(dlnf, head_weight(config, g), ws.dzero_bias, ws.weight_scratch((V, C)), dprobs, lnf,
                    head_weight(config, p))


# ---------------------------------------------------------------------------------------------
# the model


def forward(config: ModelConfig, p: ParameterViews, ws: Workspace, inputs: np.ndarray,
            targets: np.ndarray, cost: np.ndarray, crystalline_weight: float) -> ActivationViews:
    """Run the model on inputs (B, T) and score targets (B, T); fills the activations and the
    per-position losses, expected crystalline costs and crystalline metric."""
    B, T = inputs.shape
    C, L, NH, V = config.d_model, config.n_layer, config.n_head, config.vocab_size
    H = config.mlp_ratio * C
    N = B * T
    a = ws.views(B, T)
    embedding_forward(config, a.encoded, inputs, p)
    residual = a.encoded.reshape(N, C)
    for l in range(L):
        ln1, qkv, atty, residual2 = a.ln1[l].reshape(N, C), a.qkv[l], a.atty[l], a.residual2[l].reshape(N, C)
        ln2, fch, fch_gelu = a.ln2[l].reshape(N, C), a.fch[l].reshape(N, H), mlp_out(ws, a, l, N, H)
        residual3 = a.residual3[l].reshape(N, C)

        norm_forward(config, ln1, a.ln1_mean[l].reshape(N), a.ln1_rstd[l].reshape(N), residual, p.ln1w[l], p.ln1b[l])
        matmul_forward(qkv.reshape(N, 3 * C), ln1, p.qkvw[l], p.qkvb[l])
        qkv_att = qk_forward(config, ws, a.qkvr[l], a.qk_rstd[l], qkv)
        attention_forward(atty, a.att_lse[l], qkv_att, NH)
        matmul_residual_forward(residual2, atty.reshape(N, C), p.attprojw[l], p.attprojb[l], residual)
        norm_forward(config, ln2, a.ln2_mean[l].reshape(N), a.ln2_rstd[l].reshape(N), residual2, p.ln2w[l], p.ln2b[l])
        mlp_in_forward(config, fch, fch_gelu, ln2, p.fcw[l], p.fcb[l])
        matmul_residual_forward(residual3, fch_gelu, p.fcprojw[l], p.fcprojb[l], residual2)
        residual = residual3
    lnf = a.lnf.reshape(N, C)
    norm_forward(config, lnf, a.lnf_mean.reshape(N), a.lnf_rstd.reshape(N), residual, p.lnfw, p.lnfb)
    probs = a.probs.reshape(N, V)
    head_forward(config, ws, probs, a.logits.reshape(-1, V), lnf, p)  # logits, into the probs buffer
    crossentropy_forward(a.losses.reshape(N), a.expected.reshape(N), a.crystal.reshape(N), probs,
                         inputs.reshape(N), targets.reshape(N), cost, crystalline_weight)
    return a


def backward(config: ModelConfig, p: ParameterViews, g: ParameterViews, ws: Workspace,
             inputs: np.ndarray, targets: np.ndarray, cost: np.ndarray,
             crystalline_weight: float, dloss: float) -> None:
    """Accumulate into the gradient views g the gradient of dloss * sum of the per-position
    objective, using the activations `forward` left in the workspace (probs are consumed)."""
    B, T = inputs.shape
    C, L, NH, V = config.d_model, config.n_layer, config.n_head, config.vocab_size
    H = config.mlp_ratio * C
    N = B * T
    a = ws.views(B, T)
    dres, dln, datty = ws.dres[:N], ws.dln[:N], ws.datty[:N]
    dfch_gelu, dfch = ws.dfch_gelu[:N], ws.dfch[:N]
    # a contiguous prefix, so a batch shorter than the workspace still has (B, T, 3C) rows
    dqkv = ws.dqkv.reshape(-1)[: N * 3 * C].reshape(B, T, 3 * C)

    probs = a.probs.reshape(N, V)
    crossentropy_backward(probs, dloss, inputs.reshape(N), targets.reshape(N), cost, crystalline_weight)
    lnf = a.lnf.reshape(N, C)
    head_backward(config, ws, dln, g, probs, a.logits.reshape(-1, V), lnf, p)
    last = a.residual3[L - 1].reshape(N, C)
    dres[:] = 0.0
    norm_backward(config, dres, g.lnfw, g.lnfb, dln, last, p.lnfw, a.lnf_mean.reshape(N), a.lnf_rstd.reshape(N))
    for l in reversed(range(L)):
        residual = a.encoded.reshape(N, C) if l == 0 else a.residual3[l - 1].reshape(N, C)
        ln1, qkv, atty = a.ln1[l].reshape(N, C), a.qkv[l], a.atty[l].reshape(N, C)
        qkv_att = a.qkvr[l] if config.qk_norm else qkv
        residual2, ln2 = a.residual2[l].reshape(N, C), a.ln2[l].reshape(N, C)
        fch, fch_gelu = a.fch[l].reshape(N, H), mlp_out(ws, a, l, N, H)
        if ws.recompute_activation:
            activation_recompute(config, fch_gelu, fch)  # into dfch, which activation_backward then overwrites

        # residual3 = residual2 + fcproj: dres is the gradient of both addends, in place
        matmul_backward(dfch_gelu, g.fcprojw[l], g.fcprojb[l], ws.weight_scratch((C, H)), dres, fch_gelu, p.fcprojw[l])
        activation_backward(config, dfch, fch, dfch_gelu)
        matmul_backward(dln, g.fcw[l], g.fcb[l], ws.weight_scratch((H, C)), dfch, ln2, p.fcw[l])
        norm_backward(config, dres, g.ln2w[l], g.ln2b[l], dln, residual2, p.ln2w[l],
                      a.ln2_mean[l].reshape(N), a.ln2_rstd[l].reshape(N))
        # residual2 = residual + attproj: again dres serves both addends
        matmul_backward(datty, g.attprojw[l], g.attprojb[l], ws.weight_scratch((C, C)), dres, atty, p.attprojw[l])
        attention_backward(dqkv, datty.reshape(B, T, C), qkv_att, a.att_lse[l], NH)
        qk_backward(config, ws, dqkv, qkv, a.qk_rstd[l])
        matmul_backward(dln, g.qkvw[l], g.qkvb[l], ws.weight_scratch((3 * C, C)), dqkv.reshape(N, 3 * C), ln1, p.qkvw[l])
        norm_backward(config, dres, g.ln1w[l], g.ln1b[l], dln, residual, p.ln1w[l],
                      a.ln1_mean[l].reshape(N), a.ln1_rstd[l].reshape(N))
    embedding_backward(config, g, dres.reshape(B, T, C), inputs)


# ---------------------------------------------------------------------------------------------
# single-threaded convenience for tests and tools


def loss_and_grad(config: ModelConfig, params: np.ndarray, inputs: np.ndarray, targets: np.ndarray,
                  crystalline_weight: float = 0.0) -> tuple[float, np.ndarray]:
    """Mean objective over all positions and its gradient as a flat array in the parameter
    layout, on one thread (the trainer's parallel step must agree with this)."""
    inputs = np.ascontiguousarray(inputs, dtype=np.int32)
    targets = np.ascontiguousarray(targets, dtype=np.int32)
    table = parameter_table(config)
    p = table.views(params)
    grads = table.allocate()
    ws = Workspace(config, *inputs.shape)
    cost = crystalline_cost_table(config.vocab_size) if crystalline_weight > 0 else np.zeros((1, 1), np.float32)
    a = forward(config, p, ws, inputs, targets, cost, crystalline_weight)
    n = inputs.size
    loss = (a.losses.astype(np.float64).sum() + crystalline_weight * a.expected.astype(np.float64).sum()) / n
    backward(config, p, table.views(grads), ws, inputs, targets, cost, crystalline_weight, 1.0 / n)
    return float(loss), grads
