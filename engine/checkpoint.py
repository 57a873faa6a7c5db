"""Checkpoint files: the flat parameter buffer, AdamW moments and metadata in one safetensors file.

Format (version 1): tensors "params", "adam_m", "adam_v" (flat float32, laid out by
`parameter_table`), and the safetensors header's `__metadata__` holding string values:
format_version, model_config (JSON), step, train_state (JSON), extra (JSON) and sha256, a digest
over the three tensors' raw bytes followed by every other metadata entry, so a flipped byte anywhere
in the data or the metadata is caught on load. Files are named `ckpt-{step:09d}.safetensors`.
With Muon (train_state's train_config.optimizer "muon"), adam_m's slots of the blocks' matrices
hold Muon's momentum and adam_v's are unused (engine/muon.py): the format is the same.
model_config holds the architecture options too (ModelConfig.ARCHITECTURE_FIELDS), so a model
loads into the architecture it was trained with; a file written before they existed lacks them
and loads with their defaults, the GPT-2 model it is.

Writes are atomic: a temporary `.ckpt-*.tmp` in the same directory is fsynced, renamed over the
final name, and the directory is fsynced, so a kill mid-write never leaves a broken checkpoint.
Knows nothing of training, threads or storage; never uses pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.numpy

from .config import ModelConfig
from .errors import CheckpointError, ShapeMismatch
from .layout import parameter_table

FORMAT_VERSION = 1
TENSORS = ("params", "adam_m", "adam_v")
METADATA = ("format_version", "model_config", "step", "train_state", "extra", "sha256")
NAME_PATTERN = re.compile(r"ckpt-(\d+)\.safetensors")
TEMP_PREFIX, TEMP_SUFFIX = ".ckpt-", ".tmp"


@dataclass
class Checkpoint:
    """One loaded checkpoint; the arrays are flat float32 in the parameter table's layout."""

    path: Path
    step: int
    model_config: ModelConfig
    params: np.ndarray
    m: np.ndarray
    v: np.ndarray
    train_state: dict
    extra: dict


class CheckpointIncompatible(CheckpointError):
    """The file is intact but this program cannot use it (newer format, other model shape): never
    to be called corrupt, skipped or moved aside, since that would abandon the run it holds."""



def checkpoint_name(step: int) -> str:
    """The file name of the checkpoint at `step`."""
    return f"ckpt-{step:09d}.safetensors"


def checkpoint_step(name: str | os.PathLike) -> int | None:
    """The step a rolling checkpoint's file name carries (`checkpoint_name`'s inverse; a path is
    read by its last part), or None for any other name."""
    match = NAME_PATTERN.fullmatch(Path(name).name)
    return int(match.group(1)) if match else None


def tensor_bytes(model_config: ModelConfig) -> int:
    """The bytes of a checkpoint's tensors for this model: params, adam_m and adam_v, float32 each.
    A file is these and its header (8 bytes of length, then the JSON of the tensors' entries and
    the metadata, padded to 8), so a file's header is its size less this."""
    return len(TENSORS) * np.dtype(np.float32).itemsize * parameter_table(model_config).size


