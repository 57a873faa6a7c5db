"""Typed, validated configuration of the engine: the model's shape and the training recipe.

Knows nothing of files or the daemon. Both dataclasses are frozen; `validate()` runs once at the
edge and names what is allowed, so nothing downstream re-checks.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass


# The byte-level tokenizer's vocabulary: the 256 byte values and one end-of-document separator (id
# 256). The model's default; crawler.ingest.tokenizer's ByteTokenizer has exactly this many ids.
BYTE_VOCAB_SIZE = 257


class ConfigError(ValueError):
    """A configuration value is out of its allowed range; the message names the allowed values."""


@dataclass(frozen=True)
class ModelConfig:
    # the default byte-level tokenizer's: 256 byte values plus one end-of-document separator
    vocab_size: int = BYTE_VOCAB_SIZE
    # the longest window the model sees; learned position embeddings exist for each position.
    context_length: int = 128
    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    # hidden width of the MLP as a multiple of d_model (GPT-2 uses 4).
    mlp_ratio: int = 4
    # seeds the parameter initialisation only; the data order has its own seed in TrainConfig.
    seed: int = 1337

    # Architecture options. The defaults are GPT-2 exactly; each one alone changes one layer.
    # "learned": a (context_length, C) position table added to the token embedding (GPT-2);
    # "rope": rotary embeddings turn each head's q and k by position (Su et al. 2021), no table;
    # "both": the table and the rotation.
    positions: str = "learned"
    # "layernorm" (mean and variance, gain and shift) or "rmsnorm" (root mean square, gain only).
    norm: str = "layernorm"
    # RMS-normalise each head's q and k (no gain) before their dot product: scores stay bounded.
    qk_norm: bool = False
    # the MLP's nonlinearity: "gelu" (tanh approximation, GPT-2) or "relu2" (relu(x)^2).
    activation: str = "gelu"
    # start the attention and MLP output projections at zero, so each block starts as identity.
    zero_init_proj: bool = False
    # logits = cap * tanh(logits / cap) when > 0 (bounded logits); 0 leaves them as they are.
    logit_softcap: float = 0.0
    # the output head is the token embedding (GPT-2); false adds its own (V, C) matrix.
    tie_head: bool = True

    # Shape-defining fields: a checkpoint is only compatible with a config that matches on these.
    SIZE_FIELDS = ("vocab_size", "context_length", "d_model", "n_layer", "n_head", "mlp_ratio")
    ARCHITECTURE_FIELDS = ("positions", "norm", "qk_norm", "activation", "zero_init_proj",
                           "logit_softcap", "tie_head")
    SHAPE_FIELDS = SIZE_FIELDS + ARCHITECTURE_FIELDS
    POSITIONS = ("learned", "rope", "both")
    NORMS = ("layernorm", "rmsnorm")
    ACTIVATIONS = ("gelu", "relu2")

    def validate(self) -> "ModelConfig":
        for name in self.SIZE_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} ({value!r}) must be a positive integer")
        for name, allowed in (("positions", self.POSITIONS), ("norm", self.NORMS),
                              ("activation", self.ACTIVATIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} ({getattr(self, name)!r}) must be one of {', '.join(allowed)}")
        for name in ("qk_norm", "zero_init_proj", "tie_head"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} ({getattr(self, name)!r}) must be true or false")
        cap = self.logit_softcap
        if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not 0 <= cap < float("inf"):
            raise ConfigError(f"logit_softcap ({cap!r}) must be 0 (off) or a positive number")
        if self.vocab_size < 2:
            raise ConfigError(f"vocab_size ({self.vocab_size}) must be at least 2")
        if self.d_model % self.n_head:
            raise ConfigError(
                f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})"
            )
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed ({self.seed}) must be in [0, 2**63)")
        if self.rope and self.head_size % 2:
            raise ConfigError(
                f"positions = {self.positions!r} rotates pairs of channels: the head size "
                f"d_model / n_head ({self.head_size}) must be even"
            )
        return self

    @property
    def rope(self) -> bool:
        """Whether q and k are rotated by position."""
        return self.positions in ("rope", "both")

    @property
    def learned_positions(self) -> bool:
        """Whether the model has a learned position table."""
        return self.positions in ("learned", "both")

    @property
    def head_size(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """The config `to_dict` wrote. A field it lacks takes its default: a checkpoint from before
        the architecture options existed loads as the GPT-2 model it is."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**data).validate()


SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("adamw", "muon")
# The crystalline term needs a (V, V) float32 cost table: 4 * V^2 bytes, 64 MiB at this bound.
MAX_CRYSTALLINE_VOCAB = 4096


