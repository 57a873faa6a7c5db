"""Text generation with a key/value cache: each new token costs one position, not a whole window.

`Generator` runs the model's forward pass (the layers of maths.py, as reference.py does, every
architecture option included) one position at a time, storing each layer's keys and values so later
positions attend to them without recomputing; with rotary positions the keys are stored turned.
`sample_next` turns logits into a token id (temperature, top-k, top-p); `sample` joins the two.
Their settings' bounds, and the defaults callers offer, are sampling.py's.
Not a training path: no activations are kept for backward, and the batch size is one.
Relies on numpy only (float32 matrix-vector products; BLAS does the heavy lifting).

Sliding window: the learned position embedding has context_length rows (and rotary positions
are trained only up to it), so the cache holds at most that many positions. When one more token
would not fit, the generator keeps the last context_length // 2 tokens of its window, rebuilds
the cache from them at positions 0 .. context_length//2 - 1, and appends the new token after
them. The logits then equal the reference forward pass over that kept window. Rebuilding costs
context_length // 2 positions once every context_length // 2 tokens, so about one extra position
per token on average.
"""

from __future__ import annotations

import math

import numpy as np

from .config import ModelConfig
from .errors import ShapeMismatch
from .kernels.rope import rope_tables
from .layout import parameter_table
from .maths import gelu, layernorm, relu2, rmsnorm, rotate, softcap
from .sampling import SampleConfig, check_setting

_PLAIN = SampleConfig()  # the settings' defaults: the model's own distribution, no filter


class KVCache:
    """Per-layer keys and values of the positions fed so far: (L, NH, maxT, hs) float32 each."""

    def __init__(self, config: ModelConfig):
        L, NH, maxT, hs = config.n_layer, config.n_head, config.context_length, config.head_size
        self.keys = np.zeros((L, NH, maxT, hs), dtype=np.float32)  # (L, NH, maxT, hs)
        self.values = np.zeros((L, NH, maxT, hs), dtype=np.float32)  # (L, NH, maxT, hs)
        self.length = 0  # positions [0, length) are filled

    def reset(self) -> None:
        """Forget every position; the buffers are reused, not reallocated."""
        self.length = 0


def _check_ids(tokens: np.ndarray, vocab_size: int) -> None:
    bad = tokens[(tokens < 0) | (tokens >= vocab_size)]
    if bad.size:
        raise ValueError(f"token id {int(bad[0])} is outside the vocabulary [0, {vocab_size})")


