"""The crystalline engine: a GPT-style transformer trained by numba kernels on worker threads.

Knows nothing of files, databases or the daemon: it takes token ids and returns numbers.
"""

from .checkpoint import Checkpoint, load_checkpoint, load_latest_checkpoint, list_checkpoints, save_checkpoint
from .config import ConfigError, ModelConfig, TrainConfig
from .errors import CheckpointError, EngineError, NonFiniteLoss, ShapeMismatch
from .layout import count_parameters, init_parameters, parameter_table
from .sample import Generator, sample
from .trainer import StepStats, Trainer

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "ConfigError",
    "EngineError",
    "Generator",
    "ModelConfig",
    "NonFiniteLoss",
    "ShapeMismatch",
    "StepStats",
    "TrainConfig",
    "Trainer",
    "count_parameters",
    "init_parameters",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest_checkpoint",
    "parameter_table",
    "sample",
    "save_checkpoint",
]
