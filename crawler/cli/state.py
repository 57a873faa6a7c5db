"""`crystalline repair` and `crystalline reset --keep-corpus`: the ways out of a damaged state.

`repair` makes the database and the checkpoint files agree exactly as every start of the training
loop does (crawler/training/checkpoints.py: resume from the newest usable checkpoint, rebuild the cursor
from its metadata, move what does not load into STATE_DIR/quarantine/), also sets aside a
best.safetensors that does not load and removes the temporary files of cut-short writes, and
says what it did. `reset --keep-corpus` drops the model and its training state (the checkpoint
files are moved into STATE_DIR/quarantine/reset-<time>/, the checkpoint rows and the evaluation
history are deleted, the cursor goes back to the start) and keeps the stored text, which the next
start trains on from the beginning. Neither deletes a checkpoint file.

Both hold the state directory's lock, so neither runs beside a daemon or `train`.

`backup DEST` is the one that runs beside them: a consistent copy of a state directory whose
store is SQLite, daemon running or not. The database through SQLite's online backup API (one
snapshot, even while the daemon writes), then the checkpoint files that snapshot names (files
are never rewritten in place, so a copy is whole), best.safetensors, tokenizer.json and
crystalline.toml; into DEST.partial, renamed to DEST when complete. Should the daemon prune the
newest file the snapshot names before it is copied, the whole copy is taken again. DEST restores
by being used as a state directory (checkpoint rows name files relative to it). A PostgreSQL
store is copied with pg_dump (docs/STORAGE.md). Wired into the parser by crawler/cli/main.py; every
expected failure is one line there.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
from pathlib import Path
from typing import Any

from engine.checkpoint import fsync_path

from .. import ConfigError
from ..logging import get_logger
from ..state.disk import QUARANTINE_DIR
from ..training.checkpoints import CheckpointStore
from .opener import add_state_flags, command_config


def add_commands(commands: Any) -> None:
    """Register `repair` and `reset` on the CLI's subparsers."""
    repair = commands.add_parser("repair", help="make the database and the checkpoint files agree again")
    add_state_flags(repair)
    repair.set_defaults(handler=command_repair)

    reset = commands.add_parser("reset", help="drop the model and its training state (with --keep-corpus)")
    reset.add_argument("--keep-corpus", action="store_true",
                       help="keep the stored text; the checkpoints are moved into STATE_DIR/quarantine/")
    add_state_flags(reset)
    reset.set_defaults(handler=command_reset)

    backup = commands.add_parser("backup", help="copy the state directory consistently, even while a daemon runs")
    backup.add_argument("dest", metavar="DEST", help="a new folder; it becomes a state directory to run on")
    add_state_flags(backup)
    backup.set_defaults(handler=command_backup)


def _open_state(args: argparse.Namespace):
    """The state directory opened as the daemon opens it (crawler/service/opening.py): its lock,
    so never beside a daemon or `train`, then the store; the caller closes it."""
    from ..service.opening import OpenedState

    opened = OpenedState(command_config(args))
    if not opened.config.state_dir.is_dir():
        raise ConfigError(f"{opened.config.state_dir}: no such state directory (pass --state-dir)")
    try:
        opened.lock()
        opened.open_store()
    except BaseException:
        opened.close()
        raise
    return contextlib.closing(opened)


def command_repair(args: argparse.Namespace) -> int:
    """Reconcile, then print what was done, one line each."""
    from ..ingest.tokenizer import load_state_tokenizer

    log = get_logger("repair")
    with _open_state(args) as opened:
        state = opened.config.state_dir
        tokenizer = load_state_tokenizer(state)
        store = CheckpointStore(state, opened.queue, log)
        removed = store.remove_temporary_files()
        result = store.reconcile(tokenizer.identity())
        best = store.check_best()
        cursor, end = opened.queue.cursor(), opened.queue.stream_end()
    lines = []
    checkpoint = result.checkpoint
    if result.action == "fresh":
        lines.append("no checkpoint yet: training starts from the beginning of the stored text")
    elif result.action == "adopted":
        lines.append(f"no checkpoint in the database: training starts from the weights of {checkpoint.path} "
                     f"(step {checkpoint.step}) on all stored text")
    else:
        did = {"resumed": "agrees with", "rewound": "was rewound to", "recovered": "was rebuilt from"}[result.action]
        lines.append(f"the database {did} {checkpoint.path} (step {checkpoint.step}): training resumes at stream "
                     f"position {cursor.stream_position:,} of {end:,} tokens")
    if result.dropped_rows:
        lines.append(f"checkpoint rows dropped (their files are gone or were never committed): steps "
                     f"{', '.join(map(str, result.dropped_rows))}")
    moved = result.quarantined + ([best] if best is not None else [])
    if moved:
        lines.append(f"moved into {Path(state) / QUARANTINE_DIR}: {', '.join(p.name for p in moved)}")
    if removed:
        lines.append(f"removed {len(removed)} temporary file(s) of cut-short checkpoint writes")
    print("\n".join(f"repair: {line}" for line in lines))
    return 0


