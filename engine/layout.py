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


class ParameterViews(NamedTuple):
    wte: np.ndarray  # (V, C) token embedding, also the tied output head
    wpe: np.ndarray  # (maxT, C) learned position embedding
    ln1w: np.ndarray  # (L, C)
    ln1b: np.ndarray  # (L, C)
    qkvw: np.ndarray  # (L, 3*C, C) fused query, key, value projection
    qkvb: np.ndarray  # (L, 3*C)
    attprojw: np.ndarray  # (L, C, C)
    attprojb: np.ndarray  # (L, C)
    ln2w: np.ndarray  # (L, C)
    ln2b: np.ndarray  # (L, C)
    fcw: np.ndarray  # (L, H, C) with H = mlp_ratio * C
    fcb: np.ndarray  # (L, H)
    fcprojw: np.ndarray  # (L, C, H)
    fcprojb: np.ndarray  # (L, C)
    lnfw: np.ndarray  # (C,)
    lnfb: np.ndarray  # (C,)


# Matrices take weight decay; biases, LayerNorm gains and shifts do not (as in GPT-2 / nanoGPT).
DECAYED = ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw")


def parameter_table(config: ModelConfig) -> Table:
    V, maxT, C, L = config.vocab_size, config.context_length, config.d_model, config.n_layer
    H = config.mlp_ratio * C
    entries = [
        ("wte", (V, C)),
        ("wpe", (maxT, C)),
        ("ln1w", (L, C)),
        ("ln1b", (L, C)),
        ("qkvw", (L, 3 * C, C)),
        ("qkvb", (L, 3 * C)),
        ("attprojw", (L, C, C)),
        ("attprojb", (L, C)),
        ("ln2w", (L, C)),
        ("ln2b", (L, C)),
        ("fcw", (L, H, C)),
        ("fcb", (L, H)),
        ("fcprojw", (L, C, H)),
        ("fcprojb", (L, C)),
        ("lnfw", (C,)),
        ("lnfb", (C,)),
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
    """GPT-2 initialisation: N(0, 0.02) matrices, residual projections scaled by 1/sqrt(2L),
    zero biases, unit LayerNorm gains. Deterministic in config.seed."""
    table = table or parameter_table(config)
    params = table.allocate()
    p = table.views(params)
    rng = np.random.default_rng(config.seed)
    std = 0.02
    proj_std = std / math.sqrt(2 * config.n_layer)
    for name in DECAYED:
        view = getattr(p, name)
        scale = proj_std if name in ("attprojw", "fcprojw") else std
        view[...] = rng.standard_normal(view.shape, dtype=np.float32) * np.float32(scale)
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
    atty: np.ndarray  # (L, B, T, C) attention output before the projection
    att: np.ndarray  # (L, B, NH, T, T) softmax probabilities (causal; upper triangle unused)
    attproj: np.ndarray  # (L, B, T, C)
    residual2: np.ndarray  # (L, B, T, C)
    ln2: np.ndarray  # (L, B, T, C)
    ln2_mean: np.ndarray  # (L, B, T)
    ln2_rstd: np.ndarray  # (L, B, T)
    fch: np.ndarray  # (L, B, T, H) MLP hidden before GELU
    fch_gelu: np.ndarray  # (L, B, T, H)
    fcproj: np.ndarray  # (L, B, T, C)
    residual3: np.ndarray  # (L, B, T, C) block output
    lnf: np.ndarray  # (B, T, C)
    lnf_mean: np.ndarray  # (B, T)
    lnf_rstd: np.ndarray  # (B, T)
    probs: np.ndarray  # (B, T, V) softmax of the logits; backward turns it into dlogits in place
    losses: np.ndarray  # (B, T) per-position cross-entropy
    expected: np.ndarray  # (B, T) per-position expected crystalline cost (the differentiable term)
    crystal: np.ndarray  # (B, T) per-position crystalline metric -log s(x_t, y_t)


def activation_table(config: ModelConfig, B: int, T: int) -> Table:
    V, C, L, NH = config.vocab_size, config.d_model, config.n_layer, config.n_head
    H = config.mlp_ratio * C
    entries = [
        ("encoded", (B, T, C)),
        ("ln1", (L, B, T, C)),
        ("ln1_mean", (L, B, T)),
        ("ln1_rstd", (L, B, T)),
        ("qkv", (L, B, T, 3 * C)),
        ("atty", (L, B, T, C)),
        ("att", (L, B, NH, T, T)),
        ("attproj", (L, B, T, C)),
        ("residual2", (L, B, T, C)),
        ("ln2", (L, B, T, C)),
        ("ln2_mean", (L, B, T)),
        ("ln2_rstd", (L, B, T)),
        ("fch", (L, B, T, H)),
        ("fch_gelu", (L, B, T, H)),
        ("fcproj", (L, B, T, C)),
        ("residual3", (L, B, T, C)),
        ("lnf", (B, T, C)),
        ("lnf_mean", (B, T)),
        ("lnf_rstd", (B, T)),
        ("probs", (B, T, V)),
        ("losses", (B, T)),
        ("expected", (B, T)),
        ("crystal", (B, T)),
    ]
    return Table(entries, ActivationViews)
