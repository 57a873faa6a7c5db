"""The crystalline engine: a GPT-style transformer trained by numba kernels on worker threads.

Knows nothing of files, databases or the daemon: it takes token ids and returns numbers.
The names below load their module on first use (PEP 562), so a caller that only needs the
configuration or the errors (the CLI's corpus commands, for one) does not pay for numba and
SciPy: that is about half a second and 60 MB of a fresh process.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "BYTE_VOCAB_SIZE": "config",
    "Checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_latest_checkpoint": "checkpoint",
    "list_checkpoints": "checkpoint",
    "save_checkpoint": "checkpoint",
    "ConfigError": "config",
    "DistributedConfig": "distributed",
    "ModelConfig": "config",
    "TrainConfig": "config",
    "CheckpointError": "errors",
    "EngineError": "errors",
    "NonFiniteLoss": "errors",
    "ShapeMismatch": "errors",
    "count_parameters": "layout",
    "init_parameters": "layout",
    "parameter_table": "layout",
    "Generator": "sample",
    "SampleConfig": "sampling",
    "StepStats": "trainer",
    "Trainer": "trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and editors: the same names, eagerly
    from .checkpoint import Checkpoint, list_checkpoints, load_checkpoint, load_latest_checkpoint, save_checkpoint
    from .config import BYTE_VOCAB_SIZE, ConfigError, ModelConfig, TrainConfig
    from .errors import CheckpointError, EngineError, NonFiniteLoss, ShapeMismatch
    from .layout import count_parameters, init_parameters, parameter_table
    from .sample import Generator
    from .sampling import SampleConfig
    from .trainer import StepStats, Trainer
