"""The model's forward and backward passes over all layers, for one worker's micro-batch.

Two straight-line functions that read like the architecture diagram: `forward` makes one kernel
call per line, `backward` the same calls in reverse. They work on named views (`ParameterViews`,
`ActivationViews`) and a `Workspace` of per-worker buffers. No threads here: `parallel.py` runs
one `Workspace` per worker. Knows nothing of files or storage.
"""

from __future__ import annotations

import numpy as np

from .config import ModelConfig
from .kernels.attention import attention_backward, attention_forward
from .kernels.crossentropy import crossentropy_backward, crossentropy_forward, crystalline_cost_table
from .kernels.encoder import encoder_backward, encoder_forward
from .kernels.gelu import gelu_backward, gelu_forward
from .kernels.layernorm import layernorm_backward, layernorm_forward
from .kernels.matmul import matmul_backward, matmul_forward
from .kernels.residual import residual_forward
from .layout import ActivationViews, ParameterViews, Table, activation_table, parameter_table


class Workspace:
    """One worker's buffers, made once: activations for up to (B, T) and the activation gradients
    the backward needs for one layer at a time (they are reused layer after layer)."""

    def __init__(self, config: ModelConfig, B: int, T: int):
        self.config = config
        self.B, self.T = B, T
        C, V = config.d_model, config.vocab_size
        H = config.mlp_ratio * C
        self.activations = activation_table(config, B, T).allocate()
        self._views: dict[tuple[int, int], ActivationViews] = {}
        N = B * T
        self.dres = np.zeros((N, C), dtype=np.float32)  # gradient along the residual stream
        self.dln = np.zeros((N, C), dtype=np.float32)  # gradient at a LayerNorm's output
        self.datty = np.zeros((N, C), dtype=np.float32)
        self.dqkv = np.zeros((B, T, 3 * C), dtype=np.float32)
        self.dfch_gelu = np.zeros((N, H), dtype=np.float32)
        self.dfch = np.zeros((N, H), dtype=np.float32)
        self.scratch = np.zeros(max(3 * C * C, H * C, V * C), dtype=np.float32)
        self.zero_bias = np.zeros(V, dtype=np.float32)  # the tied head has no bias
        self.dzero_bias = np.zeros(V, dtype=np.float32)

    def views(self, B: int, T: int) -> ActivationViews:
        """Activation views for a (B, T) batch within the (self.B, self.T) capacity."""
        if B > self.B or T > self.T:
            raise ValueError(f"batch ({B}, {T}) exceeds the workspace ({self.B}, {self.T})")
        key = (B, T)
        if key not in self._views:
            table = activation_table(self.config, B, T)
            self._views[key] = table.views(self.activations[: table.size])
        return self._views[key]

    @property
    def nbytes(self) -> int:
        arrays = (self.activations, self.dres, self.dln, self.datty, self.dqkv, self.dfch_gelu,
                  self.dfch, self.scratch, self.zero_bias, self.dzero_bias)
        return sum(a.nbytes for a in arrays)

    def weight_scratch(self, shape: tuple[int, int]) -> np.ndarray:
        return self.scratch[: shape[0] * shape[1]].reshape(shape)


