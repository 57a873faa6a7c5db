"""The crawler's one checkpoint store: `CheckpointStore`, the files in STATE_DIR/checkpoints and
their rows in the corpus store, kept in agreement. The training loop, `generate`, `eval`,
`export`, `tokenizer train`, `repair`, `reset` and `backup` ask it; none of them builds a
checkpoint path or parses a file name itself.

Files. Rolling checkpoints are named by the engine (`engine.checkpoint.checkpoint_name`, read back
with `checkpoint_step`), the best model so far is best.safetensors beside them, outside the rolling
set. `commit` writes a rolling file durably and then its row with the cursor (a file whose row
could not be committed is removed: the two go together); `write_best` replaces best.safetensors.

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

Retention (`prune`, after each committed checkpoint): the files of committed checkpoints older
than the newest `keep`, written by the same command, then, under a `checkpoints_max_mb` cap, the
lowest steps of any command until the folder fits; never the newest committed one, never
best.safetensors, never a file the database does not name. Files and rows go together: the rows
of the files deleted, and of files already gone, are dropped after the files (a row naming no file
can neither be resumed from nor vouch for a file); never the newest row, on which the cursor
stands. A crash between the two leaves rows naming missing files, which the next prune drops.

Loading for a command (`load_model`): best.safetensors, or with `latest` (or when there is no
loadable best) the newest rolling file that loads; a command that serves a model reads files
only, so it runs beside a daemon without opening the database.

Counts. A checkpoint's `tokens_trained` (extra, row and cursor) is new stream tokens trained on,
replay and further passes not counted; `tokens_seen` (extra, and the engine's train_state) is
every token through the model. docs/EVENTS.md uses the two names the same way.

Knows nothing of training or threads; relies on engine.checkpoint for the file format and the
file names, and on the store's CorpusQueue for the rows.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import CheckpointError
from engine.checkpoint import (
    TEMP_PREFIX,
    TEMP_SUFFIX,
    Checkpoint,
    CheckpointIncompatible,
    checkpoint_step,
    fsync_path,
    list_checkpoints,
    load_checkpoint,
    read_extra,
    save_checkpoint,
)

from ..logging import get_logger
from ..state.disk import CHECKPOINT_DIR, QUARANTINE_DIR, Trimmed, folder_usage, log_trimmed

BEST_CHECKPOINT = "best.safetensors"
DIGEST_TOKENS = 256  # the stream tokens before a checkpoint's position that its digest covers
ROWS_EXAMINED = 1000  # newest rows compared with the files at a start
ROWS_RETAINED = 50  # rows beyond `keep` that each prune examines (a row of a gone file is dropped)
ROWS_NAMED = 100_000  # rows read to tell a named file (the cap may delete) from an unknown one
RESET_HINT = "`crystalline reset --keep-corpus` trains a new model on the stored text"


def stream_digest(queue, position: int) -> str | None:
    """sha256 of the DIGEST_TOKENS stream tokens before `position` (int32, little-endian): a
    checkpoint records it, so a file can be matched with the stream it was trained on. None when
    some of those tokens were forgotten (`crystalline forget`): nothing to match them with."""
    tokens = queue.read_tokens(max(0, position - DIGEST_TOKENS), position, missing=-1)
    if (tokens < 0).any():
        return None
    return hashlib.sha256(np.ascontiguousarray(tokens, "<i4").tobytes()).hexdigest()


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


class CheckpointStore:
    """The checkpoints of one state directory. `queue` (a CorpusQueue) is needed by what reads or
    writes rows (commit, prune, reconcile); None for a command that reads files only. `log` gets
    every event the store logs. Not thread-safe: one training loop or one command at a time."""

    def __init__(self, state_dir: str | Path, queue=None, log: Any = None):
        self.state_dir = Path(state_dir)
        self.directory = self.state_dir / CHECKPOINT_DIR
        self.best_path = self.directory / BEST_CHECKPOINT
        self.queue = queue
        self.log = log if log is not None else get_logger("trainer")

    # --- names ---------------------------------------------------------------------------------

    def stored_path(self, path: str | Path) -> str:
        """How a row names a checkpoint file: relative to the state directory."""
        return f"{CHECKPOINT_DIR}/{Path(path).name}"

    def resolve(self, stored: str) -> Path:
        """The file a row names, whatever form the row has: its name inside STATE_DIR/checkpoints."""
        return self.directory / Path(stored).name

    def rolling(self) -> list[Path]:
        """The rolling checkpoint files, lowest step first (best.safetensors is not one)."""
        return list_checkpoints(self.directory)

    def _step(self, path: Path, default: int) -> int:
        step = checkpoint_step(path)
        return default if step is None else step

    # --- writing -------------------------------------------------------------------------------

    def commit(self, trainer, *, extra: dict, stream_position: int, tokens_trained: int,
               loss: float | None) -> Path:
        """Write `trainer`'s checkpoint durably (engine: temporary file, fsync, rename), then commit
        its row with the cursor in one transaction (CorpusQueue.commit_checkpoint). When either
        raises, no file of this checkpoint is left and the exception propagates: a file and its
        row go together. Retention is `prune`'s, after this returns."""
        path = trainer.save_checkpoint(self.directory, extra=extra, keep_last=None)
        try:
            self.queue.commit_checkpoint(step=trainer.step_count, path=self.stored_path(path),
                                         stream_position=stream_position, tokens_trained=tokens_trained, loss=loss)
        except Exception:
            path.unlink(missing_ok=True)
            raise
        return path

    def write_best(self, *, step: int, model_config, params: np.ndarray, m: np.ndarray, v: np.ndarray,
                   train_state: dict, extra: dict) -> Path:
        """Replace best.safetensors atomically with these weights; CheckpointError when it cannot be
        written (the previous best stays)."""
        return save_checkpoint(self.directory, step=step, model_config=model_config, params=params, m=m, v=v,
                               train_state=train_state, extra=extra, name=BEST_CHECKPOINT)

    def load_best(self) -> Checkpoint | None:
        """best.safetensors, loaded and verified; None when there is none. CheckpointError when it
        does not load."""
        if not self.best_path.exists():
            return None
        return load_checkpoint(self.best_path)

    # --- retention -----------------------------------------------------------------------------

    def prune(self, keep: int, latest: Path, command: str, max_bytes: int = 0) -> list[Path]:
        """Retention, after each committed checkpoint; returns the deleted paths.

        1. The files of committed checkpoints older than the newest `keep`, when `command` wrote them
           (read from the file's header).
        2. With `max_bytes` (the checkpoints_max_mb cap; 0: none), while STATE_DIR/checkpoints holds
           more than that: the files of committed checkpoints of any command, the lowest step first.
        3. The rows of the files deleted, and of the examined rows' files already gone, but the
           newest row (CorpusQueue.drop_checkpoint_rows), after the files.
        Never `latest`, never the checkpoint the database names newest, never best.safetensors, never
        a file no row names (these count toward the cap; a cap they alone exceed is `disk_cap_unmet`,
        a warning). One `disk_trimmed` (files, bytes, steps) when anything was deleted."""
        deleted: list[tuple[Path, int]] = []
        protected = {Path(latest).name, BEST_CHECKPOINT}
        records = self.queue.checkpoints(limit=keep + ROWS_RETAINED)  # newest first
        if records:
            protected.add(self.resolve(records[0].path).name)
        for record in records[keep:]:
            path = self.resolve(record.path)
            if path.name in protected or not path.exists():
                continue
            try:
                if read_extra(path).get("command") == command:
                    _delete(path, deleted)
            except (CheckpointError, OSError):
                continue
        gone: set[int] = set()  # ids of rows whose files the cap deleted
        if max_bytes > 0:
            trimmed = self._trim(max_bytes, protected, deleted, gone)
        else:
            used = folder_usage(self.directory).bytes if deleted else 0
            trimmed = Trimmed(len(deleted), sum(size for _, size in deleted), used, 0)
        gone |= {r.id for r in records[1:] if not self.resolve(r.path).exists()}
        self.queue.drop_checkpoint_rows(sorted(gone))
        steps = sorted(s for p, _ in deleted if (s := checkpoint_step(p)) is not None)
        log_trimmed(self.log, CHECKPOINT_DIR, trimmed, "checkpoints_max_mb",
                    "the newest checkpoint, best.safetensors and files no row names", steps=steps)
        return [path for path, _ in deleted]

    def _trim(self, max_bytes: int, protected: set[str], deleted: list[tuple[Path, int]], gone: set[int]) -> Trimmed:
        """Delete named, unprotected checkpoint files, the lowest step first, until the folder holds
        at most `max_bytes`; `deleted` already holds this sweep's earlier deletions. The ids of the
        rows naming each file deleted go into `gone`."""
        used = folder_usage(self.directory).bytes
        if used > max_bytes:
            named: dict[str, list[int]] = {}
            for record in self.queue.checkpoints(limit=ROWS_NAMED):
                named.setdefault(self.resolve(record.path).name, []).append(record.id)
            for path in self.rolling():  # lowest step first
                if used <= max_bytes:
                    break
                if path.name in protected or path.name not in named:
                    continue
                try:
                    _delete(path, deleted)
                except OSError:
                    continue
                used -= deleted[-1][1]
                gone.update(named[path.name])
        return Trimmed(len(deleted), sum(size for _, size in deleted), used, max_bytes)

    # --- reconcile -----------------------------------------------------------------------------

    def reconcile(self, tokenizer_identity: dict) -> Reconciled:
        """Find the checkpoint to resume from and make the database agree with it (see the module's
        docstring). Raises CheckpointError, one line with the way out, when it cannot decide safely."""
        queue, log = self.queue, self.log
        records = queue.checkpoints(limit=ROWS_EXAMINED)  # newest first
        if not records:  # nothing to agree with: a file's weights may be adopted, never its cursor
            adopted = self._adopt(tokenizer_identity)
            return Reconciled(adopted, "fresh" if adopted is None else "adopted")
        latest, end = records[0], queue.stream_end()
        quarantined: list[Path] = []
        missing: list[_Candidate] = []
        failures: list[str] = []  # why each newer one was passed over, for the one-line error
        chosen, checkpoint = None, None
        for candidate in self._candidates(records):
            path, record = candidate.path, candidate.record
            if not path.exists():
                missing.append(candidate)
                failures.append(f"{path.name}: missing")
                continue
            try:
                loaded = load_checkpoint(path)
            except CheckpointIncompatible as exc:
                raise CheckpointError(path, f"{exc.reason}; upgrade crystalline to resume from it, or "
                                      f"{RESET_HINT}") from None
            except CheckpointError as exc:
                log.error("checkpoint_corrupt", path=str(path), step=candidate.step, error=exc.reason)
                failures.append(f"{path.name}: {exc.reason}")
                self._move(path, "corrupt", quarantined)
                continue
            reason = _unusable(loaded, record, tokenizer_identity, queue, end)
            if reason is None:
                chosen, checkpoint = candidate, loaded
                break
            if record is not None:  # only the tokenizer makes a named checkpoint unusable
                raise CheckpointError(path, f"trained with another tokenizer than the state directory's: restore "
                                      f"{self.state_dir / 'tokenizer.json'} as it was, or {RESET_HINT}")
            log.warning("checkpoint_unusable", path=str(path), step=candidate.step, reason=reason)
            failures.append(f"{path.name}: {reason}")
            self._move(path, reason, quarantined)
        if missing:
            log.warning("checkpoint_missing", count=len(missing), newest=str(missing[0].path),
                        steps=[c.step for c in missing[:10]])
        if chosen is None:
            named = "; ".join(failures[:3])
            raise CheckpointError(self.directory, f"no checkpoint the database names can be loaded ({named}): "
                                  f"restore {self.directory} from a backup, or {RESET_HINT}")
        if chosen.record is not None and chosen.record.id == latest.id:
            return Reconciled(checkpoint, "resumed", quarantined)
        if chosen.record is not None:
            dropped = [r.step for r in records if r.id > chosen.record.id]
            queue.rewind_to(chosen.record.id)
            log.warning("checkpoint_rewound", step=chosen.record.step, path=str(chosen.path), skipped=dropped)
            return Reconciled(checkpoint, "rewound", quarantined, dropped)
        extra, before = checkpoint.extra, queue.cursor()
        dropped = [r.step for r in records if r.step >= checkpoint.step]
        queue.restore_checkpoint(step=checkpoint.step, path=self.stored_path(chosen.path),
                                 stream_position=int(extra["stream_position"]),
                                 tokens_trained=int(extra["tokens_trained"]))
        log.warning("checkpoint_recovered", step=checkpoint.step, path=str(chosen.path),
                    stream_position=int(extra["stream_position"]), database_step=latest.step,
                    database_stream_position=before.stream_position, dropped=dropped)
        return Reconciled(checkpoint, "recovered", quarantined, dropped)

    def _candidates(self, records: list) -> list[_Candidate]:
        """Every checkpoint file on disk and every file a row names, newest step first."""
        found: dict[str, _Candidate] = {}
        for record in reversed(records):  # oldest first, so the newest row naming a file wins
            path = self.resolve(record.path)
            found[path.name] = _Candidate(self._step(path, record.step), path, record)
        for path in self.rolling():
            if path.name not in found:
                found[path.name] = _Candidate(self._step(path, 0), path)
        return sorted(found.values(), key=lambda c: c.step, reverse=True)

    def _adopt(self, tokenizer_identity: dict) -> Checkpoint | None:
        """With no checkpoint in the database, the newest valid checkpoint file of the state
        directory (an earlier version's `train`, or a database moved aside): its weights are the
        starting point, and every stored text is still to be trained on. Nothing is deleted."""
        for path in reversed(self.rolling()):
            try:
                checkpoint = load_checkpoint(path)
            except CheckpointError as exc:
                self.log.warning("checkpoint_ignored", path=str(path), reason=exc.reason)
                continue
            if checkpoint.extra.get("tokenizer") != tokenizer_identity:
                self.log.warning("checkpoint_ignored", path=str(path), reason="trained with another tokenizer")
                continue
            checkpoint.extra = {}
            self.log.info("checkpoint_adopted", path=str(path), step=checkpoint.step)
            return checkpoint
        return None

    def _move(self, path: Path, reason: str, moved: list[Path]) -> None:
        if self.quarantine(path, reason) is not None:
            moved.append(path)

    def quarantine(self, path: Path, reason: str) -> Path | None:
        """Move `path` into STATE_DIR/quarantine/ (a free name: `.1`, `.2` ... appended when taken);
        logs `checkpoint_quarantined`. Returns the new path, or None when it cannot be moved
        (logged, the file stays)."""
        folder = self.state_dir / QUARANTINE_DIR
        target = folder / path.name
        n = 0
        while target.exists():
            n += 1
            target = folder / f"{path.name}.{n}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        except OSError as exc:
            self.log.warning("checkpoint_quarantine_failed", path=str(path), reason=reason, error=str(exc))
            return None
        self.log.warning("checkpoint_quarantined", path=str(path), to=str(target), reason=reason)
        return target

    # --- repair, reset and backup ----------------------------------------------------------------

    def remove_temporary_files(self) -> list[Path]:
        """Delete `.ckpt-*.tmp` leftovers of writes a crash or a full disk cut short (never a whole
        checkpoint: a temporary file was never renamed into place)."""
        removed = []
        for path in self.directory.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
        return removed

    def check_best(self) -> Path | None:
        """Quarantine best.safetensors when it does not load (the next evaluation writes a new one);
        returns where it went, or None when it loads or is absent."""
        try:
            self.load_best()
        except CheckpointIncompatible:
            return None
        except CheckpointError as exc:
            self.log.error("checkpoint_corrupt", path=str(self.best_path), step=None, error=exc.reason)
            return self.quarantine(self.best_path, "corrupt")
        return None

    def set_aside(self) -> tuple[Path | None, int, int]:
        """Move every checkpoint file (best.safetensors included) into a new folder
        STATE_DIR/quarantine/reset-<UTC time>/. Returns (the folder or None when there was nothing,
        files moved, bytes moved). The rows are the caller's (CorpusQueue.reset_training), after."""
        files = [p for p in self.directory.iterdir() if p.is_file()] if self.directory.is_dir() else []
        if not files:
            return None, 0, 0
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        folder = self.state_dir / QUARANTINE_DIR / f"reset-{stamp}"
        n = 0
        while folder.exists():
            n += 1
            folder = self.state_dir / QUARANTINE_DIR / f"reset-{stamp}.{n}"
        folder.mkdir(parents=True)
        size = 0
        for path in files:
            size += path.stat().st_size
            os.replace(path, folder / path.name)
        return folder, len(files), size

    def copy_into(self, other: CheckpointStore, named: Sequence[str]) -> list[Path] | None:
        """Copy the files the rows `named` name (their paths, newest first) and best.safetensors
        into `other`'s folder (a backup's state directory), each and the folder fsynced. A named
        file that is gone is passed over (retention deleted it), but for the newest: then None,
        as that one was pruned behind the caller's snapshot and another is needed. Returns the
        copies."""
        other.directory.mkdir(parents=True, exist_ok=True)
        copies = []
        for index, stored in enumerate(named):
            path = self.resolve(stored)
            try:
                copies.append(Path(shutil.copy2(path, other.directory / path.name)))
            except FileNotFoundError:
                if index == 0:
                    return None
        try:
            copies.append(Path(shutil.copy2(self.best_path, other.best_path)))
        except FileNotFoundError:
            pass
        for path in copies:
            fsync_path(path)
        fsync_path(other.directory)
        return copies

    # --- what a command loads --------------------------------------------------------------------

    def load_model(self, latest: bool = False) -> Checkpoint | None:
        """The checkpoint `generate`, `eval` and `export` use: best.safetensors (the best by
        held-out bits per byte) unless `latest`, or when there is none that loads, the newest
        rolling file that loads. Each file passed over is logged (`checkpoint_skipped`); None when
        nothing loads. An intact rolling file of a newer format raises CheckpointIncompatible
        rather than being passed over for an older one."""
        if not latest:
            try:
                best = self.load_best()
            except CheckpointError as exc:  # a newer format's too: the rolling files may still serve
                self.log.warning("checkpoint_skipped", path=str(self.best_path), reason=exc.reason)
            else:
                if best is not None:
                    return best
        for path in reversed(self.rolling()):
            try:
                return load_checkpoint(path)
            except CheckpointIncompatible:
                raise
            except CheckpointError as exc:
                self.log.warning("checkpoint_skipped", path=str(path), reason=exc.reason)
        return None


def _delete(path: Path, deleted: list[tuple[Path, int]]) -> None:
    size = path.stat().st_size
    path.unlink(missing_ok=True)
    deleted.append((path, size))


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