@dataclass(frozen=True)
class TrainConfig:
    # sequences per optimizer step, split across the worker threads (and micro-steps).
    batch_size: int = 16
    # sequences one worker processes per forward/backward; 0 means batch_size / threads
    # (one micro-step). Smaller values trade speed for activation memory.
    micro_batch_size: int = 0
    # keep only the MLP's pre-activation and compute the activation again in the backward:
    # 4 * d_model floats less per token and layer of each worker's activations, for one more
    # GELU (or ReLU^2) pass a layer. The results are the same bits either way.
    recompute_activation: bool = False
    # window length used for training; must not exceed ModelConfig.context_length.
    seq_len: int = 128
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    # "cosine" decays to min_lr_ratio * learning_rate at total_steps; "constant" holds the rate
    # after warmup, the schedule for continuous training.
    schedule: str = "cosine"
    total_steps: int = 2000
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    # global-norm gradient clipping; 0 disables it.
    grad_clip: float = 1.0
    # "adamw" trains every parameter with AdamW. "muon" trains the blocks' 2-D matrices (query,
    # key, value, attention and MLP projections) with Muon (engine/muon.py) and everything else
    # (embeddings, gains, biases) with AdamW at learning_rate.
    optimizer: str = "adamw"
    # Muon's peak rate, in the units of Jordan et al.'s reference (0.02 there): the update is an
    # orthogonal matrix times sqrt(max(1, rows/cols)). The schedule scales it as learning_rate.
    muon_lr: float = 0.02
    # Nesterov momentum of Muon (0.95 in the reference).
    muon_momentum: float = 0.95
    # decoupled decay of the Muon matrices, p -= rate * muon_weight_decay * p (0 in the reference).
    muon_weight_decay: float = 0.0
    # Newton-Schulz iterations per Muon step, each 4 m^2 n + 2 m^3 flops for an m x n matrix, m <= n.
    ns_steps: int = 5
    # weight of the differentiable crystalline term added to the cross-entropy (see crossentropy.py).
    crystalline_weight: float = 0.0
    # worker threads; 0 means every core this process may use.
    threads: int = 0
    seed: int = 1337

    def validate(self, model: ModelConfig | None = None) -> "TrainConfig":
        positive = ("batch_size", "seq_len", "total_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} ({getattr(self, name)}) must be at least 1")
        for name in ("micro_batch_size", "warmup_steps", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} ({getattr(self, name)}) must be 0 or more")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule ({self.schedule!r}) must be one of {', '.join(SCHEDULES)}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate ({self.learning_rate}) must be positive")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio ({self.min_lr_ratio}) must be in [0, 1]")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"beta1 ({self.beta1}) and beta2 ({self.beta2}) must be in [0, 1)")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.eps <= 0:
            raise ConfigError("weight_decay and grad_clip must be >= 0 and eps > 0")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer ({self.optimizer!r}) must be one of {', '.join(OPTIMIZERS)}")
        if not self.muon_lr > 0:
            raise ConfigError(f"muon_lr ({self.muon_lr}) must be positive")
        if not 0 <= self.muon_momentum < 1:
            raise ConfigError(f"muon_momentum ({self.muon_momentum}) must be in [0, 1)")
        if not self.muon_weight_decay >= 0:
            raise ConfigError(f"muon_weight_decay ({self.muon_weight_decay}) must be >= 0")
        if not 1 <= self.ns_steps <= 20:
            raise ConfigError(f"ns_steps ({self.ns_steps}) must be between 1 and 20")
        if self.crystalline_weight < 0:
            raise ConfigError(f"crystalline_weight ({self.crystalline_weight}) must be >= 0")
        if model is not None and self.crystalline_weight > 0 and model.vocab_size > MAX_CRYSTALLINE_VOCAB:
            raise ConfigError(
                f"crystalline_weight > 0 needs vocab_size <= {MAX_CRYSTALLINE_VOCAB} (a V x V cost table), "
                f"got {model.vocab_size}"
            )
        if model is not None and self.seq_len > model.context_length:
            raise ConfigError(
                f"seq_len ({self.seq_len}) must not exceed context_length ({model.context_length})"
            )
        if self.threads > 4096:
            raise ConfigError(f"threads ({self.threads}) must be at most 4096")
        return self

    def resolved_threads(self) -> int:
        """The number of worker threads this config asks for, with 0 meaning all usable cores."""
        if self.threads:
            return self.threads
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - platforms without affinity
            return max(1, os.cpu_count() or 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