def _as_token_array(tokens, vocab_size: int) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or tokens.size == 0:
        raise ValueError(f"expected a non-empty 1-D sequence of token ids, got {tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"token ids must be integers, got dtype {tokens.dtype}")
    _check_ids(tokens, vocab_size)
    return tokens.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# the cached forward pass


class Generator:
    """Feeds tokens one position at a time through a snapshot of the parameters."""

    def __init__(self, config: ModelConfig, params: np.ndarray):
        self.config = config
        table = parameter_table(config)
        if params.ndim != 1 or params.size != table.size:
            raise ShapeMismatch(
                f"params has shape {params.shape}, the config needs ({table.size},)"
            )
        # a private float32 copy: a trainer updating `params` in place cannot change a generation
        self.params = np.array(params, dtype=np.float32, copy=True)
        self.p = table.views(self.params)
        self.rope_cos, self.rope_sin = rope_tables(config.context_length if config.rope else 0, config.head_size)
        self.cache = KVCache(config)
        self.window: list[int] = []  # the token ids now held in the cache, oldest first

    def reset(self) -> None:
        """Forget every token fed so far."""
        self.cache.reset()
        self.window = []

    def feed(self, tokens: np.ndarray | list[int]) -> np.ndarray:
        """Append tokens; return float32 logits (V,) after the last one.

        Raises ValueError (before changing any state) for an empty sequence or an id outside
        [0, V). Slides the window as the module docstring describes when the cache is full.
        """
        tokens = _as_token_array(tokens, self.config.vocab_size)
        maxT = self.config.context_length
        last = tokens.size - 1
        for i, token in enumerate(tokens.tolist()):
            if self.cache.length == maxT:
                kept = self.window[len(self.window) - maxT // 2 :]  # [] when maxT is 1
                self.reset()
                for old in kept:
                    self._forward_position(old, with_logits=False)
            # only the last token's logits are returned, so only its head product is computed
            logits = self._forward_position(token, with_logits=i == last)
        return logits

    def _forward_position(self, token: int, with_logits: bool) -> np.ndarray | None:
        """Run one position through every layer, appending its keys and values to the cache."""
        p, cache, config = self.p, self.cache, self.config
        NH, hs = config.n_head, config.head_size
        C = config.d_model
        t = cache.length
        scale = np.float32(1.0 / math.sqrt(hs))

        def norm(x, weight, bias):
            return rmsnorm(x, weight) if config.norm == "rmsnorm" else layernorm(x, weight, bias)

        activation = relu2 if config.activation == "relu2" else gelu

        x = p.wte[token] + p.wpe[t] if config.learned_positions else p.wte[token].copy()  # (C,)
        for l in range(config.n_layer):
            # attention: this position's query against the cached keys 0..t
            h = norm(x, p.ln1w[l], p.ln1b[l])  # (C,)
            qkv = p.qkvw[l] @ h + p.qkvb[l]  # (3*C,)
            q = qkv[0 * C : 1 * C].reshape(NH, hs)  # (NH, hs)
            k = qkv[1 * C : 2 * C].reshape(NH, hs)  # (NH, hs)
            if config.qk_norm:
                q, k = rmsnorm(q), rmsnorm(k)
            if config.rope:  # each key is stored turned by its own position
                q, k = rotate(q, self.rope_cos[t], self.rope_sin[t]), rotate(k, self.rope_cos[t], self.rope_sin[t])
            cache.keys[l, :, t] = k
            cache.values[l, :, t] = qkv[2 * C : 3 * C].reshape(NH, hs)
            keys = cache.keys[l, :, : t + 1]  # (NH, t+1, hs)
            values = cache.values[l, :, : t + 1]  # (NH, t+1, hs)
            scores = np.matmul(keys, q[:, :, None])[:, :, 0] * scale  # (NH, t+1)
            att = np.exp(scores - np.maximum.reduce(scores, axis=1, keepdims=True))
            att /= np.add.reduce(att, axis=1, keepdims=True)  # (NH, t+1) softmax over past positions
            y = np.matmul(att[:, None, :], values).reshape(C)  # (C,) heads side by side
            x = x + p.attprojw[l] @ y + p.attprojb[l]  # (C,) residual
            # MLP
            h2 = norm(x, p.ln2w[l], p.ln2b[l])  # (C,)
            fch = activation(p.fcw[l] @ h2 + p.fcb[l])  # (H,)
            x = x + p.fcprojw[l] @ fch + p.fcprojb[l]  # (C,) residual
        cache.length = t + 1
        self.window.append(token)
        if not with_logits:
            return None
        logits = (p.wte if config.tie_head else p.lm_head) @ norm(x, p.lnfw, p.lnfb)  # (V,)
        return softcap(logits, np.float32(config.logit_softcap))


# ---------------------------------------------------------------------------------------------
# choosing a token


def sample_next(
    logits: np.ndarray,
    rng: np.random.Generator,
    temperature: float = _PLAIN.temperature,
    top_k: int = _PLAIN.top_k,
    top_p: float = _PLAIN.top_p,
) -> int:
    """Draw one token id from logits (V,).

    temperature 0 is greedy (argmax, no random draw). top_k keeps the k largest logits (0, or a
    k >= V, is off). top_p keeps the smallest set of most likely tokens whose probability sums to
    at least p (1.0 is off). Filters apply in that order, each to the result of the last.
    Raises ConfigError (a ValueError) for a setting outside sampling.BOUNDS.
    """
    check_setting("temperature", temperature)
    check_setting("top_k", top_k)
    check_setting("top_p", top_p)
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return int(np.argmax(logits))
    logits = logits / temperature
    order = np.argsort(-logits, kind="stable")  # (V,) most likely first
    if 0 < top_k < logits.size:
        logits[order[top_k:]] = -np.inf
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()  # (V,)
    if top_p < 1.0:
        cumulative = np.cumsum(probs[order])  # (V,) mass of the i+1 most likely tokens
        n_keep = min(int(np.searchsorted(cumulative, top_p, side="left")) + 1, probs.size)
        probs[order[n_keep:]] = 0.0
    # inverse CDF: the first index whose cumulative mass exceeds u never has zero probability
    cdf = np.cumsum(probs)
    u = rng.random() * cdf[-1]
    return int(min(np.searchsorted(cdf, u, side="right"), probs.size - 1))


def sample(
    config: ModelConfig,
    params: np.ndarray,
    prompt: list[int],
    max_new_tokens: int,
    *,
    temperature: float = _PLAIN.temperature,
    top_k: int = _PLAIN.top_k,
    top_p: float = _PLAIN.top_p,
    seed: int = _PLAIN.seed,
    stop_token: int | None = None,
) -> list[int]:
    """Continue `prompt` by up to max_new_tokens ids and return only the new ones.

    Deterministic in `seed`. Generation ends early, without the stop token in the result, when
    `stop_token` is drawn. A prompt longer than context_length slides as the module docstring
    describes. Raises ValueError for an empty prompt or an id outside [0, V), and ConfigError (a
    ValueError) for a setting outside sampling.BOUNDS.
    """
    SampleConfig(max_new_tokens, temperature, top_k, top_p, seed).validate()
    if stop_token is not None:
        _check_ids(np.asarray([stop_token]), config.vocab_size)
    prompt = _as_token_array(prompt, config.vocab_size)
    generator = Generator(config, params)
    rng = np.random.default_rng(seed)
    new_tokens: list[int] = []
    if max_new_tokens == 0:
        return new_tokens
    logits = generator.feed(prompt)
    while True:
        token = sample_next(logits, rng, temperature, top_k, top_p)
        if token == stop_token:
            break
        new_tokens.append(token)
        if len(new_tokens) == max_new_tokens:
            break
        logits = generator.feed([token])
    return new_tokens
