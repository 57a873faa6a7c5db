"""Disk use of a state directory, by part, and the caps on the folders that grow.

Parts: the database (corpus.db and its WAL; a PostgreSQL store reports its tables),
checkpoints/ (the training loop's files), processed/ (files `after_ingest = "move"` moved
there) and quarantine/ (checkpoint files set aside, never deleted unasked). `disk_usage` measures
them for `crystalline status`.

Caps (`[daemon] checkpoints_max_mb`, `processed_max_mb`, `quarantine_max_mb`; 0: no cap) are
enforced oldest first: checkpoints by step, in `CheckpointStore.prune` after each checkpoint (never
the newest committed one, never best.safetensors, never a file no row names); processed/ and
quarantine/ by the files' modification time, by the daemon's `FolderCaps.sweep` once per status
interval (a folder whose cap is 0 is never walked, and processed/ only after the ingest worker
may have moved files into it). Each sweep that deletes logs one `disk_trimmed` (files, bytes);
a cap smaller than what must be kept logs `disk_cap_unmet`, never stops anything.

Knows nothing of the store, the model or threads: it walks folders (crawler.state.walk, never
following a link) and deletes files.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .walk import walk_files

MB = 1_000_000  # the caps' unit, as replay_memory_mb's
PROCESSED_DIR = "processed"
QUARANTINE_DIR = "quarantine"
CHECKPOINT_DIR = "checkpoints"  # the folder's name; crawler.training.checkpoints owns what is in it
FOLDER_CAPS = (("processed", PROCESSED_DIR, "processed_max_mb"), ("quarantine", QUARANTINE_DIR, "quarantine_max_mb"))


@dataclass
class Usage:
    """Files and bytes under a folder (links counted by their own size, never followed)."""

    files: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class _File:
    mtime: float
    path: Path
    size: int


def _walk(folder: Path) -> list[_File]:
    """Every file under `folder` (links as themselves); what vanishes or cannot be read is passed
    over."""
    found = []
    for entry in walk_files(folder):
        try:
            stat = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        found.append(_File(stat.st_mtime, Path(entry.path), stat.st_size))
    return found


def folder_usage(folder: str | Path) -> Usage:
    """Files and bytes under `folder`; a missing folder is empty."""
    files = _walk(Path(folder))
    return Usage(len(files), sum(f.size for f in files))


@dataclass
class Trimmed:
    """What one sweep of a folder did: files and bytes deleted, bytes left, the cap."""

    files: int
    bytes: int
    used_bytes: int
    cap_bytes: int

    @property
    def met(self) -> bool:
        return self.cap_bytes == 0 or self.used_bytes <= self.cap_bytes


def trim_folder(folder: str | Path, cap_bytes: int) -> Trimmed:
    """Delete the files under `folder` with the oldest modification times (ties: by path) until
    its files take at most `cap_bytes`; folders left empty go too (never `folder` itself). A file
    that cannot be deleted stays, and counts. cap_bytes 0: nothing is deleted, nothing walked."""
    if cap_bytes <= 0:
        return Trimmed(0, 0, 0, 0)
    folder = Path(folder)
    files = _walk(folder)
    used = sum(f.size for f in files)
    deleted, freed = 0, 0
    for file in sorted(files, key=lambda f: (f.mtime, str(f.path))):
        if used <= cap_bytes:
            break
        try:
            file.path.unlink()
        except FileNotFoundError:
            pass  # gone meanwhile: it no longer takes space either
        except OSError:
            continue
        else:
            deleted, freed = deleted + 1, freed + file.size
        used -= file.size
        _remove_empty_parents(file.path.parent, folder)
    return Trimmed(deleted, freed, used, cap_bytes)


def _remove_empty_parents(path: Path, top: Path) -> None:
    while path != top and top in path.parents:
        try:
            path.rmdir()  # only when empty
        except OSError:
            return
        path = path.parent


def log_trimmed(log: Any, part: str, trimmed: Trimmed, setting: str, kept: str, warn: bool = True,
                **fields: Any) -> None:
    """One `disk_trimmed` when the sweep deleted anything; `disk_cap_unmet` (when `warn`) when the
    cap could not be met, `kept` saying what had to stay."""
    if trimmed.files:
        log.info("disk_trimmed", part=part, files=trimmed.files, bytes=trimmed.bytes,
                 used_bytes=trimmed.used_bytes, cap_bytes=trimmed.cap_bytes, **fields)
    if warn and not trimmed.met:
        log.warning("disk_cap_unmet", part=part, used_bytes=trimmed.used_bytes, cap_bytes=trimmed.cap_bytes,
                    kept=kept, setting=f"daemon.{setting}",
                    action=f"raise [daemon] {setting} (0: no cap), or free the space by hand")


class FolderCaps:
    """The daemon's caps on processed/ and quarantine/: `sweep` once per status interval.

    processed/ is walked only when its cap or `moved` (a token the caller changes whenever the
    ingest worker may have moved files into it) changed since a sweep that met the cap; the
    quarantine, small and rarely written, at every sweep with a cap. `disk_cap_unmet` is logged
    when a part starts to miss its cap, not at every sweep."""

    def __init__(self, state_dir: str | Path, log: Any):
        self.state_dir, self.log = Path(state_dir), log
        self._settled: dict[str, tuple] = {}  # part -> (cap, moved) of its last sweep that met the cap
        self._unmet: set[str] = set()

    def sweep(self, daemon_config: Any, moved: Any = None) -> dict[str, Trimmed]:
        """Enforce each folder's cap; returns what each walked folder's sweep did. Never raises
        for a file or folder it cannot read or delete (they stay, and count)."""
        done = {}
        for part, name, setting in FOLDER_CAPS:
            cap = int(getattr(daemon_config, setting)) * MB
            if cap <= 0:
                self._settled.pop(part, None)
                self._unmet.discard(part)
                continue
            key = (cap, moved)
            if part == "processed" and self._settled.get(part) == key:
                continue
            trimmed = trim_folder(self.state_dir / name, cap)
            done[part] = trimmed
            log_trimmed(self.log, part, trimmed, setting, "files that could not be deleted",
                        warn=part not in self._unmet)
            if trimmed.met:
                self._settled[part] = key
                self._unmet.discard(part)
            else:
                self._unmet.add(part)
        return done


def disk_usage(state_dir: str | Path, daemon_config: Any, database_bytes: int | None) -> dict[str, Any]:
    """Disk use by part, with each part's cap in bytes (0: none) and the free space of the file
    system that holds the state directory (None when it cannot be read)."""
    state_dir = Path(state_dir)
    report: dict[str, Any] = {"database": {"bytes": database_bytes}}
    for part, name, setting in ((CHECKPOINT_DIR, CHECKPOINT_DIR, "checkpoints_max_mb"), *FOLDER_CAPS):
        usage = folder_usage(state_dir / name)
        report[part] = {"files": usage.files, "bytes": usage.bytes,
                        "cap_bytes": int(getattr(daemon_config, setting)) * MB}
    try:
        report["free_bytes"] = shutil.disk_usage(state_dir if state_dir.exists() else state_dir.parent).free
    except OSError:
        report["free_bytes"] = None
    return report