def _digest(tensors: list[np.ndarray], metadata: dict[str, str]) -> str:
    h = hashlib.sha256()
    for array in tensors:
        h.update(np.ascontiguousarray(array))  # the raw bytes, no copy
    for key in sorted(k for k in metadata if k != "sha256"):
        h.update(f"{key}\0{metadata[key]}\0".encode())
    return h.hexdigest()


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries (that a rename or a new name is durable), to the disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if Path(path).is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# save


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    step: int,
    model_config: ModelConfig,
    params: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    train_state: dict | None = None,
    extra: dict | None = None,
    keep_last: int | None = 3,
    name: str | None = None,
) -> Path:
    """Atomically write the checkpoint for `step` into `directory` and return its path.

    The file is `checkpoint_name(step)`, or `name` (say "best.safetensors": a file outside the
    rolling `ckpt-*` set, which list_checkpoints never lists and no pruning touches). Then, for a
    rolling file with `keep_last` set, deletes the oldest rolling checkpoints so `keep_last` remain
    (the one just written is always kept); `keep_last=None` prunes nothing, for a caller that
    owns retention. `.ckpt-*.tmp` leftovers older than this save are removed. Raises ValueError
    for a bad keep_last, name or step, ShapeMismatch for arrays that are not flat float32 of the table's size,
    TypeError for non-JSON-able dicts, and CheckpointError when the file cannot be written.
    """
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last ({keep_last}) must be at least 1")
    if name is not None and (Path(name).name != name or NAME_PATTERN.fullmatch(name) or name.startswith(".")):
        raise ValueError(f"name ({name!r}) must be a plain file name outside the ckpt-* pattern")
    if step < 0:
        raise ValueError(f"step ({step}) must be 0 or more")
    size = parameter_table(model_config).size
    for tensor, array in zip(TENSORS, (params, m, v)):
        array = np.asanyarray(array)
        if array.dtype != np.float32 or array.shape != (size,):
            got = f"{array.dtype}{list(array.shape)}"
            raise ShapeMismatch(f"{tensor} must be flat float32 of {size} elements, got {got}")
    try:
        metadata = {
            "format_version": str(FORMAT_VERSION),
            "model_config": json.dumps(model_config.to_dict(), sort_keys=True),
            "step": str(int(step)),
            "train_state": json.dumps(train_state or {}, sort_keys=True),
            "extra": json.dumps(extra or {}, sort_keys=True),
        }
    except (TypeError, ValueError) as exc:
        raise TypeError(f"train_state and extra must be JSON-able: {exc}") from exc
    tensors = {tensor: np.ascontiguousarray(a) for tensor, a in zip(TENSORS, (params, m, v))}
    metadata["sha256"] = _digest(list(tensors.values()), metadata)
    data = safetensors.numpy.save(tensors, metadata=metadata)

    directory = Path(directory)
    final = directory / (name or checkpoint_name(step))
    started = time.time()
    write_atomically(final, data, what="checkpoint")
    _prune(directory, final, None if name else keep_last, started)
    return final


def write_atomically(final: Path, data: bytes, what: str) -> None:
    """`data` as the file `final`, or no file at all: a `.ckpt-*.tmp` in the same directory is
    written and fsynced, renamed over `final`, and the directory fsynced. CheckpointError when it
    cannot be written; the temporary file never outlives a failure."""
    directory = final.parent
    temp = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=directory)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, final)
        temp = None
        fsync_path(directory)
    except OSError as exc:
        raise CheckpointError(final, f"cannot write {what}: {exc}") from exc
    finally:
        if temp is not None:
            Path(temp).unlink(missing_ok=True)


def _prune(directory: Path, keep: Path, keep_last: int | None, started: float) -> None:
    if keep_last is not None:
        others = [p for p in list_checkpoints(directory) if p != keep]
        for path in others[: max(0, len(others) - (keep_last - 1))]:
            path.unlink(missing_ok=True)
    for path in directory.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        try:
            if path.stat().st_mtime < started:
                path.unlink()
        except OSError:
            pass  # another writer's temp file came and went; it is theirs to clean up


# ---------------------------------------------------------------------------------------------
# load


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Checkpoint files in `directory`, oldest first by step; [] if the directory is missing."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        step = checkpoint_step(path.name)
        if step is not None and path.is_file():
            found.append((step, path))
    return [path for _, path in sorted(found)]