def forward(config: ModelConfig, p: ParameterViews, ws: Workspace, inputs: np.ndarray,
            targets: np.ndarray, cost: np.ndarray, crystalline_weight: float) -> ActivationViews:
    """Run the model on inputs (B, T) and score targets (B, T); fills the activations and the
    per-position losses, expected crystalline costs and crystalline metric."""
    B, T = inputs.shape
    C, L, NH, V = config.d_model, config.n_layer, config.n_head, config.vocab_size
    H = config.mlp_ratio * C
    N = B * T
    a = ws.views(B, T)
    encoder_forward(a.encoded, inputs, p.wte, p.wpe)
    residual = a.encoded.reshape(N, C)
    for l in range(L):
        ln1, qkv, atty = a.ln1[l].reshape(N, C), a.qkv[l], a.atty[l]
        attproj, residual2 = a.attproj[l].reshape(N, C), a.residual2[l].reshape(N, C)
        ln2, fch, fch_gelu = a.ln2[l].reshape(N, C), a.fch[l].reshape(N, H), a.fch_gelu[l].reshape(N, H)
        fcproj, residual3 = a.fcproj[l].reshape(N, C), a.residual3[l].reshape(N, C)

        layernorm_forward(ln1, a.ln1_mean[l].reshape(N), a.ln1_rstd[l].reshape(N), residual, p.ln1w[l], p.ln1b[l])
        matmul_forward(qkv.reshape(N, 3 * C), ln1, p.qkvw[l], p.qkvb[l])
        attention_forward(atty, a.att[l], qkv, NH)
        matmul_forward(attproj, atty.reshape(N, C), p.attprojw[l], p.attprojb[l])
        residual_forward(residual2, residual, attproj)
        layernorm_forward(ln2, a.ln2_mean[l].reshape(N), a.ln2_rstd[l].reshape(N), residual2, p.ln2w[l], p.ln2b[l])
        matmul_forward(fch, ln2, p.fcw[l], p.fcb[l])
        gelu_forward(fch_gelu, fch)
        matmul_forward(fcproj, fch_gelu, p.fcprojw[l], p.fcprojb[l])
        residual_forward(residual3, residual2, fcproj)
        residual = residual3
    lnf = a.lnf.reshape(N, C)
    layernorm_forward(lnf, a.lnf_mean.reshape(N), a.lnf_rstd.reshape(N), residual, p.lnfw, p.lnfb)
    probs = a.probs.reshape(N, V)
    matmul_forward(probs, lnf, p.wte, ws.zero_bias)  # logits, into the probs buffer
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
    matmul_backward(dln, g.wte, ws.dzero_bias, ws.weight_scratch((V, C)), probs, lnf, p.wte)
    last = a.residual3[L - 1].reshape(N, C)
    dres[:] = 0.0
    layernorm_backward(dres, g.lnfw, g.lnfb, dln, last, p.lnfw, a.lnf_mean.reshape(N), a.lnf_rstd.reshape(N))
    for l in reversed(range(L)):
        residual = a.encoded.reshape(N, C) if l == 0 else a.residual3[l - 1].reshape(N, C)
        ln1, qkv, atty = a.ln1[l].reshape(N, C), a.qkv[l], a.atty[l].reshape(N, C)
        residual2, ln2 = a.residual2[l].reshape(N, C), a.ln2[l].reshape(N, C)
        fch, fch_gelu = a.fch[l].reshape(N, H), a.fch_gelu[l].reshape(N, H)

        # residual3 = residual2 + fcproj: dres is the gradient of both addends, in place
        matmul_backward(dfch_gelu, g.fcprojw[l], g.fcprojb[l], ws.weight_scratch((C, H)), dres, fch_gelu, p.fcprojw[l])
        gelu_backward(dfch, fch, dfch_gelu)
        matmul_backward(dln, g.fcw[l], g.fcb[l], ws.weight_scratch((H, C)), dfch, ln2, p.fcw[l])
        layernorm_backward(dres, g.ln2w[l], g.ln2b[l], dln, residual2, p.ln2w[l],
                           a.ln2_mean[l].reshape(N), a.ln2_rstd[l].reshape(N))
        # residual2 = residual + attproj: again dres serves both addends
        matmul_backward(datty, g.attprojw[l], g.attprojb[l], ws.weight_scratch((C, C)), dres, atty, p.attprojw[l])
        attention_backward(dqkv, datty.reshape(B, T, C), qkv, a.att[l], NH)
        matmul_backward(dln, g.qkvw[l], g.qkvb[l], ws.weight_scratch((3 * C, C)), dqkv.reshape(N, 3 * C), ln1, p.qkvw[l])
        layernorm_backward(dres, g.ln1w[l], g.ln1b[l], dln, residual, p.ln1w[l],
                           a.ln1_mean[l].reshape(N), a.ln1_rstd[l].reshape(N))
    encoder_backward(g.wte, g.wpe, dres.reshape(B, T, C), inputs)


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
