"""Tables of named tensors laid out in one flat float32 buffer.

The parameter table is the single source of truth for where each tensor lives: parameters,
gradients, AdamW moments, every worker's gradient buffer and the checkpoint file all use it, so
clipping, the reduction, AdamW and checkpoints are loops over one array with no per-tensor code.
Activations have their own table of the same kind, sized for one worker's micro-batch.
Knows nothing of threads, files or storage.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .config import ModelConfig


class Segment(NamedTuple):
    """A contiguous slice [offset, offset + size) of a flat buffer."""

    offset: int
    size: int

    @property
    def stop(self) -> int:
        return self.offset + self.size


class Table:
    """An ordered list of (name, shape) with offsets into one flat buffer."""

    def __init__(self, entries: list[tuple[str, tuple[int, ...]]], views_type: type):
        self.entries = entries
        self.views_type = views_type
        self.offsets: dict[str, Segment] = {}
        offset = 0
        for name, shape in entries:
            size = math.prod(shape)
            self.offsets[name] = Segment(offset, size)
            offset += size
        self.size = offset
        self.shapes = dict(entries)

    def allocate(self, dtype=np.float32) -> np.ndarray:
        """A zeroed flat buffer with room for every tensor in the table."""
        return np.zeros(self.size, dtype=dtype)

    def views(self, buffer: np.ndarray):
        """Named reshaped views into `buffer` (no copy); writes through them land in `buffer`."""
        if buffer.ndim != 1 or buffer.size != self.size:
            raise ValueError(f"buffer has {buffer.size} elements, the table needs {self.size}")
        return self.views_type(
            *(buffer[seg.offset : seg.stop].reshape(self.shapes[name]) for name, seg in self.offsets.items())
        )


# ---------------------------------------------------------------------------------------------
# parameters


# A tensor an architecture option turns off keeps its entry with a zero-sized leading or last
# axis (wpe under rope, the norm shifts under rmsnorm, lm_head when tied): the views keep their
# names for every architecture, and the default layout is GPT-2's to the byte.


class ParameterViews(NamedTuple):
    wte: np.ndarray  # (V, C) token embedding, also the output head when tie_head
    wpe: np.ndarray  # (maxT, C) learned position embedding; (0, C) when positions = "rope"
    ln1w: np.ndarray  # (L, C)
    ln1b: np.ndarray  # (L, C); (L, 0) under rmsnorm, which has no shift
    qkvw: np.ndarray  # (L, 3*C, C) fused query, key, value projection
    qkvb: np.ndarray  # (L, 3*C)
    attprojw: np.ndarray  # (L, C, C)
    attprojb: np.ndarray  # (L, C)
    ln2w: np.ndarray  # (L, C)
    ln2b: np.ndarray  # (L, C); (L, 0) under rmsnorm
    fcw: np.ndarray  # (L, H, C) with H = mlp_ratio * C
    fcb: np.ndarray  # (L, H)
    fcprojw: np.ndarray  # (L, C, H)
    fcprojb: np.ndarray  # (L, C)
    lnfw: np.ndarray  # (C,)
    lnfb: np.ndarray  # (C,); (0,) under rmsnorm
    lm_head: np.ndarray  # (V, C) the untied output head; (0, C) when tie_head


# Matrices take weight decay; biases, LayerNorm gains and shifts do not (as in GPT-2 / nanoGPT).
DECAYED = ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw", "lm_head")
# The residual branches' output projections: scaled by 1/sqrt(2L) at init, or zero.
PROJECTIONS = ("attprojw", "fcprojw")
# The blocks' tensors, each (L, ...) with block l at index l of its first axis. Every other
# tensor lies outside the stack and is the same shape whatever L is (engine/grow.py relies on it).
BLOCKS = ("ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb", "ln2w", "ln2b", "fcw", "fcb",
          "fcprojw", "fcprojb")


def parameter_table(config: ModelConfig) -> Table:
    V, maxT, C, L = config.vocab_size, config.context_length, config.d_model, config.n_layer
    H = config.mlp_ratio * C
    maxT_wpe = maxT if config.learned_positions else 0
    Cb = C if config.norm == "layernorm" else 0  # the norms' shift
    V_head = 0 if config.tie_head else V
    entries = [
        ("wte", (V, C)),
        ("wpe", (maxT_wpe, C)),
        ("ln1w", (L, C)),
        ("ln1b", (L, Cb)),
        ("qkvw", (L, 3 * C, C)),
        ("qkvb", (L, 3 * C)),
        ("attprojw", (L, C, C)),
        ("attprojb", (L, C)),
        ("ln2w", (L, C)),
        ("ln2b", (L, Cb)),
        ("fcw", (L, H, C)),
        ("fcb", (L, H)),
        ("fcprojw", (L, C, H)),
        ("fcprojb", (L, C)),
        ("lnfw", (C,)),
        ("lnfb", (Cb,)),
        ("lm_head", (V_head, C)),
    ]
    return Table(entries, ParameterViews)


def decay_mask(table: Table) -> np.ndarray:
    """A float32 array over the parameter buffer: 1 where weight decay applies, else 0."""
    mask = np.zeros(table.size, dtype=np.float32)
    for name in DECAYED:
        seg = table.offsets[name]
        mask[seg.offset : seg.stop] = 1.0
    return mask


def init_parameters(config: ModelConfig, table: Table | None = None) -> np.ndarray:
    """GPT-2 initialisation: N(0, 0.02) matrices, residual projections scaled by 1/sqrt(2L)
    (or zero with zero_init_proj), zero biases, unit norm gains. Deterministic in config.seed;
    the projections are drawn even when zeroed, so every other tensor is the same either way."""
    table = table or parameter_table(config)
    params = table.allocate()
    p = table.views(params)
    rng = np.random.default_rng(config.seed)
    std = 0.02
    proj_std = std / math.sqrt(2 * config.n_layer)
    for name in DECAYED:
        view = getattr(p, name)
        scale = proj_std if name in PROJECTIONS else std
        view[...] = rng.standard_normal(view.shape, dtype=np.float32) * np.float32(scale)
        if config.zero_init_proj and name in PROJECTIONS:
            view[...] = 0.0
    p.ln1w[...] = 1.0
    p.ln2w[...] = 1.0
    p.lnfw[...] = 1.0
    return params


def count_parameters(config: ModelConfig) -> int:
    return parameter_table(config).size


# ---------------------------------------------------------------------------------------------
# activations (one worker, micro-batch of B sequences of length T)


class ActivationViews(NamedTuple):
    encoded: np.ndarray  # (B, T, C) token + position embedding
    ln1: np.ndarray  # (L, B, T, C)
    ln1_mean: np.ndarray  # (L, B, T)
    ln1_rstd: np.ndarray  # (L, B, T)
    qkv: np.ndarray  # (L, B, T, 3*C)
    qkvr: np.ndarray  # (L, B, T, 3*C) q, k after qk_norm (and rope), v copied; (L, 0, T, 3*C) without
    #   qk_norm: rope alone turns q and k in place in qkv, since its backward needs nothing cached
    qk_rstd: np.ndarray  # (L, B, T, 2*NH) 1/rms of each head's q then k; (L, 0, T, 2*NH) without qk_norm
    atty: np.ndarray  # (L, B, T, C) attention output before the projection
    att_lse: np.ndarray  # (L, B, NH, T) log of each attention row's softmax normaliser
    residual2: np.ndarray  # (L, B, T, C) residual + the attention branch (its output is not kept)
    ln2: np.ndarray  # (L, B, T, C)
    ln2_mean: np.ndarray  # (L, B, T)
    ln2_rstd: np.ndarray  # (L, B, T)
    fch: np.ndarray  # (L, B, T, H) MLP hidden before the activation
    fch_gelu: np.ndarray  # (L, B, T, H) after the activation (GELU or ReLU^2); (L, 0, T, H) when recomputed
    residual3: np.ndarray  # (L, B, T, C) block output: residual2 + the MLP branch
    lnf: np.ndarray  # (B, T, C)
    lnf_mean: np.ndarray  # (B, T)
    lnf_rstd: np.ndarray  # (B, T)
    logits: np.ndarray  # (B, T, V) before the soft cap; (0, T, V) without logit_softcap
    probs: np.ndarray  # (B, T, V) softmax of the logits; backward turns it into dlogits in place
    losses: np.ndarray  # (B, T) per-position cross-entropy
    expected: np.ndarray  # (B, T) per-position expected crystalline cost (the differentiable term)
    crystal: np.ndarray  # (B, T) per-position crystalline metric -log s(x_t, y_t)


def activation_table(config: ModelConfig, B: int, T: int, recompute_activation: bool = False) -> Table:
    """One worker's activations for a (B, T) micro-batch. With recompute_activation the MLP's
    activation output is not kept (fch_gelu has no rows): the model writes it into a one-layer
    buffer of its workspace and computes it again in the backward."""
    V, C, L, NH = config.vocab_size, config.d_model, config.n_layer, config.n_head
    H = config.mlp_ratio * C
    Bn = B if config.qk_norm else 0  # rows of the optional buffers, 0 when off
    Bc = B if config.logit_softcap > 0 else 0
    Bg = 0 if recompute_activation else B
    entries = [
        ("encoded", (B, T, C)),
        ("ln1", (L, B, T, C)),
        ("ln1_mean", (L, B, T)),
        ("ln1_rstd", (L, B, T)),
        ("qkv", (L, B, T, 3 * C)),
        ("qkvr", (L, Bn, T, 3 * C)),
        ("qk_rstd", (L, Bn, T, 2 * NH)),
        ("atty", (L, B, T, C)),
        ("att_lse", (L, B, NH, T)),
        ("residual2", (L, B, T, C)),
        ("ln2", (L, B, T, C)),
        ("ln2_mean", (L, B, T)),
        ("ln2_rstd", (L, B, T)),
        ("fch", (L, B, T, H)),
        ("fch_gelu", (L, Bg, T, H)),
        ("residual3", (L, B, T, C)),
        ("lnf", (B, T, C)),
        ("lnf_mean", (B, T)),
        ("lnf_rstd", (B, T)),
        ("logits", (Bc, T, V)),
        ("probs", (B, T, V)),
        ("losses", (B, T)),
        ("expected", (B, T)),
        ("crystal", (B, T)),
    ]
    return Table(entries, ActivationViews)