def command_reset(args: argparse.Namespace) -> int:
    """Move the checkpoints aside, then forget the training in the database; the corpus stays."""
    if not args.keep_corpus:
        raise ConfigError("reset needs --keep-corpus: it drops the model and its training state and keeps the "
                          "stored text (to drop the corpus as well, remove the state directory)")
    with _open_state(args) as opened:
        state = opened.config.state_dir
        # files first: were the database reset first and the move to fail, the next start would
        # adopt the old weights instead of starting afresh
        folder, files, size = CheckpointStore(state, opened.queue, get_logger("reset")).set_aside()
        rows = opened.queue.reset_training()
        stats = opened.queue.stats()
    get_logger("reset").info("training_reset", state_dir=str(state), moved_to=None if folder is None else str(folder),
                             files=files, bytes=size, checkpoint_rows=rows, tokens=stats.tokens_total)
    kept = sum(stats.documents.get(s, 0) for s in ("queued", "trained"))
    where = f"{files} checkpoint file(s), {size / 1e6:.1f} MB, moved to {folder} (delete it to free the space)" \
        if folder is not None else "no checkpoint files"
    print(f"reset: the model and its training state are dropped ({where}); the corpus keeps {kept:,} documents, "
          f"{stats.tokens_total:,} tokens, which the next start trains on from the beginning")
    return 0


# ---------------------------------------------------------------------------------------------
# backup

BACKUP_ATTEMPTS = 3  # snapshots taken before giving up on a daemon that prunes faster than we copy
STATE_FILES = ("tokenizer.json", "crystalline.toml")  # copied when present


def command_backup(args: argparse.Namespace) -> int:
    """Copy the state directory into DEST (see the module docstring); one summary line."""
    import os

    from sqlalchemy.engine import make_url

    config = command_config(args)
    state, dest = config.state_dir, Path(args.dest)
    url = make_url(config.database_url)
    if url.get_backend_name() != "sqlite":
        raise ConfigError("backup copies a SQLite store; for PostgreSQL run pg_dump on the database and copy "
                          f"{CheckpointStore(state).directory} (docs/STORAGE.md)")
    database = Path(url.database)
    if not database.is_file():
        raise ConfigError(f"{database}: no database to back up (pass --state-dir)")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ConfigError(f"{dest} already exists and is not an empty folder: name a new one")
    partial = dest.with_name(dest.name + ".partial")
    if partial.exists():
        raise ConfigError(f"{partial} is left from an interrupted backup: remove it, then run backup again")
    for _ in range(BACKUP_ATTEMPTS):
        shutil.rmtree(partial, ignore_errors=True)
        copied = _copy_state(state, database, partial)
        if copied is not None:
            break
    else:
        shutil.rmtree(partial, ignore_errors=True)
        raise ConfigError(f"the daemon pruned the newest checkpoint before it could be copied, {BACKUP_ATTEMPTS} "
                          "times: run backup again")
    files, size, step, documents = copied
    if dest.exists():
        dest.rmdir()  # the empty folder named
    os.replace(partial, dest)
    fsync_path(dest.parent)
    get_logger("backup").info("state_backed_up", state_dir=str(state), dest=str(dest), files=files, bytes=size,
                              checkpoint_step=step, documents=documents)
    newest = f"the model at step {step}" if step is not None else "no checkpoint yet"
    print(f"backup: {dest}: the database ({documents:,} documents), {newest}, {files} file(s), {size / 1e6:.1f} MB; "
          f"run on it with --state-dir {dest}")
    return 0


def _copy_state(state: Path, database: Path, out: Path):
    """One attempt: (files, bytes, newest step, documents), or None when the newest checkpoint
    the snapshot names was pruned before it was copied."""
    import sqlite3

    out.mkdir(parents=True)
    snapshot = out / database.name
    source = sqlite3.connect(database, timeout=30)
    try:
        target = sqlite3.connect(snapshot)
        try:
            source.backup(target)  # one consistent snapshot, while the daemon goes on writing
            rows = target.execute("SELECT step, path FROM checkpoints ORDER BY id DESC").fetchall()
            documents = target.execute("SELECT count(*) FROM documents WHERE status IN ('queued', 'trained')").fetchone()[0]
        finally:
            target.close()
    finally:
        source.close()
    log = get_logger("backup")
    checkpoints = CheckpointStore(state, log=log).copy_into(CheckpointStore(out, log=log), [p for _, p in rows])
    if checkpoints is None:
        return None  # the newest: pruned behind the snapshot's back; take another snapshot
    copies = [snapshot, *checkpoints]
    for name in STATE_FILES:
        try:
            copies.append(Path(shutil.copy2(state / name, out / name)))
        except FileNotFoundError:
            continue
        fsync_path(copies[-1])
    fsync_path(snapshot)
    fsync_path(out)
    return len(copies), sum(p.stat().st_size for p in copies), rows[0][0] if rows else None, documents
