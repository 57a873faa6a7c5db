"""A standalone model file: the parameters as named tensors in one safetensors file.

Unlike a checkpoint (engine/checkpoint.py: one flat buffer plus the AdamW moments, for resuming
training), an export holds one tensor per entry of the parameter table (`wte`, `l_qkvw`, ...,
shaped as engine/layout.py documents them) and no optimizer state: the form another program
loads. The safetensors header's `__metadata__` holds `format` ("crystalline-model"),
`format_version`, `model_config` (JSON), `step`, and whatever string entries the caller adds
(the tokenizer identity, say). Written atomically like a checkpoint. Never uses pickle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import safetensors.numpy

from .checkpoint import write_atomically
from .config import ModelConfig
from .errors import ShapeMismatch
from .layout import parameter_table

EXPORT_FORMAT = "crystalline-model"
EXPORT_VERSION = 1


def export_model(path: str | os.PathLike, model_config: ModelConfig, params: np.ndarray, *, step: int,
                 metadata: dict[str, str] | None = None) -> Path:
    """Write `params` (flat float32, the table's layout) as named tensors to `path`, atomically.
    Raises ShapeMismatch for a buffer of the wrong size, CheckpointError when it cannot write."""
    table = parameter_table(model_config)
    params = np.asarray(params)
    if params.dtype != np.float32 or params.shape != (table.size,):
        raise ShapeMismatch(f"params must be flat float32 of {table.size} elements, got {params.dtype}{list(params.shape)}")
    views = table.views(params)
    tensors = {name: np.ascontiguousarray(getattr(views, name)) for name in views._fields}
    header = {key: str(value) for key, value in (metadata or {}).items()}
    header |= {"format": EXPORT_FORMAT, "format_version": str(EXPORT_VERSION),
               "model_config": json.dumps(model_config.to_dict(), sort_keys=True), "step": str(int(step))}
    data = safetensors.numpy.save(tensors, metadata=header)
    path = Path(path)
    write_atomically(path, data, what="the model")
    return path
