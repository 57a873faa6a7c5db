"""Agreement between a state directory's checkpoint files and their rows: which checkpoint the
training loop resumes from, and the database made to agree with it (`reconcile_store`).
`CheckpointStore.reconcile` is its one caller, at every start of the training loop and by
`crystalline repair`; every path, row name and quarantine move goes through that store.

The loop resumes from the newest usable checkpoint: a file that loads, was trained with the state
directory's tokenizer, and, when no row names it, carries the loop's state with a stream position
inside the stored stream (and a digest of the tokens before that position that matches the
store's, when it records one: `stream_digest`, which the loop writes into each checkpoint). When
that is not the checkpoint the database names latest (a commit lost with a deleted
`corpus.db-wal`, a crash between the file and its commit, a database restored from an older
backup, newer files deleted or damaged), the database is made to agree with the file:
`rewind_to` its row, or `restore_checkpoint` from its metadata. Nothing that loads is deleted: a
file that does not load, and an intact one newer than the checkpoint resumed that cannot be used
(which a later save of the same step would overwrite), is moved into STATE_DIR/quarantine/
(`checkpoint_quarantined`). An intact checkpoint of a newer format, or a named one of another
tokenizer, stops the start with one line saying what to do, as does a database that names
checkpoints none of which loads. A database that names no checkpoint at all (a new one, or a
damaged one moved aside) takes no cursor from a file: the newest valid file's weights are adopted
as the starting point, and every stored text is trained on.

Not the files' names, writing, retention or what a command loads (crawler.training.checkpoints).
Relies on engine.checkpoint to load and verify a file, on the store's CorpusQueue for the rows,
the cursor and the stream's tokens, and on the CheckpointStore it is handed for names and moves.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import CheckpointError
from engine.checkpoint import Checkpoint, CheckpointIncompatible, load_checkpoint

DIGEST_TOKENS = 256  # the stream tokens before a checkpoint's position that its digest covers
ROWS_EXAMINED = 1000  # newest rows compared with the files at a start
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


def reconcile_store(store, tokenizer_identity: dict) -> Reconciled:
    """Find the checkpoint of `store` (a CheckpointStore with its queue) to resume from and make the
    database agree with it (see the module's docstring). Raises CheckpointError, one line with the
    way out, when it cannot decide safely."""
    queue, log = store.queue, store.log
    records = queue.checkpoints(limit=ROWS_EXAMINED)  # newest first
    if not records:  # nothing to agree with: a file's weights may be adopted, never its cursor
        adopted = _adopt(store, tokenizer_identity)
        return Reconciled(adopted, "fresh" if adopted is None else "adopted")
    latest, end = records[0], queue.stream_end()
    quarantined: list[Path] = []
    missing: list[_Candidate] = []
    failures: list[str] = []  # why each newer one was passed over, for the one-line error
    chosen, checkpoint = None, None
    for candidate in _candidates(store, records):
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
            _move(store, path, "corrupt", quarantined)
            continue
        reason = _unusable(loaded, record, tokenizer_identity, queue, end)
        if reason is None:
            chosen, checkpoint = candidate, loaded
            break
        if record is not None:  # only the tokenizer makes a named checkpoint unusable
            raise CheckpointError(path, f"trained with another tokenizer than the state directory's: restore "
                                  f"{store.state_dir / 'tokenizer.json'} as it was, or {RESET_HINT}")
        log.warning("checkpoint_unusable", path=str(path), step=candidate.step, reason=reason)
        failures.append(f"{path.name}: {reason}")
        _move(store, path, reason, quarantined)
    if missing:
        log.warning("checkpoint_missing", count=len(missing), newest=str(missing[0].path),
                    steps=[c.step for c in missing[:10]])
    if chosen is None:
        named = "; ".join(failures[:3])
        raise CheckpointError(store.directory, f"no checkpoint the database names can be loaded ({named}): "
                              f"restore {store.directory} from a backup, or {RESET_HINT}")
    if chosen.record is not None and chosen.record.id == latest.id:
        return Reconciled(checkpoint, "resumed", quarantined)
    if chosen.record is not None:
        dropped = [r.step for r in records if r.id > chosen.record.id]
        queue.rewind_to(chosen.record.id)
        log.warning("checkpoint_rewound", step=chosen.record.step, path=str(chosen.path), skipped=dropped)
        return Reconciled(checkpoint, "rewound", quarantined, dropped)
    extra, before = checkpoint.extra, queue.cursor()
    dropped = [r.step for r in records if r.step >= checkpoint.step]
    queue.restore_checkpoint(step=checkpoint.step, path=store.stored_path(chosen.path),
                             stream_position=int(extra["stream_position"]),
                             tokens_trained=int(extra["tokens_trained"]))
    log.warning("checkpoint_recovered", step=checkpoint.step, path=str(chosen.path),
                stream_position=int(extra["stream_position"]), database_step=latest.step,
                database_stream_position=before.stream_position, dropped=dropped)
    return Reconciled(checkpoint, "recovered", quarantined, dropped)


def _candidates(store, records: list) -> list[_Candidate]:
    """Every checkpoint file on disk and every file a row names, newest step first."""
    found: dict[str, _Candidate] = {}
    for record in reversed(records):  # oldest first, so the newest row naming a file wins
        path = store.resolve(record.path)
        found[path.name] = _Candidate(store.step_of(path, record.step), path, record)
    for path in store.rolling():
        if path.name not in found:
            found[path.name] = _Candidate(store.step_of(path, 0), path)
    return sorted(found.values(), key=lambda c: c.step, reverse=True)


def _adopt(store, tokenizer_identity: dict) -> Checkpoint | None:
    """With no checkpoint in the database, the newest valid checkpoint file of the state directory
    (an earlier version's `train`, or a database moved aside): its weights are the starting point,
    and every stored text is still to be trained on. Nothing is deleted."""
    for path in reversed(store.rolling()):
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as exc:
            store.log.warning("checkpoint_ignored", path=str(path), reason=exc.reason)
            continue
        if checkpoint.extra.get("tokenizer") != tokenizer_identity:
            store.log.warning("checkpoint_ignored", path=str(path), reason="trained with another tokenizer")
            continue
        checkpoint.extra = {}
        store.log.info("checkpoint_adopted", path=str(path), step=checkpoint.step)
        return checkpoint
    return None


def _move(store, path: Path, reason: str, moved: list[Path]) -> None:
    if store.quarantine(path, reason) is not None:
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