def _read(path: Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(path, f"cannot read: {exc.strerror or exc}") from exc
    if len(data) < 8:
        raise CheckpointError(path, f"truncated: {len(data)} bytes")
    n = int.from_bytes(data[:8], "little")
    if 8 + n > len(data):
        raise CheckpointError(path, f"truncated: header of {n} bytes, file of {len(data)}")
    try:
        header = json.loads(data[8 : 8 + n])
        ends = [e["data_offsets"][1] for k, e in header.items() if k != "__metadata__"]
        if 8 + n + max(ends, default=0) > len(data):
            reason = f"truncated: {len(data)} bytes, header describes {8 + n + max(ends)}"
            raise CheckpointError(path, reason)
        tensors = safetensors.numpy.load(data)
    except (ValueError, TypeError, LookupError, AttributeError, safetensors.SafetensorError) as exc:
        raise CheckpointError(path, f"not a valid safetensors file: {exc}") from exc
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(path, "header has no __metadata__ map of strings")
    return metadata, tensors


def read_extra(path: str | os.PathLike) -> dict:
    """The `extra` metadata of a checkpoint file, read from its header alone (no tensors, no
    checksum: for deciding what a file is, never for trusting its contents). CheckpointError
    when the header cannot be read."""
    return read_metadata(path, "extra")


def read_metadata(path: str | os.PathLike, key: str):
    """One JSON entry of a checkpoint's metadata ("extra", "train_state", "model_config", "step"),
    read from its header alone, as read_extra reads "extra" (never for trusting the contents: a
    model's shape and growth records to show, say). CheckpointError when it cannot be read."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= 100_000_000:
                raise CheckpointError(path, f"bad header length {n}")
            header = json.loads(f.read(n))
        return json.loads(header["__metadata__"][key])
    except OSError as exc:
        raise CheckpointError(path, f"cannot read: {exc.strerror or exc}") from exc
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(path, f"bad header: {exc}") from exc


def load_checkpoint(path: str | os.PathLike, expect: ModelConfig | None = None) -> Checkpoint:
    """Read and verify one checkpoint; every failure raises CheckpointError naming the file.

    With `expect`, the checkpoint's shape-defining fields must equal expect's.
    """
    path = Path(path)
    metadata, tensors = _read(path)
    version = metadata.get("format_version", "")
    if not version.isdigit():
        raise CheckpointError(path, f"bad format_version {version!r}")
    if int(version) > FORMAT_VERSION:
        reason = f"format_version {version} is newer than this program reads ({FORMAT_VERSION})"
        raise CheckpointIncompatible(path, reason)
    if int(version) != FORMAT_VERSION:
        raise CheckpointError(path, f"unknown format_version {version}")
    missing = [k for k in METADATA if k not in metadata] + [k for k in TENSORS if k not in tensors]
    if missing:
        raise CheckpointError(path, f"missing entries: {', '.join(missing)}")
    arrays = [tensors[name] for name in TENSORS]
    bad = [
        f"{name} is {a.dtype}{list(a.shape)}"
        for name, a in zip(TENSORS, arrays)
        if a.dtype != np.float32 or a.ndim != 1
    ]
    if bad:
        raise CheckpointError(path, f"tensors must be flat float32: {'; '.join(bad)}")
    if _digest(arrays, metadata) != metadata["sha256"]:
        raise CheckpointError(path, "checksum mismatch: the file is corrupt")
    try:
        config = ModelConfig.from_dict(json.loads(metadata["model_config"]))
        step = int(metadata["step"])
        train_state = json.loads(metadata["train_state"])
        extra = json.loads(metadata["extra"])
    except (ValueError, TypeError) as exc:  # ConfigError is a ValueError
        raise CheckpointError(path, f"bad metadata: {exc}") from exc
    if not isinstance(train_state, dict) or not isinstance(extra, dict):
        raise CheckpointError(path, "bad metadata: train_state and extra must be JSON objects")
    size = parameter_table(config).size
    wrong = [f"{name} has {a.size}" for name, a in zip(TENSORS, arrays) if a.size != size]
    if wrong:
        reason = f"tensor sizes do not fit the model config ({size}): {', '.join(wrong)}"
        raise CheckpointError(path, reason)
    if expect is not None:
        pairs = [(n, getattr(config, n), getattr(expect, n)) for n in ModelConfig.SHAPE_FIELDS]
        mismatched = [f"{n}: checkpoint={a} expected={b}" for n, a, b in pairs if a != b]
        if mismatched:
            raise CheckpointIncompatible(path, "model config mismatch: " + "; ".join(mismatched))
    return Checkpoint(path, step, config, *arrays, train_state=train_state, extra=extra)


def load_latest_checkpoint(
    directory: str | os.PathLike, expect: ModelConfig | None = None
) -> tuple[Checkpoint | None, list[tuple[Path, str]]]:
    """The newest valid checkpoint in `directory` (None if there is none) and the
    (path, reason) of each newer corrupt one it skipped.

    An intact but incompatible checkpoint (newer format_version, or shape fields differing from
    `expect`) raises CheckpointError instead of being skipped: falling back to an older file or
    starting afresh would silently abandon that run, and retention would then delete it.
    """
    skipped: list[tuple[Path, str]] = []
    for path in reversed(list_checkpoints(directory)):
        try:
            return load_checkpoint(path, expect), skipped
        except CheckpointIncompatible:
            raise
        except CheckpointError as exc:
            skipped.append((path, exc.reason))
    return None, skipped
