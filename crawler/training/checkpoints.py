"""The state directory's checkpoints: the files in STATE_DIR/checkpoints, their rows in the corpus
store, and how the two are made to agree. The one owner of that concern; the training loop,
`crystalline repair` and `crystalline reset` ask it.

Names. A row names its file relative to the state directory (`checkpoints/ckpt-000000010.safetensors`),
so a state directory works from any working directory, after a `mv` and after a restore from a
backup. An older row (an absolute path, or one relative to the working directory of an earlier
start) is read by its file name inside STATE_DIR/checkpoints: `resolve` is the only reader of rows.

Agreement (`reconcile`, at every start of the training loop and by `crystalline repair`). The loop
resumes from the newest usable checkpoint: a file that loads, was trained with the state
directory's tokenizer, and, when no row names it, carries the loop's state with a stream position
inside the stored stream (and a digest of the tokens before that position that matches the
store's, when it records one). When that is not the checkpoint the database names latest (a
commit lost with a deleted `corpus.db-wal`, a crash between the file and its commit, a database
restored from an older backup, newer files deleted or damaged), the database is made to agree with
the file: `rewind_to` its row, or `restore_checkpoint` from its metadata. Nothing that loads is
deleted: a file that does not load, and an intact one newer than the checkpoint resumed that cannot
be used (which a later save of the same step would overwrite), is moved into STATE_DIR/quarantine/
(`checkpoint_quarantined`). An intact checkpoint of a newer format, or a named one of another
tokenizer, stops the start with one line saying what to do, as does a database that names
checkpoints none of which loads. A database that names no checkpoint at all (a new one, or a
damaged one moved aside) takes no cursor from a file: the newest valid file's weights are adopted
as the starting point, and every stored text is trained on.

Retention (`prune`): the files of committed checkpoints older than the newest `keep`, written by
the same command, then, under a `checkpoints_max_mb` cap, the lowest steps of any command until
the folder fits; never the newest committed one, never best.safetensors, never a file the
database does not name.

Knows nothing of training or threads; relies on engine.checkpoint for the file format and on the
store's CorpusQueue for the rows.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import CheckpointError
from engine.checkpoint import (
    NAME_PATTERN,
    TEMP_PREFIX,
    TEMP_SUFFIX,
    Checkpoint,
    CheckpointIncompatible,
    list_checkpoints,
    load_checkpoint,
    read_extra,
)

from ..state.disk import CHECKPOINT_DIR, QUARANTINE_DIR, Trimmed, folder_usage, log_trimmed

BEST_CHECKPOINT = "best.safetensors"
DIGEST_TOKENS = 256  # the stream tokens before a checkpoint's position that its digest covers
ROWS_EXAMINED = 1000  # newest rows compared with the files (older ones name pruned files)
ROWS_NAMED = 100_000  # rows read to tell a named file (the cap may delete) from an unknown one
RESET_HINT = "`crystalline reset --keep-corpus` trains a new model on the stored text"


def checkpoint_directory(state_dir: str | Path) -> Path:
    """Where the training loop keeps its checkpoints."""
    return Path(state_dir) / CHECKPOINT_DIR


def stored_path(path: str | Path) -> str:
    """How a row names a checkpoint file: relative to the state directory."""
    return f"{CHECKPOINT_DIR}/{Path(path).name}"


def resolve(state_dir: str | Path, stored: str) -> Path:
    """The file a row names, whatever form the row has: its name inside STATE_DIR/checkpoints."""
    return checkpoint_directory(state_dir) / Path(stored).name


def stream_digest(queue, position: int) -> str | None:
    """sha256 of the DIGEST_TOKENS stream tokens before `position` (int32, little-endian): a
    checkpoint records it, so a file can be matched with the stream it was trained on. None when
    some of those tokens were forgotten (`crystalline forget`): nothing to match them with."""
    tokens = queue.read_tokens(max(0, position - DIGEST_TOKENS), position, missing=-1)
    if (tokens < 0).any():
        return None
    return hashlib.sha256(np.ascontiguousarray(tokens, "<i4").tobytes()).hexdigest()


def quarantine(state_dir: str | Path, path: Path, reason: str, log: Any) -> Path | None:
    """Move `path` into STATE_DIR/quarantine/ (a free name: `.1`, `.2` ... appended when taken);
    logs `checkpoint_quarantined`. Returns the new path, or None when it cannot be moved (logged,
    the file stays)."""
    folder = Path(state_dir) / QUARANTINE_DIR
    target = folder / path.name
    n = 0
    while target.exists():
        n += 1
        target = folder / f"{path.name}.{n}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    except OSError as exc:
        log.warning("checkpoint_quarantine_failed", path=str(path), reason=reason, error=str(exc))
        return None
    log.warning("checkpoint_quarantined", path=str(path), to=str(target), reason=reason)
    return target


# ---------------------------------------------------------------------------------------------
# reconcile


@dataclass
class Reconciled:
    """What `reconcile` decided."""

    checkpoint: Checkpoint | None  # loaded; None: no checkpoint, the model starts afresh
    action: str  # "resumed", "rewound", "recovered", "adopted" or "fresh"
    quarantined: list[Path] = field(default_factory=list)
    dropped_rows: list[int] = field(default_factory=list)  # steps whose rows no longer name a file


@dataclass
class _Candidate:
    step: int
    path: Path
    record: Any = None  # the CheckpointRecord naming it, if one does


def _candidates(state_dir: Path, records: list) -> list[_Candidate]:
    """Every checkpoint file on disk and every file a row names, newest step first."""
    found: dict[str, _Candidate] = {}
    for record in reversed(records):  # oldest first, so the newest row naming a file wins
        path = resolve(state_dir, record.path)
        match = NAME_PATTERN.fullmatch(path.name)
        found[path.name] = _Candidate(int(match.group(1)) if match else record.step, path, record)
    for path in list_checkpoints(checkpoint_directory(state_dir)):
        if path.name not in found:
            found[path.name] = _Candidate(int(NAME_PATTERN.fullmatch(path.name).group(1)), path)
    return sorted(found.values(), key=lambda c: c.step, reverse=True)


def reconcile(state_dir: str | Path, queue, tokenizer_identity: dict, log: Any) -> Reconciled:
    """Find the checkpoint to resume from and make the database agree with it (see the module's
    docstring). Raises CheckpointError, one line with the way out, when it cannot decide safely."""
    state_dir = Path(state_dir)
    directory = checkpoint_directory(state_dir)
    records = queue.checkpoints(limit=ROWS_EXAMINED)  # newest first
    if not records:  # nothing to agree with: a file's weights may be adopted, never its cursor
        adopted = _adopt(directory, tokenizer_identity, log)
        return Reconciled(adopted, "fresh" if adopted is None else "adopted")
    latest, end = records[0], queue.stream_end()
    quarantined: list[Path] = []
    missing: list[_Candidate] = []
    failures: list[str] = []  # why each newer one was passed over, for the one-line error
    chosen, checkpoint = None, None
    for candidate in _candidates(state_dir, records):
        path, record = candidate.path, candidate.record
        if not path.exists():
            missing.append(candidate)
            failures.append(f"{path.name}: missing")
            continue
        try:
            loaded = load_checkpoint(path)
        except CheckpointIncompatible as exc:
            raise CheckpointError(path, f"{exc.reason}; upgrade crystalline to resume from it, or {RESET_HINT}") from None
        except CheckpointError as exc:
            log.error("checkpoint_corrupt", path=str(path), step=candidate.step, error=exc.reason)
            failures.append(f"{path.name}: {exc.reason}")
            _move(state_dir, path, "corrupt", log, quarantined)
            continue
        reason = _unusable(loaded, record, tokenizer_identity, queue, end)
        if reason is None:
            chosen, checkpoint = candidate, loaded
            break
        if record is not None:  # only the tokenizer makes a named checkpoint unusable
            raise CheckpointError(path, f"trained with another tokenizer than the state directory's: restore "
                                  f"{state_dir / 'tokenizer.json'} as it was, or {RESET_HINT}")
        log.warning("checkpoint_unusable", path=str(path), step=candidate.step, reason=reason)
        failures.append(f"{path.name}: {reason}")
        _move(state_dir, path, reason, log, quarantined)
    if missing:
        log.warning("checkpoint_missing", count=len(missing), newest=str(missing[0].path), steps=[c.step for c in missing[:10]])
    if chosen is None:
        named = "; ".join(failures[:3])
        raise CheckpointError(directory, f"no checkpoint the database names can be loaded ({named}): restore "
                              f"{directory} from a backup, or {RESET_HINT}")
    if chosen.record is not None and chosen.record.id == latest.id:
        return Reconciled(checkpoint, "resumed", quarantined)
    if chosen.record is not None:
        dropped = [r.step for r in records if r.id > chosen.record.id]
        queue.rewind_to(chosen.record.id)
        log.warning("checkpoint_rewound", step=chosen.record.step, path=str(chosen.path), skipped=dropped)
        return Reconciled(checkpoint, "rewound", quarantined, dropped)
    extra, before = checkpoint.extra, queue.cursor()
    dropped = [r.step for r in records if r.step >= checkpoint.step]
    queue.restore_checkpoint(step=checkpoint.step, path=stored_path(chosen.path),
                             stream_position=int(extra["stream_position"]),
                             tokens_trained=int(extra["tokens_trained"]))
    log.warning("checkpoint_recovered", step=checkpoint.step, path=str(chosen.path),
                stream_position=int(extra["stream_position"]), database_step=latest.step,
                database_stream_position=before.stream_position, dropped=dropped)
    return Reconciled(checkpoint, "recovered", quarantined, dropped)


def _move(state_dir: Path, path: Path, reason: str, log: Any, moved: list[Path]) -> None:
    if quarantine(state_dir, path, reason, log) is not None:
        moved.append(path)


def _unusable(checkpoint: Checkpoint, record, tokenizer_identity: dict, queue, end: int) -> str | None:
    """Why this loaded checkpoint cannot be resumed from, or None when it can."""
    extra = checkpoint.extra
    if extra.get("tokenizer") != tokenizer_identity:
        return "tokenizer"
    if record is not None:
        return None  # a row names it: the database vouches for its place in the stream
    if "stream_position" not in extra or "tokens_trained" not in extra:
        return "foreign"  # not written by the training loop
    position = int(extra["stream_position"])
    if position > end:
        return "beyond_stream"  # it trained on text this database does not hold
    digest = extra.get("stream_digest")
    current = None if digest is None else stream_digest(queue, position)
    if digest is not None and current is not None and digest != current:
        return "other_stream"  # the store holds other text at its position
    return None


def _adopt(directory: Path, tokenizer_identity: dict, log: Any) -> Checkpoint | None:
    """With no checkpoint in the database, the newest valid checkpoint file of the state
    directory (an earlier version's `train`, or a database moved aside): its weights are the
    starting point, and every stored text is still to be trained on. Nothing is deleted."""
    for path in reversed(list_checkpoints(directory)):
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as exc:
            log.warning("checkpoint_ignored", path=str(path), reason=exc.reason)
            continue
        if checkpoint.extra.get("tokenizer") != tokenizer_identity:
            log.warning("checkpoint_ignored", path=str(path), reason="trained with another tokenizer")
            continue
        checkpoint.extra = {}
        log.info("checkpoint_adopted", path=str(path), step=checkpoint.step)
        return checkpoint
    return None


# ---------------------------------------------------------------------------------------------
# retention, repair and reset


def prune(state_dir: str | Path, queue, keep: int, latest: Path, command: str, max_bytes: int = 0,
          log: Any = None) -> list[Path]:
    """Retention, after each committed checkpoint; returns the deleted paths.

    1. The files of committed checkpoints older than the newest `keep`, when `command` wrote them
       (their rows stay, as history).
    2. With `max_bytes` (the checkpoints_max_mb cap; 0: none), while STATE_DIR/checkpoints holds
       more than that: the files of committed checkpoints of any command, the lowest step first.
    Never `latest`, never the checkpoint the database names newest, never best.safetensors, never a
    file no row names (these count toward the cap; a cap they alone exceed is `disk_cap_unmet`,
    a warning). One `disk_trimmed` (files, bytes, steps) when anything was deleted."""
    deleted: list[tuple[Path, int]] = []
    protected = {Path(latest).name, BEST_CHECKPOINT}
    records = queue.checkpoints(limit=keep + 50)
    if records:
        protected.add(resolve(state_dir, records[0].path).name)
    for record in records[keep:]:
        path = resolve(state_dir, record.path)
        if path.name in protected or not path.exists():
            continue
        try:
            if read_extra(path).get("command") == command:
                _delete(path, deleted)
        except (CheckpointError, OSError):
            continue
    if max_bytes > 0:
        trimmed = _trim_checkpoints(state_dir, queue, max_bytes, protected, deleted)
    else:
        used = folder_usage(checkpoint_directory(state_dir)).bytes if deleted else 0
        trimmed = Trimmed(len(deleted), sum(size for _, size in deleted), used, 0)
    if log is not None:
        steps = sorted(int(m.group(1)) for p, _ in deleted if (m := NAME_PATTERN.fullmatch(p.name)))
        log_trimmed(log, CHECKPOINT_DIR, trimmed, "checkpoints_max_mb",
                    "the newest checkpoint, best.safetensors and files no row names", steps=steps)
    return [path for path, _ in deleted]


def _delete(path: Path, deleted: list[tuple[Path, int]]) -> None:
    size = path.stat().st_size
    path.unlink(missing_ok=True)
    deleted.append((path, size))


def _trim_checkpoints(state_dir: str | Path, queue, max_bytes: int, protected: set[str],
                      deleted: list[tuple[Path, int]]) -> Trimmed:
    """Delete named, unprotected checkpoint files, the lowest step first, until the folder holds
    at most `max_bytes`; `deleted` already holds this sweep's earlier deletions."""
    used = folder_usage(checkpoint_directory(state_dir)).bytes
    if used > max_bytes:
        named = {resolve(state_dir, r.path).name for r in queue.checkpoints(limit=ROWS_NAMED)}
        for path in list_checkpoints(checkpoint_directory(state_dir)):  # lowest step first
            if used <= max_bytes:
                break
            if path.name in protected or path.name not in named:
                continue
            try:
                _delete(path, deleted)
            except OSError:
                continue
            used -= deleted[-1][1]
    return Trimmed(len(deleted), sum(size for _, size in deleted), used, max_bytes)


def remove_temporary_files(state_dir: str | Path) -> list[Path]:
    """Delete `.ckpt-*.tmp` leftovers of writes a crash or a full disk cut short (never a whole
    checkpoint: a temporary file was never renamed into place)."""
    removed = []
    for path in checkpoint_directory(state_dir).glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def check_best(state_dir: str | Path, log: Any) -> Path | None:
    """Quarantine best.safetensors when it does not load (the next evaluation writes a new one);
    returns where it went, or None when it loads or is absent."""
    path = checkpoint_directory(state_dir) / BEST_CHECKPOINT
    if not path.exists():
        return None
    try:
        load_checkpoint(path)
    except CheckpointIncompatible:
        return None
    except CheckpointError as exc:
        log.error("checkpoint_corrupt", path=str(path), step=None, error=exc.reason)
        return quarantine(state_dir, path, "corrupt", log)
    return None


def set_aside_model(state_dir: str | Path) -> tuple[Path | None, int, int]:
    """Move every checkpoint file (best.safetensors included) into a new folder
    STATE_DIR/quarantine/reset-<UTC time>/. Returns (the folder or None when there was nothing,
    files moved, bytes moved)."""
    directory = checkpoint_directory(state_dir)
    files = [p for p in directory.iterdir() if p.is_file()] if directory.is_dir() else []
    if not files:
        return None, 0, 0
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    folder = Path(state_dir) / QUARANTINE_DIR / f"reset-{stamp}"
    n = 0
    while folder.exists():
        n += 1
        folder = Path(state_dir) / QUARANTINE_DIR / f"reset-{stamp}.{n}"
    folder.mkdir(parents=True)
    size = 0
    for path in files:
        size += path.stat().st_size
        os.replace(path, folder / path.name)
    return folder, len(files), size
