"""The crystalline engine: a GPT-style transformer trained by numba kernels on worker threads.

Knows nothing of files, databases or the daemon: it takes token ids and returns numbers.
"""

from .config import ConfigError, ModelConfig, TrainConfig
from .layout import parameter_table, init_parameters, count_parameters

__all__ = [
    "ConfigError",
    "ModelConfig",
    "TrainConfig",
    "parameter_table",
    "init_parameters",
    "count_parameters",
]
