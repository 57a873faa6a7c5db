"""Slow, obvious numpy reference of the model's forward pass and its cross-entropy loss.

This is the yardstick the tests hold the numba kernels and the KV-cache sampler against, as
llm.c keeps `matmul_forward_naive`. It is not for training or serving: it recomputes every
position from scratch, allocates freely and computes in float64 by default.
It relies only on numpy, on maths.py for the layers and constants, and on
`layout.parameter_table` for where each tensor lives.

The model, GPT-2 exactly with the default ModelConfig:
    x = wte[tokens] + wpe[positions]
    per layer l:
        x = x + attproj(causal_attention(qkv(LN1(x))))
        x = x + fcproj(gelu(fc(LN2(x))))
    logits = LN_f(x) @ wte.T            (the token embedding is the tied output head)
LayerNorm: eps 1e-5, biased variance (PyTorch's nn.LayerNorm).
GELU: the tanh approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

The architecture options change it at these points:
    positions "rope": no wpe; "rope" and "both" turn each head's q and k by position
        (half-split pairs (i, i + hs/2), angle t * 10000^(-2i/hs)), after QK-norm if on
    norm "rmsnorm": x / sqrt(mean(x^2) + 1e-5) * weight, no shift, for every norm
    qk_norm: each head's q and k divided by sqrt(mean(.^2) + 1e-5), no gain
    activation "relu2": max(x, 0)^2 in place of GELU
    tie_head false: logits = LN_f(x) @ lm_head.T
    logit_softcap c > 0: logits = c * tanh(logits / c)
(zero_init_proj changes only the initial values, layout.init_parameters.)
"""

from __future__ import annotations

import math

import numpy as np

from .config import ModelConfig
from .errors import ShapeMismatch
from .layout import parameter_table
from .maths import gelu, layernorm, relu2, rmsnorm, rope_angles, rotate, softcap



# ---------------------------------------------------------------------------------------------
# attention


def causal_attention(qkv: np.ndarray, n_head: int, qk_norm: bool = False, rope: bool = False) -> np.ndarray:
    """Causal multi-head attention: qkv (B, T, 3*C) packed [q | k | v] -> y (B, T, C); with
    qk_norm each head's q and k are RMS-normalised, then with rope turned by position."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    # heads are contiguous hs-wide slices of each of q, k and v
    q = qkv[..., 0 * C : 1 * C].reshape(B, T, n_head, hs).transpose(0, 2, 1, 3)  # (B, NH, T, hs)
    k = qkv[..., 1 * C : 2 * C].reshape(B, T, n_head, hs).transpose(0, 2, 1, 3)  # (B, NH, T, hs)
    v = qkv[..., 2 * C : 3 * C].reshape(B, T, n_head, hs).transpose(0, 2, 1, 3)  # (B, NH, T, hs)
    if qk_norm:
        q, k = rmsnorm(q), rmsnorm(k)
    if rope:
        cos, sin = rope_angles(np.arange(T), hs)  # (T, hs/2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs)  # (B, NH, T, T)
    future = np.triu(np.ones((T, T), dtype=bool), k=1)  # position t sees only 0..t
    scores = np.where(future, -np.inf, scores)
    scores = scores - scores.max(axis=-1, keepdims=True)
    att = np.exp(scores)
    att = att / att.sum(axis=-1, keepdims=True)  # (B, NH, T, T)
    y = att @ v  # (B, NH, T, hs)
    return y.transpose(0, 2, 1, 3).reshape(B, T, C)  # (B, T, C), heads side by side again


# ---------------------------------------------------------------------------------------------
# model


def reference_forward(
    config: ModelConfig, params: np.ndarray, tokens: np.ndarray, dtype=np.float64
) -> np.ndarray:
    """Logits (B, T, V) for token ids (B, T), computed in `dtype`.

    A 1-D `tokens` is taken as one sequence (B = 1). Raises ShapeMismatch when `params` does not
    fit the config, ValueError when T exceeds context_length or an id is outside [0, V).
    """
    tokens = np.atleast_2d(np.asarray(tokens))
    B, T = tokens.shape
    V, NH, L = config.vocab_size, config.n_head, config.n_layer
    if T > config.context_length:
        raise ValueError(f"sequence length {T} exceeds context_length {config.context_length}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= V):
        bad = int(tokens[(tokens < 0) | (tokens >= V)][0])
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {V})")
    table = parameter_table(config)
    if params.ndim != 1 or params.size != table.size:
        raise ShapeMismatch(f"params has shape {params.shape}, the config needs ({table.size},)")
    p = table.views(params.astype(dtype))

    def norm(x, weight, bias):
        return rmsnorm(x, weight) if config.norm == "rmsnorm" else layernorm(x, weight, bias)

    act = relu2 if config.activation == "relu2" else gelu

    x = p.wte[tokens]  # (B, T, C)
    if config.learned_positions:
        x = x + p.wpe[np.arange(T)]
    for l in range(L):
        h = norm(x, p.ln1w[l], p.ln1b[l])  # (B, T, C)
        qkv = h @ p.qkvw[l].T + p.qkvb[l]  # (B, T, 3*C)
        y = causal_attention(qkv, NH, config.qk_norm, config.rope)  # (B, T, C)
        x = x + y @ p.attprojw[l].T + p.attprojb[l]  # (B, T, C) residual
        h2 = norm(x, p.ln2w[l], p.ln2b[l])  # (B, T, C)
        fch = act(h2 @ p.fcw[l].T + p.fcb[l])  # (B, T, H)
        x = x + fch @ p.fcprojw[l].T + p.fcprojb[l]  # (B, T, C) residual
    xf = norm(x, p.lnfw, p.lnfb)  # (B, T, C)
    logits = xf @ (p.wte if config.tie_head else p.lm_head).T  # (B, T, V)
    return softcap(logits, config.logit_softcap)


def reference_loss(
    config: ModelConfig,
    params: np.ndarray,
    inputs: np.ndarray,
    targets: np.ndarray,
    dtype=np.float64,
) -> float:
    """Mean cross-entropy of `targets` (B, T) under the logits of `inputs` (B, T)."""
    inputs = np.atleast_2d(np.asarray(inputs))
    targets = np.atleast_2d(np.asarray(targets))
    if inputs.shape != targets.shape:
        raise ValueError(f"inputs {inputs.shape} and targets {targets.shape} differ in shape")
    V = config.vocab_size
    if targets.size and (targets.min() < 0 or targets.max() >= V):
        bad = int(targets[(targets < 0) | (targets >= V)][0])
        raise ValueError(f"target id {bad} is outside the vocabulary [0, {V})")
    logits = reference_forward(config, params, inputs, dtype)  # (B, T, V)
    # log softmax, shifted by the row max so exp never overflows
    shifted = logits - logits.max(axis=-1, keepdims=True)
    logprobs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))  # (B, T, V)
    picked = np.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]  # (B, T)
    return float(-picked.mean())
