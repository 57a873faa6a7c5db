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

Agreement (`reconcile`, at every start of the training loop and by `crystalline repair`): the
store decides which checkpoint the loop resumes from and makes the database agree with it, by
crawler.training.reconcile's rules (the newest usable file; rows rewound or rebuilt from its
metadata; what cannot be used quarantined, never deleted).

Retention (`prune`, after each committed checkpoint): the files of committed checkpoints older
than the newest `keep`, written by the same command, then, under a `checkpoints_max_mb` cap, the
lowest steps of any command until the folder fits; never the newest committed one, never
best.safetensors, never a file the database does not name. Files and rows go together: the rows
of the files deleted, and of files already gone, are dropped after the files (a row naming no file
can neither be resumed from nor vouch for a file); never the newest row, on which the cursor
stands. A crash between the two leaves rows naming missing files, which the next prune drops.

A model's shape and growths, for `status` and `plot` (`model_summary`): read from a file's header.

Loading for a command (`load_model`): best.safetensors, or with `latest` (or when there is no
loadable best) the newest rolling file that loads; a command that serves a model reads files
only, so it runs beside a daemon without opening the database.

Counts. A checkpoint's `tokens_trained` (extra, row and cursor) is new stream tokens trained on,
replay and further passes not counted; `tokens_seen` (extra, and the engine's train_state) is
every token through the model. docs/EVENTS.md uses the two names the same way.

Knows nothing of training or threads; relies on engine.checkpoint for the file format and the
file names, on the store's CorpusQueue for the rows, and on crawler.training.reconcile for the
agreement rules (which asks this store for every name and move).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
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
    read_metadata,
    save_checkpoint,
)

from ..logging import get_logger
from ..state.disk import CHECKPOINT_DIR, QUARANTINE_DIR, Trimmed, folder_usage, log_trimmed
from .reconcile import RESET_HINT, Reconciled, reconcile_store, stream_digest

BEST_CHECKPOINT = "best.safetensors"
ROWS_RETAINED = 50  # rows beyond `keep` that each prune examines (a row of a gone file is dropped)
ROWS_NAMED = 100_000  # rows read to tell a named file (the cap may delete) from an unknown one

# RESET_HINT, Reconciled and stream_digest are crawler.training.reconcile's, named here for callers
__all__ = ["BEST_CHECKPOINT", "RESET_HINT", "CheckpointStore", "Reconciled", "stream_digest"]


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

    def step_of(self, path: Path, default: int) -> int:
        """The step in a rolling file's name, or `default` when the name carries none."""
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
        # two rows may name one file: a checkpoint written again at its step (`crystalline grow`
        # rewrites the one it grew); a file a kept row names is no older checkpoint's to delete
        kept = {self.resolve(r.path).name for r in records[:keep]}
        for record in records[keep:]:
            path = self.resolve(record.path)
            if path.name in protected or path.name in kept or not path.exists():
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
        """Find the checkpoint to resume from and make the database agree with it (the rules are
        crawler.training.reconcile's). Raises CheckpointError, one line with the way out, when it
        cannot decide safely."""
        return reconcile_store(self, tokenizer_identity)

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


    def model_summary(self, path: Path) -> dict:
        """The model a checkpoint file holds, from its header alone (it may be pruned or replaced
        while a command reads it beside a daemon): step, n_layer, d_model, n_head, parameters, and
        its growths so far (each {step, tokens_seen, from, to, parameters, reason}, oldest first;
        [] for a model never grown). CheckpointError when the header cannot be read."""
        from engine import ModelConfig, count_parameters

        try:
            config = ModelConfig.from_dict(read_metadata(path, "model_config"))
        except ValueError as exc:  # ConfigError is one
            raise CheckpointError(path, f"bad model_config: {exc}") from exc
        state = read_metadata(path, "train_state")
        growth = state.get("growth") if isinstance(state, dict) else None
        growths = [{"step": r.get("step"), "tokens_seen": r.get("tokens_seen"),
                    "from": (r.get("old") or {}).get("n_layer"), "to": (r.get("new") or {}).get("n_layer"),
                    "parameters": (r.get("new") or {}).get("parameters"), "reason": r.get("reason")}
                   for r in (growth if isinstance(growth, list) else []) if isinstance(r, dict)]
        return {"step": int(read_metadata(path, "step")), "n_layer": config.n_layer, "d_model": config.d_model,
                "n_head": config.n_head, "parameters": count_parameters(config), "growths": growths}


def _delete(path: Path, deleted: list[tuple[Path, int]]) -> None:
    size = path.stat().st_size
    path.unlink(missing_ok=True)
    deleted.append((path, size))

