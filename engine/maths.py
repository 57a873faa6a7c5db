"""The model's constants and its layers in plain numpy: the one definition of the maths.

The numba kernels (kernels/) are the fast path of the same functions and take their constants
from here; reference.py builds the whole-sequence forward pass (the yardstick of the kernel
tests) from these layers, sample.py the one-position-at-a-time forward of generation, and the
PyTorch reference (crawler/bench/torch_reference.py) its constants. Every layer works over the
last axis of any leading shape and keeps the input's dtype (float32 in generation, float64 in
the reference).
"""

from __future__ import annotations

import math

import numpy as np

NORM_EPS = 1e-5  # LayerNorm (PyTorch's and GPT-2's default), RMSNorm and QK-norm
GELU_SCALE = math.sqrt(2.0 / math.pi)  # the tanh approximation's sqrt(2/pi)
GELU_CUBIC = 0.044715  # ... and its cubic coefficient
ROPE_BASE = 10000.0  # rotary angles t * base^(-2i/hs)


# means as np.add.reduce / C: ndarray.mean's Python wrapper costs more than the sum itself on the
# one-position vectors of generation


def layernorm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """LayerNorm over the last axis: x is (..., C); weight and bias are (C,)."""
    C = x.shape[-1]
    centred = x - np.add.reduce(x, axis=-1, keepdims=True) / C  # (..., C)
    var = np.add.reduce(centred * centred, axis=-1, keepdims=True) / C  # (..., 1) biased, as in GPT-2
    return centred / np.sqrt(var + NORM_EPS) * weight + bias


def rmsnorm(x: np.ndarray, weight: np.ndarray | float = 1.0) -> np.ndarray:
    """RMSNorm over the last axis: x is (..., C); weight is (C,) (QK-norm passes no gain)."""
    ms = np.add.reduce(x * x, axis=-1, keepdims=True) / x.shape[-1]  # (..., 1)
    return x / np.sqrt(ms + NORM_EPS) * weight


def rope_angles(positions: np.ndarray, hs: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (T, hs/2), float64, of the angles positions[t] * ROPE_BASE^(-2i/hs)."""
    inv_freq = ROPE_BASE ** (-np.arange(0, hs, 2, dtype=np.float64) / hs)  # (hs/2,)
    angles = np.outer(np.asarray(positions, dtype=np.float64), inv_freq)  # (T, hs/2)
    return np.cos(angles), np.sin(angles)


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x (..., hs) turned by angles whose cos and sin (..., hs/2) broadcast against it: the pairs
    (i, i + hs/2) of the half-split layout (GPT-NeoX, Llama)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (Hendrycks and Gimpel 2016, as in GPT-2)."""
    return 0.5 * x * (1.0 + np.tanh(GELU_SCALE * (x + GELU_CUBIC * x * x * x)))


def relu2(x: np.ndarray) -> np.ndarray:
    """ReLU squared, max(x, 0)^2 (So et al. 2021, "Primer")."""
    r = np.maximum(x, 0.0)
    return r * r


def softcap(logits: np.ndarray, cap: float) -> np.ndarray:
    """cap * tanh(logits / cap); cap 0 leaves the logits alone."""
    return cap * np.tanh(logits / cap) if cap > 0 else logits
